"""The benchmark machinery (tforge.bench and benchmarks/bench_*_norm.py):
interleaving, medians and budgets on a fake clock, byte accounting, JSON
lines, and the LayerNorm / RMSNorm benchmarks end to end at a tiny size.
Speed is never asserted."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tforge.bench import harness, machine, report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_layer_norm as bln  # noqa: E402


class FakeClock:
    """A clock that only moves when a fake function says it took time."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def work(self, seconds):
        def fn():
            self.t += seconds
        return fn


# ---------------------------------------------------------------- harness

def test_quantile_and_stats():
    assert harness.quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert harness.quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert harness.quantile([5.0], 0.9) == 5.0
    with pytest.raises(ValueError):
        harness.quantile([], 0.5)
    s = harness.Stats("a", [1.0, 9.0, 2.0, 3.0, 100.0])
    assert s.median_ms == 3.0 and s.min_ms == 1.0 and s.n == 5
    peer = harness.Stats("b", [2.0, 18.0, 4.0, 6.0, 200.0])
    assert s.ratio_to(peer) == pytest.approx(2.0)
    assert s.paired_ratio_to(peer) == pytest.approx(2.0)


def test_interleaved_round_robin_on_fake_clock():
    clock = FakeClock()
    fns = {"a": clock.work(0.001), "b": clock.work(0.003), "c": clock.work(0.002)}
    calls = []
    stats = harness.bench_interleaved(fns, warmup=1, repeats=6, min_repeats=1, max_seconds=100.0,
                                      min_sample_ms=0.0, clock=clock, on_call=calls.append)
    assert len(calls) == 18
    rounds = [calls[i:i + 3] for i in range(0, 18, 3)]
    for r in rounds:  # each round times every candidate exactly once
        assert sorted(r) == ["a", "b", "c"]
    assert {r[0] for r in rounds} == {"a", "b", "c"}  # the starting position rotates
    assert stats["a"].n == stats["b"].n == stats["c"].n == 6
    assert stats["a"].median_ms == pytest.approx(1.0)
    assert stats["b"].median_ms == pytest.approx(3.0)
    assert stats["c"].median_ms == pytest.approx(2.0)
    assert stats["a"].ratio_to(stats["b"]) == pytest.approx(3.0)


def test_median_ignores_outliers():
    clock = FakeClock()
    durations = iter([0.010] * 3 + [0.010, 0.500, 0.010, 0.010, 0.900, 0.010, 0.010])

    def noisy():
        clock.t += next(durations)

    st = harness.bench_interleaved({"n": noisy}, warmup=1, repeats=8, min_repeats=8, max_seconds=100.0,
                                   min_sample_ms=0.0, clock=clock)["n"]
    assert st.n == 8
    assert st.median_ms == pytest.approx(10.0)
    assert st.min_ms == pytest.approx(10.0)


def test_short_calls_are_batched_into_samples():
    clock = FakeClock()
    calls = {"n": 0}
    work = clock.work(0.00025)

    def fn():
        calls["n"] += 1
        work()

    st = harness.bench_interleaved({"f": fn}, warmup=1, repeats=4, min_repeats=4, max_seconds=100.0,
                                   min_sample_ms=0.9, clock=clock)["f"]
    assert st.inner == 4
    assert st.median_ms == pytest.approx(0.25)
    assert calls["n"] == 1 + 1 + 4 * 4  # warm-up, calibration, 4 samples of 4 calls


def test_time_budget_caps_rounds_but_keeps_min_repeats():
    clock = FakeClock()
    st = harness.bench_interleaved({"slow": clock.work(1.0)}, warmup=1, repeats=100, min_repeats=2,
                                   max_seconds=3.0, min_sample_ms=0.0, clock=clock)["slow"]
    assert st.n == 2
    st = harness.bench_interleaved({"slow": clock.work(1.0)}, warmup=1, repeats=100, min_repeats=1,
                                   max_seconds=10.0, min_sample_ms=0.0, clock=clock)["slow"]
    assert 1 <= st.n <= 8


def test_flush_callable_runs_before_each_sample():
    clock = FakeClock()
    events = []
    harness.bench_interleaved({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, warmup=1,
                              repeats=3, min_repeats=3, max_seconds=100.0, min_sample_ms=5.0,
                              flush=lambda: events.append("flush"), clock=clock)
    timed = events[2:]  # after the warm-up round
    assert len(timed) == 2 * 4 * 2  # calibration + 3 rounds, 2 candidates, flush + call each (one call per sample)
    assert timed[0::2] == ["flush"] * 8


def test_bench_real_functions_and_do_bench():
    a = torch.randn(256, 256)
    stats = harness.bench_interleaved({"add": lambda: a + a, "mul": lambda: a * a}, warmup=1, repeats=5,
                                      min_repeats=2, max_seconds=1.0)
    for st in stats.values():
        assert st.n >= 2 and st.median_ms > 0
    ms = harness.do_bench(lambda: a + a, warmup=1, rep=5, device="cpu")
    assert isinstance(ms, float) and ms > 0
    q = harness.do_bench(lambda: a + a, warmup=1, rep=5, quantiles=[0.2, 0.5, 0.8], device="cpu")
    assert len(q) == 3 and q[0] <= q[1] <= q[2]
    with pytest.raises(ValueError):
        harness.do_bench(lambda: a + a, warmup=1, rep=2, return_mode="bogus", device="cpu")


def test_page_faults_are_counted_per_call(monkeypatch):
    # A fake fault counter that only "touch" moves: the accounting is checked
    # exactly, whatever the kernel reports (some sandboxes never count faults).
    counter = {"n": 0}
    monkeypatch.setattr(harness, "_minor_faults", lambda: counter["n"])

    def touch():
        counter["n"] += 10

    stats = harness.bench_interleaved({"touch": touch, "noop": lambda: None}, warmup=1, repeats=3,
                                      min_repeats=3, max_seconds=5.0, min_sample_ms=0.0)
    assert stats["touch"].faults == [10.0] * stats["touch"].n
    assert stats["noop"].faults == [0.0] * stats["noop"].n


def _touch_fresh_pages(size=16 * 2**20):
    import mmap
    buf = mmap.mmap(-1, size)  # anonymous mapping: every page is new
    for off in range(0, size, 4096):
        buf[off] = 1
    buf.close()


def _os_counts_minor_faults() -> bool:
    before = harness._minor_faults()
    _touch_fresh_pages()
    return before is not None and harness._minor_faults() > before


@pytest.mark.skipif(harness.resource is None or not _os_counts_minor_faults(),
                    reason="this kernel/sandbox does not report minor page faults")
def test_page_faults_of_fresh_memory_are_seen():
    stats = harness.bench_interleaved({"fresh": _touch_fresh_pages, "noop": lambda: None},
                                      warmup=1, repeats=3, min_repeats=3, max_seconds=5.0)
    assert stats["fresh"].faults_per_call > 0
    assert stats["noop"].faults_per_call < stats["fresh"].faults_per_call


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError):
        harness.bench_interleaved({})
    with pytest.raises(ValueError):
        harness.bench_interleaved({"a": lambda: None}, repeats=0)


# ---------------------------------------------------------------- machine

def test_machine_info_and_copy_ceiling():
    info = machine.machine_info("cpu")
    for key in ("cpu", "cores", "threads", "cpu_isa", "gpu"):
        assert key in info
    v = machine.versions()
    assert v["torch"] == torch.__version__ and v["tforge"]
    c = machine.copy_bandwidth("cpu", 4 * 2**20, max_seconds=0.2, repeats=3)
    assert c["copy_bytes"] == 2 * 4 * 2**20 and c["copy_gbps"] > 0
    assert machine.reference_ceiling("NVIDIA H200", "copy_gbps") == pytest.approx(4300.0)
    assert machine.reference_ceiling("NVIDIA A100-SXM4-80GB", "copy_gbps") is None
    assert machine._parse_size("32768K") == 32 * 2**20


# ---------------------------------------------------------------- bytes, records, tables

def test_norm_bytes_minimal_traffic():
    rows, hidden, e = 10, 8, 4
    act, par = rows * hidden * e, hidden * e
    # LayerNorm fwd: read x + weight + bias, write y.
    assert bln.norm_bytes("fwd", rows, hidden, e, fused=False, n_params=2) == 2 * act + 2 * par
    # bwd: read dy, x, weight; write dx, dweight, dbias.
    assert bln.norm_bytes("bwd", rows, hidden, e, fused=False, n_params=2) == 3 * act + 3 * par
    # fused add+LayerNorm fwd: read x, residual, params; write y, residual_out.
    assert bln.norm_bytes("fwd", rows, hidden, e, fused=True, n_params=2) == 4 * act + 2 * par
    # fused bwd: read dy, d residual_out, x, weight; write dx (once), dweight, dbias.
    assert bln.norm_bytes("bwd", rows, hidden, e, fused=True, n_params=2) == 4 * act + 3 * par
    # RMSNorm (weight only), bf16.
    assert bln.norm_bytes("fwd", rows, hidden, 2, fused=False, n_params=1) == 2 * rows * hidden * 2 + hidden * 2
    for fused in (False, True):
        total = bln.norm_bytes("fwdbwd", rows, hidden, e, fused=fused, n_params=2)
        assert total == sum(bln.norm_bytes(d, rows, hidden, e, fused=fused, n_params=2) for d in ("fwd", "bwd"))
    with pytest.raises(ValueError):
        bln.norm_bytes("sideways", rows, hidden, e, fused=False, n_params=1)
    assert report.gbps(2e9, 1000.0) == pytest.approx(2.0)


REQUIRED_FIELDS = ("timestamp", "machine", "versions", "op", "shape", "dtype", "direction", "backend", "median_ms",
                   "gbps", "ratio", "ratio_vs_compile")


def test_record_and_jsonl(tmp_path):
    rec = report.make_record(op="layer_norm", shape=(4, 8), dtype=torch.float32, direction="fwd", backend="cpu",
                             median_ms=2.0, machine={"cpu": "x", "cores": 2, "gpu": None}, versions={"torch": "t"},
                             nbytes=4_000_000, copy_gbps=4.0, ratio=1.5, ratio_vs_compile=None, extra_field=7)
    assert rec["gbps"] == pytest.approx(2.0) and rec["frac_copy"] == pytest.approx(0.5)
    assert rec["shape"] == [4, 8] and rec["dtype"] == "float32" and rec["extra_field"] == 7
    path = report.jsonl_path(tmp_path / "sub", "layer_norm")
    assert report.append_jsonl(path, [rec]) == 1
    assert report.append_jsonl(path, [rec]) == 1  # appends, never truncates
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    back = json.loads(lines[0])
    for key in REQUIRED_FIELDS:
        assert key in back
    assert back["ratio_vs_compile"] is None


def test_out_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    assert report.resolve_out_dir(None, tmp_path / "d") == tmp_path / "d"
    monkeypatch.setenv("OUT", str(tmp_path / "env"))
    assert report.resolve_out_dir(None, tmp_path / "d") == tmp_path / "env"
    assert report.resolve_out_dir(tmp_path / "cli", tmp_path / "d") == tmp_path / "cli"


def test_format_table_and_goals():
    rows = [{"op": "layer_norm", "shape": [4, 8], "dtype": "float32", "direction": "fwd", "backend": "cpu",
             "median_ms": 1.23456, "gbps": 10.0, "frac_copy": 0.5, "ratio": 1.2, "ratio_vs_compile": None},
            {"op": "layer_norm", "shape": [4, 8], "dtype": "float32", "direction": "bwd", "backend": "cpu",
             "median_ms": 2.0, "gbps": float("nan"), "frac_copy": None, "ratio": 1.0, "ratio_vs_compile": 0.9}]
    text = report.format_table(rows, separate_on=("direction",))
    lines = text.splitlines()
    assert "median ms" in lines[0] and "vs eager" in lines[0]
    assert "4x8" in lines[2] and "1.2346" in lines[2] and "50%" in lines[2] and "1.20x" in lines[2]
    assert lines[3] == ""  # the direction changed
    assert "0.90x" in lines[4] and " - " in lines[4] + " "
    goals = report.format_goals([{"what": "a", "met": True}, {"what": "b", "met": False, "detail": "d"},
                                 {"what": "c", "met": None}])
    assert "[MET]" in goals and "[NOT MET] b: d" in goals and "[n/a]" in goals


def test_goal_evaluation():
    def rec(op, ratio, shape=(4096, 768)):
        return {"op": op, "shape": list(shape), "dtype": "float32", "direction": "fwd", "device": "cpu",
                "backend": "cpu", "ratio": ratio}
    goals = bln.evaluate_goals([rec("layer_norm", 1.1), rec("layer_norm", 0.9, (8192, 1024)),
                                rec("add_layer_norm", 1.6)], bln.LAYER_NORM_OPS)
    by = {g["what"].split(" forward")[0]: g for g in goals}
    assert by["CPU fp32 layer_norm"]["met"] is False
    assert by["CPU fp32 add_layer_norm"]["met"] is True
    goals = bln.evaluate_goals([], bln.LAYER_NORM_OPS)
    assert all(g["met"] is None for g in goals)


# ---------------------------------------------------------------- end to end

def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_bench_layer_norm_quick_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OUT", raising=False)
    rc = bln.main(["--quick", "--no-compile", "--shapes", "64x96", "--repeats", "3", "--max-seconds", "0.5",
                   "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "vs eager" in out and "Goals:" in out
    for op in ("layer_norm", "add_layer_norm"):
        recs = _read_jsonl(tmp_path / f"{op}.jsonl")
        assert {r["direction"] for r in recs} == {"fwd", "bwd", "fwdbwd"}
        assert {"cpu", "eager"} <= {r["backend"] for r in recs}
        assert "compile" not in {r["backend"] for r in recs}
        for r in recs:
            for key in REQUIRED_FIELDS:
                assert key in r
            assert r["shape"] == [64, 96] and r["dtype"] == "float32" and r["median_ms"] > 0
            assert r["ratio_vs_compile"] is None
            assert r["faults_per_call"] is not None
            if r["backend"] == "cpu":
                assert r["check"] == "ok"
            if r["backend"] == "eager":
                assert r["ratio"] == pytest.approx(1.0)


def test_bench_writes_to_env_out(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    bln.main(["--quick", "--no-compile", "--ops", "layer_norm", "--shapes", "8x32", "--directions", "fwd",
              "--backends", "cpu,torch", "--repeats", "2", "--max-seconds", "0.2"])
    recs = _read_jsonl(tmp_path / "layer_norm.jsonl")
    assert {r["backend"] for r in recs} == {"cpu", "torch", "eager"}


def test_bench_rms_norm_script_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_rms_norm.py"), "--quick", "--no-compile",
                           "--shapes", "32x64", "--directions", "fwd,bwd", "--repeats", "2", "--max-seconds", "0.2",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "rms_norm" in proc.stdout
    for op in ("rms_norm", "add_rms_norm"):
        recs = _read_jsonl(tmp_path / f"{op}.jsonl")
        assert {r["direction"] for r in recs} == {"fwd", "bwd"}


def test_bench_rejects_unknown_op():
    with pytest.raises(SystemExit):
        bln.main(["--quick", "--no-compile", "--ops", "softmax", "--no-json"])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_malloc_reuse_removes_first_touch_faults(tmp_path):
    # In a subprocess: mallopt changes the allocator for the whole process.
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_layer_norm.py"), "--quick", "--no-compile",
                           "--malloc-reuse", "--ops", "layer_norm", "--shapes", "2048x4096", "--directions", "fwd",
                           "--repeats", "3", "--max-seconds", "0.5", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = _read_jsonl(tmp_path / "layer_norm.jsonl")
    pages = 2048 * 4096 * 4 // 4096  # one fresh 32 MiB output
    for r in recs:
        assert r["malloc_reuse"] is True
        assert r["faults_per_call"] < pages / 2


@pytest.mark.parametrize("script,op", [("bench_attention", "attention"), ("bench_int8_gemm", "int8_gemm")])
def test_attention_and_int8_benchmarks_quick(tmp_path, script, op, capsys):
    """The attention and int8 GEMM benchmarks run end to end at a tiny size and
    write JSON lines with their peers (SDPA / torch.matmul) in the same run."""
    mod = __import__(script)
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    lines = [json.loads(l) for l in (tmp_path / f"{op}.jsonl").read_text().splitlines()]
    names = {r["backend"] for r in lines}
    assert any(n.startswith("sdpa") for n in names) or "torch.matmul" in names
    assert all(r["median_ms"] > 0 and r["op"] == op for r in lines)
    assert "candidate" in capsys.readouterr().out

"""The `tforge` commands against damaged, doubled-up and wrong inputs (issue 10, items 7 to 13):
nothing silently wrong, nothing lost. Every failure is one line on stderr with exit code 2.
Tiny GPT runs on a corpus this file writes; the commands run in-process (cli.main)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tforge import cli

WORDS = "the king queen lord lady sword crown love death night day heart blood fair foul sweet".split()
TINY = ["--set", "data.vocab_size=60", "--set", "model.n_layer=1", "--set", "model.d_model=32",
        "--set", "model.n_head=2", "--set", "model.seq_len=32", "--set", "train.batch_size=4",
        "--set", "train.progress=false", "--set", "data.eval_batches=2", "--set", "sample.max_new_tokens=0",
        "--set", "train.save_every=2", "--set", "train.keep_last=3", "--set", "train.log_every=1"]


def run_cli(args, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    # the error is the last line and the only one of tforge's (a library's progress bar may precede it)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tforge ") and "Traceback" not in err, err
    assert sum(line.startswith("tforge ") for line in lines) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    rng = random.Random(0)
    (root / "corpus").mkdir()
    for i in range(3):
        (root / "corpus" / f"d{i}.txt").write_text(
            "\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(80)))
    return root


def pretrain(work: Path, out: Path, *extra) -> list[str]:
    return ["pretrain", "--data", work / "corpus", "--out", out, "--set", f"data.cache_dir={work / 'cache'}",
            *TINY, *extra]


@pytest.fixture(scope="module")
def base_run(work) -> Path:
    """A finished 6-step run: step-2/4/6 checkpoints, latest, model/, metrics.jsonl."""
    run = work / "base"
    assert cli.main([str(a) for a in pretrain(work, run, "--steps", 6)]) == 0
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    (dest / ".tforge.lock").unlink(missing_ok=True)
    return dest


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 7. compressed variants are saved and load

@pytest.fixture(scope="module")
def compressed(work, base_run) -> Path:
    out = work / "compressed"
    assert cli.main([str(a) for a in ["compress", "--run", base_run, "--int8", "--sparse24", "--out", out,
                                      "--calib-batches", 1, "--set", "eval.speed_repeats=1",
                                      "--set", "eval.speed_seconds=0.5", "--set", "eval.max_batches=2"]]) == 0
    return out


def test_compress_saves_int8_and_24_and_evaluate_predict_load_them(compressed, capsys):
    summary = json.loads((compressed / "summary.json").read_text())
    for name, folder in (("int8", "int8"), ("2:4", "sparse24")):
        assert summary["variants"][name]["saved"] == str(compressed / folder)
        assert (compressed / folder / "model" / "manifest.json").is_file()
        rc, _, err = run_cli(["evaluate", "--run", compressed / folder, "--max-batches", 2], capsys)
        assert rc == 0, err
        result = json.loads((compressed / folder / "evaluate-auto.json").read_text())
        assert result["loss"] == pytest.approx(summary["variants"][name]["loss"], rel=1e-5)
    rc, out, err = run_cli(["predict", "--run", compressed / "sparse24", "--prompt", "the king",
                            "--max-new-tokens", 4, "--temperature", 0], capsys)
    assert rc == 0 and "the king" in out, err


# ---------------------------------------------------------------- 9. --resume without a verifiable checkpoint

def test_resume_without_checkpoint_is_refused_and_overwrite_starts_over(work, base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path / "run")
    for p in [*run.glob("step-*"), run / "latest"]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    before = snapshot(run)
    rc, _, err = run_cli(["pretrain", "--out", run, "--resume", "--steps", 8], capsys)
    assert_error(rc, err, "holds no checkpoint", "--overwrite", "new --out")
    after = snapshot(run)
    after.pop(".tforge.lock")
    assert after == before  # model/, metrics.jsonl and config.toml untouched
    rc, _, err = run_cli([*pretrain(work, run, "--steps", 2), "--overwrite"], capsys)
    assert rc == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2 and steps == sorted(steps)  # one run, not two appended


def test_trainer_resume_true_refuses_a_run_without_checkpoint(base_run, tmp_path):
    """The library path: Trainer.fit(resume=True) used to log 'starting fresh' over the old run."""
    from tforge.models import GPT, GPTConfig
    from tforge.train import CheckpointError, TrainConfig, Trainer
    run = copy_run(base_run, tmp_path / "run")
    for p in [*run.glob("step-*"), run / "latest"]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    before = (run / "metrics.jsonl").read_bytes()
    model = GPT(GPTConfig(vocab_size=60, n_layer=1, n_head=2, d_model=32, max_seq_len=32))
    trainer = Trainer(model, [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}],
                      TrainConfig(max_steps=2, out_dir=str(run), progress=False))
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        trainer.fit(resume=True)
    assert (run / "metrics.jsonl").read_bytes() == before
    empty = tmp_path / "empty"  # an empty folder is a fresh start, as documented
    Trainer(model, [{"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": torch.zeros(1, 4, dtype=torch.long)}],
            TrainConfig(max_steps=1, out_dir=str(empty), progress=False, save_every=0)).fit(resume=True)
    assert (empty / "latest").is_file()


def test_deleted_manifest_on_newest_checkpoint_is_reported(base_run, tmp_path, capsys):
    from tforge.train import CheckpointError, find_checkpoint
    run = copy_run(base_run, tmp_path / "run")
    (run / "step-00000006" / "manifest.json").unlink()
    rc, _, err = run_cli(["pretrain", "--out", run, "--resume", "--steps", 8], capsys)
    assert_error(rc, err, "step-00000006", "manifest.json is missing", "step-00000004")
    rc, _, err = run_cli(["evaluate", "--run", run, "--checkpoint", "latest"], capsys)
    assert_error(rc, err, "step-00000006")
    (run / "latest").unlink()  # without the pointer the newest step-* folder still counts
    with pytest.raises(CheckpointError, match="step-00000006"):
        find_checkpoint(run)


def test_latest_pointer_leaving_the_run_folder_is_refused(base_run, tmp_path, capsys):
    copy_run(base_run, tmp_path / "other")
    run = copy_run(base_run, tmp_path / "run")
    (run / "latest").write_text("../other/step-00000006\n")
    rc, _, err = run_cli(["evaluate", "--run", run, "--checkpoint", "latest"], capsys)
    assert_error(rc, err, "refusing to follow")
    rc, _, err = run_cli(["pretrain", "--out", run, "--resume", "--steps", 8], capsys)
    assert_error(rc, err, "not a checkpoint folder inside")


# ---------------------------------------------------------------- 10. one run per folder

HOLDER = ("import sys, time\nfrom tforge.train.runfolder import lock_run_dir\n"
          "lock_run_dir(sys.argv[1], 'tforge pretrain')\nprint('locked', flush=True)\ntime.sleep(120)\n")


def test_second_run_on_a_locked_folder_is_refused_and_a_dead_holders_lock_taken_over(work, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run_cli([*pretrain(work, run, "--steps", 2)], capsys)
        assert_error(rc, err, f"pid {holder.pid} on host {socket.gethostname()}", "in use")
        assert [p.name for p in run.iterdir()] == [".tforge.lock"]  # nothing written beside it
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert json.loads((run / ".tforge.lock").read_text())["pid"] == holder.pid  # the dead holder's file stays
    rc, _, err = run_cli([*pretrain(work, run, "--steps", 2)], capsys)
    assert rc == 0, err
    assert json.loads((run / ".tforge.lock").read_text())["pid"] == os.getpid()


# ---------------------------------------------------------------- 11. checksums on exports

@pytest.mark.parametrize("which", ["model", "int8", "sparse24"])
def test_flipped_truncated_or_unlisted_export_is_refused(which, base_run, compressed, tmp_path, capsys):
    source = base_run if which == "model" else compressed / which
    weights = Path("model") / "model.safetensors"
    for damage, needle in (("flip", "sha256"), ("truncate", "truncated"), ("manifest", "manifest.json is missing")):
        run = copy_run(source, tmp_path / damage)
        path = run / weights
        data = bytearray(path.read_bytes())
        if damage == "flip":
            data[-5] ^= 0x01  # a low mantissa bit: the file still parses, only the checksum can tell
            path.write_bytes(bytes(data))
        elif damage == "truncate":
            path.write_bytes(bytes(data[: len(data) // 2]))
        else:
            (run / "model" / "manifest.json").unlink()
        rc, _, err = run_cli(["evaluate", "--run", run, "--checkpoint", "final" if which == "model" else "auto"],
                             capsys)
        assert_error(rc, err, needle)


# ---------------------------------------------------------------- 12. train.seed makes runs repeat

def test_same_seed_same_losses_other_seed_other_losses(work, tmp_path, capsys):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(1000 + len(runs))  # what ran before in the process must not matter
        rc, _, err = run_cli([*pretrain(work, tmp_path / name, "--steps", 3, "--set", f"train.seed={seed}")], capsys)
        assert rc == 0, err
        runs[name] = losses(tmp_path / name)
    assert len(runs["a"]) == 3 and runs["a"] == runs["b"]
    assert runs["c"] != runs["a"]


def test_finetune_same_seed_same_losses(work, tmp_path, capsys):
    """The classification head is new, randomly initialised weights: they must follow train.seed."""
    transformers = pytest.importorskip("transformers")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(str(bert / "vocab.txt")).save_pretrained(str(bert))
    transformers.BertModel(transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   max_position_embeddings=32)).save_pretrained(str(bert))
    rng = random.Random(2)
    rows = ["text,label"] + [f"{' '.join(rng.choice(WORDS) for _ in range(6))},{rng.choice('ab')}" for _ in range(48)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    runs = []
    for i in range(2):
        torch.manual_seed(2000 + i)
        rc, _, err = run_cli(["finetune", "--pretrained", bert, "--train", tmp_path / "train.csv", "--test", "",
                              "--mode", "head", "--steps", 3, "--out", tmp_path / f"ft{i}", "--set",
                              "data.val_fraction=0", "--set", "data.max_len=12", "--set", "data.batch_size=8",
                              "--set", "train.progress=false", "--set", "train.log_every=1"], capsys)
        assert rc == 0, err
        runs.append(losses(tmp_path / f"ft{i}"))
    assert len(runs[0]) == 3 and runs[0] == runs[1]


# ---------------------------------------------------------------- 13. one-line errors, not tracebacks

@pytest.mark.parametrize("device, needle", [("tpu", "is not a device"), ("cuda:7", "GPU"), ("cuda", "GPU")])
def test_unusable_device(device, needle, work, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has a GPU")
    rc, _, err = run_cli([*pretrain(work, tmp_path / "run", "--steps", 1), "--device", device], capsys)
    assert_error(rc, err, needle, "train.device")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("text", ["", " \n\t\n  \n"])
def test_empty_or_whitespace_corpus(text, work, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text(text)
    rc, _, err = run_cli(["pretrain", "--data", tmp_path / "empty.txt", "--out", tmp_path / "run",
                          "--set", f"data.cache_dir={tmp_path / 'cache'}", *TINY, "--steps", 1], capsys)
    assert_error(rc, err, "hold no text")


def test_jsonl_bad_line_is_counted_not_fatal(work, tmp_path, capsys):
    rng = random.Random(3)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(12))}) for _ in range(150)]
    lines.insert(70, '{"text": "cut off in the mid')
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    rc, _, err = run_cli(["pretrain", "--data", tmp_path / "c.jsonl", "--out", tmp_path / "run",
                          "--set", f"data.cache_dir={tmp_path / 'cache'}", *TINY, "--steps", 1], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["bad_rows"]["invalid_json"] == 1 and summary["data"]["documents"] == 150


def test_garbage_tokenizer_file(work, tmp_path, capsys):
    (tmp_path / "tok.model").write_bytes(b"\x08\x96\x01garbage" * 50)
    rc, _, err = run_cli([*pretrain(work, tmp_path / "run", "--steps", 1), "--tokenizer", tmp_path / "tok.model"],
                         capsys)
    assert_error(rc, err, "not a valid sentencepiece model")


def test_resume_with_changed_d_model_keeps_the_run(base_run, tmp_path, capsys):
    run = copy_run(base_run, tmp_path / "run")
    before = snapshot(run)
    rc, _, err = run_cli(["pretrain", "--out", run, "--resume", "--steps", 8, "--set", "model.d_model=64"], capsys)
    assert_error(rc, err, "d_model 32 -> 64")
    after = snapshot(run)
    after.pop(".tforge.lock")
    assert after == before  # config.toml and model_spec.json still describe the checkpoints


def test_resume_library_level_size_mismatch_is_one_line(base_run, tmp_path):
    from tforge.models import GPT, GPTConfig
    from tforge.train import CheckpointError, TrainConfig, Trainer
    run = copy_run(base_run, tmp_path / "run")
    model = GPT(GPTConfig(vocab_size=60, n_layer=1, n_head=2, d_model=64, max_seq_len=32))
    trainer = Trainer(model, [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}],
                      TrainConfig(max_steps=8, out_dir=str(run), progress=False))
    with pytest.raises(CheckpointError, match="do not fit the model") as info:
        trainer.fit(resume=True)
    assert "\n" not in str(info.value)


def test_token_cache_with_out_of_range_ids_is_rebuilt(work, base_run, tmp_path, capsys):
    import numpy as np
    from tforge.data import load_tokenizer
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)
    fingerprint = load_tokenizer(base_run / "tokenizer").fingerprint
    entry = next(p for p in (cache / "tokens").glob("tokens-*")
                 if json.loads((p / "meta.json").read_text())["tokenizer_fingerprint"] == fingerprint)
    dtype = json.loads((entry / "meta.json").read_text())["dtype"]
    tokens = np.memmap(entry / "tokens.bin", dtype=dtype, mode="r+")
    tokens[5] = np.iinfo(tokens.dtype).max  # far past the vocabulary
    tokens.flush()
    del tokens
    rc, out, err = run_cli(["pretrain", "--data", work / "corpus", "--out", tmp_path / "run", "--set",
                            f"data.cache_dir={cache}", "--tokenizer", base_run / "tokenizer" / "tokenizer.model",
                            *TINY, "--steps", 1], capsys)
    assert rc == 0, err
    assert "rebuilding damaged cache entry" in out
    assert int(np.memmap(entry / "tokens.bin", dtype=dtype, mode="r").max()) < 60

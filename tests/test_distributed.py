"""Multi-process training on the CPU (gloo) under torchrun: 2 processes x
batch 2 must give the same losses as 1 process x batch 4 on the same data
from the same initial weights, with DDP (gradient accumulation exercises
no_sync) and with FSDP2 (fully_shard); only rank 0 writes files, and a
checkpoint written by 2 processes resumes on 2 processes (DDP: exactly)."""
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tforge.train import distributed as tdist

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")

# Shared by the workers and the single-process reference: a small MLP regression,
# 4 samples per micro-batch; rank r of w takes rows [r*4/w, (r+1)*4/w) of each.
COMMON = textwrap.dedent('''
    import json, os, sys
    import torch
    from torch import nn
    from tforge.train import Trainer, TrainConfig

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(7, 16), nn.Linear(16, 16), nn.Linear(16, 3)])

        def forward(self, x, y):
            h = x
            for i, layer in enumerate(self.layers):
                h = layer(h)
                if i < len(self.layers) - 1:
                    h = torch.tanh(h)
            return {"loss": nn.functional.mse_loss(h, y)}

    class Shard:
        """Micro-batches of 4 rows; this rank's slice of each. state_dict for resume."""
        def __init__(self, rank, world, n=8):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(n * 4, 7, generator=g), torch.randn(n * 4, 3, generator=g)
            self.rank, self.world, self.n, self.pos = rank, world, n, 0
        def state_dict(self):
            return {"pos": self.pos}
        def load_state_dict(self, s):
            self.pos = s["pos"]
        def set_epoch(self, e):
            self.pos = 0
        def __iter__(self):
            per = 4 // self.world
            while self.pos < self.n:
                i = self.pos * 4 + self.rank * per
                self.pos += 1
                yield {"x": self.x[i:i + per], "y": self.y[i:i + per]}

    def run(out_dir, rank, world, strategy="ddp", until=None, resume=False, max_steps=6):
        torch.manual_seed(0)
        model = MLP()
        cfg = TrainConfig(lr=1e-2, warmup_steps=2, max_steps=max_steps, grad_accum=2, clip_grad=1.0, log_every=1,
                          progress=False, tensorboard=False, out_dir=out_dir, strategy=strategy, save_every=3)
        trainer = Trainer(model, Shard(rank, world), cfg)
        history = trainer.fit(resume=resume, until_step=until)
        return [h["loss"] for h in history], trainer
''')

WORKER = COMMON + textwrap.dedent('''
    if __name__ == "__main__":
        import faulthandler
        faulthandler.enable()  # a rank that aborts prints every thread's Python stack on stderr
        out_dir, strategy, result = sys.argv[1], sys.argv[2], sys.argv[3]
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        until = int(sys.argv[4]) if len(sys.argv) > 4 else None
        resume = sys.argv[5] if len(sys.argv) > 5 else False
        if resume == "split":  # 3 steps, then a fresh model/optimizer/trainer resumes in the same processes
            run(out_dir, rank, world, strategy, until=3)
            resume = True
        losses, trainer = run(out_dir, rank, world, strategy, until=until, resume=resume)
        assert trainer.world_size == world and torch.distributed.is_initialized()
        with open(f"{result}.rank{rank}.json", "w") as f:
            json.dump({"losses": losses, "wrapped": type(trainer.wrapped).__name__,
                       "resumed_from": str(trainer.resumed_from)}, f)
        torch.distributed.barrier()  # no rank tears gloo down while the other still talks to it
        torch.distributed.destroy_process_group()
        # Leave without interpreter finalisation. About one CI run in three a rank died with SIGABRT
        # ("terminate called without an active exception"), reported at exit; 42 direct runs here (idle
        # and loaded) did not reproduce it. Finalisation destroys the trainers' FSDP / gloo C++ objects
        # in no fixed order after the group is gone; everything the test checks is on disk by now, so
        # skipping it loses nothing. If a rank still aborts, faulthandler shows where.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
''')


_RUNS = itertools.count()


def _torchrun(tmp_path: Path, *args: str, nproc: int = 2) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = tmp_path / f"result-{next(_RUNS)}"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    # --standalone: the rendezvous binds a free port itself (a port probed here could be taken meanwhile)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), *args[:2], str(result), *args[2:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return [json.loads(Path(f"{result}.rank{r}.json").read_text()) for r in range(nproc)]


def _reference(tmp_path: Path) -> list[float]:
    namespace: dict = {"__name__": "reference"}
    exec(compile(COMMON, "common", "exec"), namespace)
    losses, trainer = namespace["run"](str(tmp_path / "single"), 0, 1)
    assert trainer.world_size == 1 and trainer.wrapped is trainer.model
    return losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("ref"))


def test_helpers_without_process_group():
    assert not tdist.is_distributed() and tdist.is_main() and tdist.get_world_size() == 1
    assert tdist.all_reduce_mean(2.5) == 2.5
    assert tdist.all_gather_bytes(b"abc") == [b"abc"]
    info = tdist.init_from_env()
    assert (info.rank, info.world_size) == (0, 1)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp / "out", _torchrun(tmp, str(tmp / "out"), "ddp")


def test_ddp_two_processes_match_one(ddp_run, reference):
    out, results = ddp_run
    assert results[0]["wrapped"] == "DistributedDataParallel"
    for r in results:
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(reference), atol=1e-5, rtol=1e-5)
    assert results[0]["losses"] == results[1]["losses"]  # the logged loss is the mean over ranks
    # rank 0 alone wrote the files; the RNG and data state of both ranks are in the checkpoint
    assert (out / "latest").read_text().strip() == "step-00000006"
    trainer_state = json.loads((out / "step-00000006" / "trainer.json").read_text())
    assert trainer_state["world_size"] == 2 and trainer_state["data_states"] == [{"pos": 4}, {"pos": 4}]
    from safetensors import safe_open
    with safe_open(str(out / "step-00000006" / "rng.safetensors"), "pt") as f:
        assert {"rank0.torch_cpu", "rank1.torch_cpu"} <= set(f.keys())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6


def test_ddp_resume_two_processes(tmp_path, ddp_run, reference):
    """Resume the 2-process run from its step-3 checkpoint (in a new out_dir) and finish it."""
    out, results = ddp_run
    resumed = _torchrun(tmp_path, str(tmp_path / "resumed"), "ddp", "6", str(out / "step-00000003"))
    assert resumed[0]["resumed_from"].endswith("step-00000003")
    assert resumed[0]["losses"] == results[0]["losses"]  # bit for bit, like the uninterrupted run
    assert (tmp_path / "resumed" / "latest").read_text().strip() == "step-00000006"


def test_fsdp2_two_processes_match_one_and_resume(tmp_path, reference):
    if not tdist.fsdp_available():
        pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) is not in this PyTorch")
    out = tmp_path / "fsdp"
    results = _torchrun(tmp_path, str(out), "fsdp", "6", "split")
    assert results[0]["wrapped"].startswith("FSDP")
    assert results[0]["resumed_from"].endswith("step-00000003")  # full state dicts saved and loaded back
    for r in results:
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(reference), atol=1e-5, rtol=1e-5)
    # the checkpoint holds full (gathered) tensors, loadable into an unsharded model
    from tforge.train import load_state_dict
    sd = load_state_dict(out / "step-00000006" / "model.safetensors")
    assert sd["layers.0.weight"].shape == (16, 7) and sd["layers.2.bias"].shape == (3,)

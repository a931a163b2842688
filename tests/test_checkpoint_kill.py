"""kill -9 during checkpoint saves (issue 10): whenever the saving process dies, the run folder
still resolves to a complete checkpoint whose every file passes its sha256, at least as new as
the last one reported saved, with weights of that very step.

A driver subprocess (one thread, so forking is safe) forks a child that saves checkpoints of a
small model and optimizer in a loop, kills it with SIGKILL at a random moment, verifies the folder,
and lets the next child continue from what it finds, as `--resume` would."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

DRIVER = r"""
import importlib.util, json, os, random, signal, sys, time
import torch
torch.set_num_threads(1)
# checkpoint.py needs only torch, numpy and safetensors: loading the file alone skips `import tforge`
# (native library, triton), which costs more than the whole loop on a busy 2-core machine
spec = importlib.util.spec_from_file_location("tforge_checkpoint", sys.argv[4])
ckpt_mod = sys.modules["tforge_checkpoint"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ckpt_mod)
find_checkpoint, read_checkpoint, save_checkpoint = (ckpt_mod.find_checkpoint, ckpt_mod.read_checkpoint,
                                                     ckpt_mod.save_checkpoint)

root, iters, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 256))  # about 2 MB
opt = torch.optim.AdamW(model.parameters())
model(torch.randn(2, 256)).sum().backward()
opt.step()
step = 0
for it in range(iters):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the saver: step after step until killed
        os.close(r)
        s = step
        while True:
            s += 1
            with torch.no_grad():
                model[0].bias.fill_(s)  # the weights say which step they belong to
            save_checkpoint(root, s, model, opt, data_state={"step": s}, keep_last=2)
            os.write(w, b"s")
    os.close(w)
    os.read(r, 1)  # one save completed: from now on a checkpoint must always resolve
    time.sleep(rng.uniform(0.0, 0.06))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    ckpt = find_checkpoint(root)
    contents = read_checkpoint(ckpt)  # every file against its sha256
    bias = contents.model_state["0.bias"]
    ok = (contents.step > step and bool((bias == contents.step).all())
          and contents.trainer["data_state"] == {"step": contents.step} and contents.optimizer_state is not None)
    print(json.dumps({"it": it, "step": contents.step, "ok": ok}), flush=True)
    step = contents.step
save_checkpoint(root, step + 1, model, opt, keep_last=2)  # a clean save sweeps what the kills left
print(json.dumps({"leftovers": sorted(p for p in os.listdir(root) if p.startswith("."))}), flush=True)
"""


def _kill_loop(tmp_path, iterations: int, seed: int) -> None:
    import tforge.train.checkpoint as checkpoint
    res = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "ckpt"), str(iterations), str(seed),
                          checkpoint.__file__],
                         capture_output=True, text=True, timeout=120 + 3 * iterations)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    checks = [r for r in rows if "ok" in r]
    assert len(checks) == iterations
    assert all(r["ok"] for r in checks), checks
    assert rows[-1] == {"leftovers": []}


def test_kill_9_during_checkpoint_saves_a_few_times(tmp_path):
    _kill_loop(tmp_path, iterations=4, seed=0)


@pytest.mark.slow
def test_kill_9_during_checkpoint_saves_many_times(tmp_path):
    _kill_loop(tmp_path, iterations=80, seed=1)

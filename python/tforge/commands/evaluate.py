"""`tforge evaluate --run DIR`: score a run's model.

Language models (pretrain runs): validation loss and perplexity, on the run's
own held-out split (rebuilt from its config.toml; the token cache is reused)
or on --data files. Classifiers (finetune runs, compressed variants):
accuracy, macro-F1 and loss on the run's test set or on a labelled --data
file. The result is printed and written to <run>/evaluate-<checkpoint>[-<data file>].json.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tforge.commands import cls_data, lm_data
from tforge.commands.config import section, setting
from tforge.commands.runs import (CHECKPOINT_CHOICES, check_run_dir, fmt_seconds, load_run_model, run_settings, say,
                                  write_json)
from tforge.commands.sections import RunSource

TAG = "evaluate"


@dataclass
class DataSection:
    path: str = setting("", "text (LM) or labelled csv / jsonl / parquet (classifier) to evaluate on (\"\" = the "
                        "run's own validation / test data)", flag="--data", metavar="PATH")
    text_column: str = setting("", "column of the text in --data (\"\" = the run's setting)")
    label_column: str = setting("", "column of the label in --data (\"\" = the run's setting)")
    limit: int = setting(0, "classifier: at most this many examples (0 = all)", min=0, flag="--limit", metavar="N")
    max_batches: int = setting(0, "LM: at most this many batches (0 = the run's data.eval_batches)", min=0,
                               flag="--max-batches", metavar="N")
    batch_size: int = setting(0, "examples (classifier) or blocks (LM) per batch (0 = the run's setting)", min=0)


@dataclass
class EvaluateConfig:
    run: RunSource = section(RunSource)
    data: DataSection = section(DataSection)


CONFIG = EvaluateConfig


def lm_split(run_cfg: Any, tokenizer: Any, tag: str) -> tuple[Any, Any]:
    """(training view, validation view) of an LM run's token file, rebuilt from its config
    (a PretrainConfig; the token cache is reused)."""
    d, m = run_cfg.data, run_cfg.model
    tf = lm_data.tokenize(lm_data.load_text_corpus(d), tokenizer, d, tag)
    if d.val_fraction == 0.0:
        say(tag, "the run held out no validation split (data.val_fraction = 0): evaluating on the last 5% of its "
                 "tokens, which it trained on; pass --data for held-out text")
        return tf, lm_data.split_tokens(tf, 0.05, m.seq_len)[1]
    return lm_data.split_tokens(tf, d.val_fraction, m.seq_len)


def lm_eval_data(run_cfg: Any, tokenizer: Any, data_path: str, tag: str) -> Any:
    """The token file to evaluate an LM run on: its validation split, or data_path."""
    if data_path:
        d = dataclasses.replace(run_cfg.data, sources=[data_path], weights=[])
        return lm_data.tokenize(lm_data.load_text_corpus(d), tokenizer, d, tag)
    return lm_split(run_cfg, tokenizer, tag)[1]


def classification_eval_data(run_cfg: Any, spec: dict, eval_data: DataSection) -> Any:
    """The labelled examples to score a finetune run (a FinetuneConfig) on: eval_data.path, or the
    run's test set (its validation split when it had none)."""
    d = dataclasses.replace(run_cfg.data, text_column=eval_data.text_column or run_cfg.data.text_column,
                            label_column=eval_data.label_column or run_cfg.data.label_column)
    label_names = spec.get("label_names")
    seed = run_cfg.train.seed
    if eval_data.path:
        data = cls_data.load_split(eval_data.path, d, "test", label_names=label_names)
    elif d.test:
        data = cls_data.load_split(d.test, d, "test", label_names=label_names)
        data = cls_data.limit(data, d.test_limit, seed)
    else:
        data = cls_data.load_finetune_data(d, seed)["val"]
        if data is None:
            raise ValueError("the run has neither a test set nor a validation split: pass --data FILE")
    return cls_data.limit(data, eval_data.limit, seed)


def is_lm(spec: dict) -> bool:
    return spec.get("task") == "lm" or spec["architecture"] in ("GPT", "BertForMaskedLM")


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    from tforge.commands.finetune import FinetuneConfig
    from tforge.commands.pretrain import PretrainConfig
    r, d = cfg.run, cfg.data
    run_dir = check_run_dir(r.dir)
    t0 = time.perf_counter()
    model, tokenizer, spec, source = load_run_model(run_dir, r.checkpoint, device=r.device)
    say(TAG, f"{spec['architecture']} from {source}")
    if is_lm(spec):
        run_cfg = run_settings(run_dir, PretrainConfig)
        objective = spec.get("objective") or ("clm" if spec["architecture"] == "GPT" else "mlm")
        tf = lm_eval_data(run_cfg, tokenizer, d.path, TAG)
        make = lm_data.val_batches_factory(tf, objective, tokenizer, run_cfg.model.seq_len,
                                           d.batch_size or run_cfg.train.batch_size, run_cfg.data.mlm_prob)
        result = lm_data.lm_evaluate(model, make(), d.max_batches or run_cfg.data.eval_batches)
        result.update({"tokens": tf.num_tokens, "data": d.path or "the run's validation split"})
        say(TAG, f"loss {result['loss']:.4f}, perplexity {result['ppl']:.2f} ({result['batches']} batches)")
    else:
        run_cfg = run_settings(run_dir, FinetuneConfig)
        data = classification_eval_data(run_cfg, spec, d)
        fd = run_cfg.data
        batches = cls_data.eval_batches(data, tokenizer, int(spec.get("max_len") or fd.max_len),
                                        d.batch_size or fd.eval_batch_size, fd.packed)
        result = cls_data.evaluate_classifier(model, batches, int(spec["num_labels"]))
        result.update({"data": d.path or "the run's test set", "label_names": spec.get("label_names")})
        say(TAG, f"{cls_data.fmt_metrics(result)} on {result['examples']} examples")
    result.update({"run_dir": str(run_dir), "weights": source, "seconds": time.perf_counter() - t0})
    name = r.checkpoint if r.checkpoint in CHECKPOINT_CHOICES else "custom"
    if d.path:
        name += "-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(d.path).stem)
    write_json(run_dir / f"evaluate-{name}.json", result)
    say(TAG, f"done in {fmt_seconds(result['seconds'])}: {run_dir}/evaluate-{name}.json")
    return result


__all__ = ["CONFIG", "EvaluateConfig", "DataSection", "run", "lm_split", "lm_eval_data", "classification_eval_data",
           "is_lm"]

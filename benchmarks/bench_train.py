#!/usr/bin/env python
"""Pretraining throughput of tforge's GPT against a plain-PyTorch nanoGPT-style
GPT of identical size, hyper-parameters and initial weights, in one run,
interleaved (issue #6).

The baseline (NanoGPT below) is written here in plain torch, as nanoGPT
writes it: nn.LayerNorm, one c_attn Linear, F.scaled_dot_product_attention
(is_causal=True), tanh-GELU MLP (tforge's MLP uses the tanh form, GPT-2's),
tied embeddings, learned positions, no biases, GPT-2 init; its weights are
then copied from the tforge model, so both start identical. tforge's GPT runs
with pos="learned", norm="layer", bias=False (the same function).

A training step, timed the same way for both: forward, loss, backward,
clip_grad_norm_(1.0), AdamW step (same groups: decay on matrices only, same
lr schedule, betas, eps, weight decay; the fused AdamW kernel for both where
this PyTorch has one), zero_grad. Both models see the same batch each step
(real Shakespeare, tforge.data.PackedLMDataset blocks without document
boundaries, so both compute the same function), one step of each per round,
the order rotating each round; the first --warmup steps are not timed.
tokens/s = batch tokens / median step time over the rounds (wall clock);
the CPU-time (process_time) medians are recorded too: on a shared machine
they show the work done, whatever share of the cores the run got.
At --loss-seq-len both models train for --train-steps steps (the timed steps
are those steps) and their validation loss (fixed held-out batches: the last
two plays) is compared at equal steps.

CPU default: 6 layers, d_model 384, 6 heads, vocab 8192 (a sentencepiece
model trained on the plays, cached), T = 256 and 1024, 8192 tokens per batch.
CUDA (--device cuda): GPT-2 124M sizes (preset "base"), T = 1024, bf16
autocast, and model-FLOP utilisation = flops_per_token * tokens/s / 790 TFLOP/s.

    python benchmarks/bench_train.py --threads 1
    python benchmarks/bench_train.py --device cuda
    python benchmarks/bench_train.py --quick --no-json
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tforge.bench import harness, machine, report

OP = "train_throughput"
GPU_PEAK_TFLOPS = 790.0  # bf16 dense GEMM measured on the project's H200 (DESIGN.md)

COLUMNS = [report.Column("model", "model", align="<"),
           report.Column("shape", "BxT", lambda s: report.shape_str(s), align="<"),
           report.Column("median_ms", "step ms", "{:.0f}"),
           report.Column("tokens_per_s", "tokens/s", "{:.0f}"),
           report.Column("ratio", "vs nanoGPT", "{:.2f}x"),
           report.Column("ratio_paired", "paired", "{:.2f}x"),
           report.Column("cpu_tokens_per_s", "CPU-time tok/s", "{:.0f}"),
           report.Column("ratio_cpu_time", "CPU-time ratio", "{:.2f}x"),
           report.Column("mfu", "MFU", lambda v: f"{100 * v:.1f}%"),
           report.Column("final_val_loss", "val loss", "{:.4f}"),
           report.Column("loadavg", "load", "{:.1f}")]


# ---------------------------------------------------------------- the baseline: nanoGPT in plain torch

class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = CausalSelfAttention(d, n_head)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.mlp = MLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's model.py with bias=False, dropout=0, tanh GELU."""

    def __init__(self, vocab_size: int, n_layer: int, n_head: int, d_model: int, block_size: int):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, d_model), wpe=nn.Embedding(block_size, d_model),
            h=nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer)), ln_f=nn.LayerNorm(d_model, bias=False)))
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def copy_weights(src, dst: NanoGPT) -> None:
    """tforge GPT (pos="learned", norm="layer", bias=False) -> NanoGPT, tensor by tensor."""
    names = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
             "ln_f.weight": "transformer.ln_f.weight"}
    for i in range(len(src.blocks)):
        for a, b in (("ln_1", "ln_1"), ("attn.qkv", "attn.c_attn"), ("attn.o", "attn.c_proj"), ("ln_2", "ln_2"),
                     ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            names[f"blocks.{i}.{a}.weight"] = f"transformer.h.{i}.{b}.weight"
    theirs = dict(dst.named_parameters())
    with torch.no_grad():
        for a, b in names.items():
            s, d = src.get_parameter(a), theirs[b]
            if s.shape != d.shape:
                raise ValueError(f"copy_weights: {a} {tuple(s.shape)} does not fit {b} {tuple(d.shape)}")
            d.copy_(s)


# ---------------------------------------------------------------- data

def prepare_data(args):
    """(train TokenFile, val TokenFile, vocab_size, source) -- Shakespeare with a cached
    sentencepiece model; or random tokens when --data random."""
    if args.data == "random":
        return None, None, args.vocab, "random"
    from tforge.data import SPTokenizer, load_corpus, shakespeare_files, tokenize_to_shards
    from tforge.data.corpus import default_cache_dir
    files = shakespeare_files()
    if args.quick:
        train_files, val_files = files[:2], files[2:3]
    else:
        train_files, val_files = files[:-2], files[-2:]
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir() / "bench_train"
    prefix = cache / f"sp-unigram-{args.vocab}-{len(train_files)}"
    if Path(f"{prefix}.model").is_file():
        tok = SPTokenizer(f"{prefix}.model")
    else:
        tok = SPTokenizer.train([str(f) for f in train_files], args.vocab, prefix=prefix, num_threads=1)
    train = tokenize_to_shards(load_corpus([str(f) for f in train_files], streaming=True), tok, cache / "tokens")
    val = tokenize_to_shards(load_corpus([str(f) for f in val_files], streaming=True), tok, cache / "tokens")
    return train, val, tok.vocab_size, f"shakespeare ({len(train_files)} plays train, {len(val_files)} val)"


class Batches:
    """Endless (B, T) causal-LM batches: plain blocks (no cu_seqlens) from a TokenFile, or random
    tokens. Each batch carries input_ids, labels (= input_ids; tforge shifts them) and nanoGPT's
    targets (input_ids shifted left, -1 at the last position: the same pairs)."""

    def __init__(self, token_file, vocab: int, batch: int, seq_len: int, device, seed: int, shuffle: bool = True):
        self.vocab, self.batch, self.seq_len, self.device = vocab, batch, seq_len, device
        self.gen = torch.Generator().manual_seed(seed)
        self.it = None
        if token_file is not None:
            from tforge.data import PackedLMDataset
            self.ds = PackedLMDataset(token_file, seq_len, batch, seed=seed, shuffle=shuffle, respect_documents=False)

    def _next_ids(self) -> torch.Tensor:
        if self.it is None and hasattr(self, "ds"):
            self.it = iter(self.ds)
        if hasattr(self, "ds"):
            try:
                return next(self.it)["input_ids"]
            except StopIteration:
                self.it = iter(self.ds)
                return next(self.it)["input_ids"]
        return torch.randint(0, self.vocab, (self.batch, self.seq_len), generator=self.gen)

    def __next__(self) -> dict:
        ids = self._next_ids().to(self.device)
        targets = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -1)], dim=1)
        return {"input_ids": ids, "labels": ids, "targets": targets}


# ---------------------------------------------------------------- training steps

def param_groups(model: nn.Module, weight_decay: float):
    """nanoGPT's configure_optimizers groups (tforge.train.optim does the same): decay on
    tensors with ndim >= 2, none on the rest; tied weights once."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, args) -> torch.optim.AdamW:
    kw = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    try:
        return torch.optim.AdamW(param_groups(model, 0.1), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device in this torch
        return torch.optim.AdamW(param_groups(model, 0.1), **kw)


def lr_at(step: int, args) -> float:
    return args.lr * min(1.0, (step + 1) / max(1, args.warmup_lr_steps))


class Trainee:
    """One model with its optimizer and its one-step function."""

    def __init__(self, name: str, model: nn.Module, loss_fn, args, device: torch.device):
        self.name, self.model, self.loss_fn = name, model, loss_fn
        self.opt = make_optimizer(model, args)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.autocast == "bf16"
                         else contextlib.nullcontext())
        self.device = device
        self.losses: list[float] = []
        self.val: list[tuple[int, float]] = []

    def step(self, batch: dict, lr: float) -> torch.Tensor:
        for g in self.opt.param_groups:
            g["lr"] = lr
        with self.autocast:
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, batches: list[dict]) -> float:
        self.model.eval()
        with self.autocast:
            total = sum(float(self.loss_fn(self.model, b)) for b in batches) / len(batches)
        self.model.train()
        return total


def tforge_loss(model, batch):
    return model(batch["input_ids"], labels=batch["labels"]).loss


def nanogpt_loss(model, batch):
    return model(batch["input_ids"], batch["targets"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_models(args, vocab: int, device: torch.device):
    from tforge.models import GPT, GPTConfig
    torch.manual_seed(args.seed)
    if device.type == "cuda" and not args.quick:
        cfg = GPTConfig.preset(args.preset, pos="learned", norm="layer", bias=False, dropout=0.0,
                               max_seq_len=max(args.seq_lens), vocab_size=max(vocab, 50304))
    else:
        cfg = GPTConfig(vocab_size=vocab, n_layer=args.layers, n_head=args.heads, d_model=args.d_model,
                        max_seq_len=max(args.seq_lens), pos="learned", norm="layer", bias=False, dropout=0.0)
    ours = GPT(cfg)
    base = NanoGPT(cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.max_seq_len)
    copy_weights(ours, base)
    ours, base = ours.to(device), base.to(device)
    if args.compile:
        ours, base = torch.compile(ours), torch.compile(base)
    return cfg, ours, base


def run_seq_len(args, seq_len: int, data, device, minfo, vers, run_id) -> list[dict]:
    train_file, val_file, vocab, source = data
    cfg, ours, base = build_models(args, vocab, device)
    batch = max(1, args.tokens // seq_len)
    tokens = batch * seq_len
    loss_run = seq_len == args.loss_seq_len
    n_steps = args.warmup + (args.train_steps if loss_run else args.rounds)
    trainees = [Trainee("tforge", ours, tforge_loss, args, device), Trainee("nanogpt", base, nanogpt_loss, args, device)]
    gpt_model = ours._orig_mod if hasattr(ours, "_orig_mod") else ours
    train_batches = Batches(train_file, vocab, batch, seq_len, device, args.seed)
    val_batches = []
    if loss_run:
        vb = Batches(val_file, vocab, batch, seq_len, device, args.seed + 1, shuffle=False)
        val_batches = [next(vb) for _ in range(args.eval_batches)]
    wall = {t.name: harness.Stats(t.name) for t in trainees}
    cpu = {t.name: harness.Stats(t.name) for t in trainees}
    loads = []
    t_start = time.perf_counter()
    print(f"T={seq_len}: {cfg.n_layer} layers, d {cfg.d_model}, {cfg.n_head} heads, vocab {cfg.vocab_size}, "
          f"batch {batch}x{seq_len} = {tokens} tokens, {n_steps} steps ({args.warmup} untimed), "
          f"threads {torch.get_num_threads()}, data {source}", flush=True)
    for step in range(n_steps):
        if loss_run and val_batches and (step % args.eval_every == 0):
            for t in trainees:
                t.val.append((step, t.evaluate(val_batches)))
        b = next(train_batches)
        order = trainees[step % 2:] + trainees[:step % 2]  # rotate: no fixed position
        for t in order:
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            loss = t.step(b, lr_at(step, args))
            _sync(device)
            w1, c1 = time.perf_counter(), time.process_time()
            t.losses.append(float(loss))
            if step >= args.warmup:
                wall[t.name].times_ms.append((w1 - w0) * 1e3)
                cpu[t.name].times_ms.append((c1 - c0) * 1e3)
        loads.append(os.getloadavg()[0])
        if args.verbose or (step + 1) % max(1, n_steps // 10) == 0:
            print(f"  step {step + 1}/{n_steps}: " + ", ".join(
                f"{t.name} loss {t.losses[-1]:.4f} {wall[t.name].times_ms[-1] if wall[t.name].n else 0:.0f} ms"
                for t in trainees) + f", load {loads[-1]:.1f}", flush=True)
        if not loss_run and step >= args.warmup + 2 and time.perf_counter() - t_start > args.max_seconds:
            break
    if loss_run and val_batches:
        for t in trainees:
            t.val.append((n_steps, t.evaluate(val_batches)))

    records = []
    peak = machine.reference_ceiling(minfo.get("gpu"), "bf16_gemm_tflops") or GPU_PEAK_TFLOPS
    fpt = gpt_model.flops_per_token(seq_len)
    ref = wall["nanogpt"]
    on_cpu = device.type == "cpu"
    for t in trainees:
        st, ct = wall[t.name], cpu[t.name]
        tps = tokens / (st.median_ms * 1e-3)
        rec = report.make_record(
            op=OP, shape=(batch, seq_len), dtype="bfloat16" if args.autocast == "bf16" else "float32",
            direction="train_step", backend=t.name, median_ms=st.median_ms, machine=minfo, versions=vers,
            flops=fpt * tokens, ratio=ref.median_ms / st.median_ms, run_id=run_id,
            model=t.name, kind="tforge" if t.name == "tforge" else "peer",
            **{k: v for k, v in st.summary().items() if k != "median_ms"},
            ratio_paired=st.paired_ratio_to(ref), tokens=tokens, tokens_per_s=tps,
            # host CPU time says nothing about GPU work: CPU-time fields only on CPU
            cpu_median_ms=ct.median_ms if on_cpu else None,
            cpu_tokens_per_s=tokens / (ct.median_ms * 1e-3) if on_cpu else None,
            ratio_cpu_time=cpu["nanogpt"].median_ms / ct.median_ms if on_cpu else None,
            mfu=(fpt * tps / (peak * 1e12)) if device.type == "cuda" else None,
            flops_per_token=fpt, config=cfg.to_dict(), threads=torch.get_num_threads(),
            autocast=args.autocast, compile=args.compile, data=source, optimizer=type(t.opt).__name__ + (
                " fused" if t.opt.defaults.get("fused") else ""),
            lr=args.lr, loadavg=statistics.median(loads), loadavg_max=max(loads), quick=args.quick,
            train_steps=n_steps if loss_run else None, final_train_loss=t.losses[-1],
            val_losses=t.val or None, final_val_loss=t.val[-1][1] if t.val else None,
            device=device.type)
        records.append(rec)
    del trainees, ours, base
    return records


def goals(records, device_type: str) -> list[dict]:
    out = []
    by = {(r["backend"], r["shape"][1]): r for r in records}
    for (name, T), r in sorted(by.items()):
        if name != "tforge":
            continue
        if device_type == "cpu":
            out.append(dict(what=f"CPU train step tokens/s >= 1.2x nanoGPT-style at T={T}", met=r["ratio"] >= 1.2,
                            detail=f"{r['ratio']:.2f}x wall (paired {r['ratio_paired']:.2f}x), "
                                   f"{r['ratio_cpu_time']:.2f}x CPU time"))
        elif r.get("mfu") is not None:
            out.append(dict(what=f"GPU MFU >= 45% at T={T}", met=r["mfu"] >= 0.45, detail=f"{100 * r['mfu']:.1f}%"))
        peer = by.get(("nanogpt", T))
        if r.get("final_val_loss") is not None and peer and peer.get("final_val_loss") is not None:
            diffs = [abs(a[1] - b[1]) for a, b in zip(r["val_losses"], peer["val_losses"])]
            out.append(dict(what=f"same validation loss at equal steps (T={T}, |diff| <= 0.02)",
                            met=max(diffs) <= 0.02,
                            detail=f"tforge {r['final_val_loss']:.4f} vs nanoGPT {peer['final_val_loss']:.4f} after "
                                   f"{r['train_steps']} steps; max |diff| over {len(diffs)} evals {max(diffs):.4f}"))
    return out


def markdown(records, goal_list, args) -> str:
    """A short summary table (settings, load) for benchmarks/results/train_throughput.md."""
    r0 = records[0]
    cfg = r0["config"]
    lines = [f"Run {r0['run_id']} ({r0['timestamp']}), {r0['machine']['cpu']}, {r0['machine']['usable_cores']} "
             f"usable cores, torch {r0['versions']['torch']}, {r0['threads']} torch thread(s).",
             f"Model: {cfg['n_layer']} layers, d_model {cfg['d_model']}, {cfg['n_head']} heads, vocab "
             f"{cfg['vocab_size']}, learned positions, LayerNorm, no biases, tied embeddings; {r0['dtype']}; "
             f"{r0['optimizer']} lr {r0['lr']} (betas 0.9/0.95, wd 0.1 on matrices), clip 1.0; data {r0['data']}.",
             "", "| model | B x T | step ms (median) | tokens/s | vs nanoGPT (wall) | paired | CPU-time ratio |"
             " val loss | load (median / max) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        v = f"{r['final_val_loss']:.4f}" if r.get("final_val_loss") is not None else "-"
        cpu_ratio = f"{r['ratio_cpu_time']:.2f}x" if r.get("ratio_cpu_time") is not None else "-"
        mfu = f" (MFU {100 * r['mfu']:.1f}%)" if r.get("mfu") is not None else ""
        lines.append(f"| {r['backend']} | {r['shape'][0]} x {r['shape'][1]} | {r['median_ms']:.0f} | "
                     f"{r['tokens_per_s']:.0f}{mfu} | {r['ratio']:.2f}x | {r['ratio_paired']:.2f}x | "
                     f"{cpu_ratio} | {v} | {r['loadavg']:.1f} / {r['loadavg_max']:.1f} |")
    lines += ["", "Goals:", "", *("- " + line for line in report.format_goals(goal_list).splitlines())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--seq-lens", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="comma-separated (CPU default 256,1024; CUDA 1024)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per batch (CPU 8192, CUDA 16384)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=8192, help="sentencepiece vocabulary trained on the plays")
    p.add_argument("--preset", default="base", help="GPTConfig preset on CUDA")
    p.add_argument("--data", choices=("shakespeare", "random"), default="shakespeare")
    p.add_argument("--cache-dir", default=None, help="tokenizer and token cache (default: tforge's cache)")
    p.add_argument("--repeats", "--rounds", dest="rounds", type=int, default=None,
                   help="timed rounds at sequence lengths other than --loss-seq-len (CPU 5, CUDA 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each model first (CPU 1, CUDA 3)")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="time budget per sequence length (not for the loss run)")
    p.add_argument("--train-steps", type=int, default=100, help="steps of the loss run")
    p.add_argument("--loss-seq-len", type=int, default=None, help="T of the loss run (default: the first)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-lr-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--autocast", choices=("off", "bf16"), default=None, help="default: bf16 on CUDA, off on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny model and a few steps (smoke test)")
    p.add_argument("--md", default=None, help="also write a markdown summary to this file")
    p.add_argument("--out", default=None)
    p.add_argument("--no-json", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.autocast is None:
        args.autocast = "bf16" if device.type == "cuda" else "off"
    if args.seq_lens is None:
        args.seq_lens = [1024] if device.type == "cuda" else [256, 1024]
    if args.tokens is None:
        args.tokens = 16384 if device.type == "cuda" else 8192
    if args.rounds is None:
        args.rounds = 20 if device.type == "cuda" else 5
    if args.warmup is None:
        args.warmup = 3 if device.type == "cuda" else 1
    if args.quick:
        args.layers, args.d_model, args.heads, args.vocab = 2, 64, 4, 300
        args.seq_lens, args.tokens = [32], 128
        args.rounds, args.train_steps, args.eval_every, args.eval_batches, args.warmup = 2, 3, 2, 1, 1
    if args.loss_seq_len is None:
        args.loss_seq_len = args.seq_lens[0]
    try:
        data = prepare_data(args)
    except (ImportError, FileNotFoundError) as e:  # e.g. a GPU machine without the data packages
        print(f"Shakespeare data unavailable ({e}); timing on random tokens", file=sys.stderr)
        args.data = "random"
        data = prepare_data(args)
    minfo, vers = machine.machine_info(device), machine.versions()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    records = []
    for T in args.seq_lens:
        seq_records = run_seq_len(args, T, data, device, minfo, vers, run_id)
        records += seq_records
        if not args.no_json:  # appended per sequence length: a run cut short keeps what it measured
            report.append_jsonl(report.jsonl_path(report.resolve_out_dir(args.out), OP), seq_records)
    goal_list = goals(records, device.type)
    report.emit(records, COLUMNS, goal_list, OP, args.out, False, separate_on=("shape",))  # JSON: in the loop above
    if not args.no_json and records:
        print(f"\n{len(records)} records appended to {report.jsonl_path(report.resolve_out_dir(args.out), OP)}")
    if args.md:
        Path(args.md).write_text(markdown(records, goal_list, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

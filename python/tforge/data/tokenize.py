"""Tokenise a corpus once into a memory-mapped token file, cached on disk.

A token file is a folder holding
  tokens.bin    every document's ids back to back (np.uint16 when the vocabulary fits, else uint32)
  offsets.bin   int64 document starts, num_docs + 1 entries (the last one = num_tokens)
  meta.json     dtype, counts, vocab size, the cache key's inputs, skipped/bad rows, timing
and is opened as a ``TokenFile`` (np.memmap views: nothing is loaded into memory).

``tokenize_to_shards`` streams: documents are read in batches, tokenised and
appended to the file, so a corpus larger than memory tokenises in bounded
memory. With num_proc > 1 the input is split into contiguous pieces (byte
ranges of plain-text files cut at line ends, row ranges of an Arrow-backed
Dataset, or file shards of a streaming one), each worker process writes its
own part, and the parts are concatenated in order: the result does not
depend on num_proc. The folder is built under a temporary name and moved
into place with os.replace, so an interrupted run never leaves a half-written
cache; the next run with the same key (sources, their sizes and mtimes,
the tokenizer's hash, the settings) reuses it.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from tforge.data.corpus import CorpusSpec, corpus_spec, default_cache_dir, load_corpus
from tforge.data.tokenizer import token_dtype

__all__ = ["TokenFile", "tokenize_to_shards", "CACHE_VERSION"]

log = logging.getLogger("tforge.data")

CACHE_VERSION = 1
_TEXT_BATCH = 1000          # documents per encode_batch call
_READ_CHUNK = 4 << 20       # bytes read at a time from a plain-text file
_COPY_CHUNK = 16 << 20


# ----------------------------------------------------------------- the token file

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


# ----------------------------------------------------------------- reading documents

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


def _decode(buf: bytes) -> str:
    # like open(..., errors="replace") in text mode (what `datasets` does): bad bytes -> U+FFFD,
    # universal newlines; chunks always end at b"\n", so no "\r\n" or UTF-8 sequence is split
    text = buf.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _iter_text_range(path: str, start: int, end: int) -> Iterator[list[str]]:
    """Lines of path[start:end] (start and end at line starts), in batches."""
    with open(path, "rb") as f:
        f.seek(start)
        pos, carry = start, b""
        while pos < end:
            data = f.read(min(_READ_CHUNK, end - pos))
            if not data:
                break
            pos += len(data)
            buf = carry + data
            if pos < end:
                cut = buf.rfind(b"\n")
                if cut < 0:
                    carry = buf
                    continue
                buf, carry = buf[:cut + 1], buf[cut + 1:]
            else:
                carry = b""
            lines = _decode(buf).split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            for i in range(0, len(lines), _TEXT_BATCH):
                yield lines[i:i + _TEXT_BATCH]
        if carry:
            yield _decode(carry).split("\n")


def _iter_unit(unit: tuple) -> Iterator[list]:
    kind = unit[0]
    if kind == "txt_lines":
        _, path, start, end = unit
        yield from _iter_text_range(path, start, end)
    elif kind == "txt_file":
        with open(unit[1], "rb") as f:
            yield [_decode(f.read())]
    elif kind == "rows":
        _, ds, start, end = unit
        part = ds.select(range(start, end)) if (start, end) != (0, len(ds)) else ds
        for batch in part.iter(batch_size=_TEXT_BATCH):
            yield batch["text"]
    elif kind == "iterable":
        it = iter(unit[1])
        while True:
            rows = list(itertools.islice(it, _TEXT_BATCH))
            if not rows:
                break
            yield [r["text"] for r in rows]
    elif kind == "texts":
        texts = unit[1]
        for i in range(0, len(texts), _TEXT_BATCH):
            yield list(texts[i:i + _TEXT_BATCH])
    else:  # pragma: no cover
        raise ValueError(f"unknown work unit {kind!r}")


def _tokenize_part(job: dict) -> dict:
    """Worker: tokenise this part's units in order into part files; returns counts."""
    tok = job["tokenizer"]
    writer = _PartWriter(Path(job["tokens"]), Path(job["ends"]), job["dtype"], job["vocab_size"])
    eos = job["eos_id"]
    bad = {"invalid_utf8": 0, "missing_text": 0, "empty": 0}
    chars = 0
    for unit in job["units"]:
        for texts in _iter_unit(unit):
            keep = []
            for t in texts:
                if t is None:
                    bad["missing_text"] += 1
                elif not t or t.isspace():
                    bad["empty"] += 1
                else:
                    if "\ufffd" in t:
                        bad["invalid_utf8"] += 1
                    chars += len(t)
                    keep.append(t)
            if not keep:
                continue
            docs = tok.encode_batch(keep)
            if not all(docs):  # e.g. only characters the tokenizer drops
                n = len(docs)
                docs = [d for d in docs if len(d)]
                bad["empty"] += n - len(docs)
            writer.add(docs, eos)
    n_tok, n_doc = writer.close()
    return {"num_tokens": n_tok, "num_docs": n_doc, "bad": bad, "chars": chars}


# ----------------------------------------------------------------- planning

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


def _run_workers(jobs: list[dict], tmp: Path) -> list[dict]:
    """Run each job in its own `python -m tforge.data._worker` process (see _worker.py for why)."""
    import pickle
    import subprocess
    import sys

    import tforge

    env = dict(os.environ)
    pkg_parent = str(Path(tforge.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
    procs = []
    for k, job in enumerate(jobs):
        job_path = tmp / f"job-{k:05d}.pkl"
        with open(job_path, "wb") as f:
            pickle.dump(job, f)
        err = open(tmp / f"job-{k:05d}.err", "wb")
        procs.append((subprocess.Popen([sys.executable, "-m", "tforge.data._worker", str(job_path)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=err), job_path, err))
    results, failed = [], []
    try:
        for proc, job_path, err in procs:
            rc = proc.wait()
            err.close()
            if rc != 0:
                tail = Path(err.name).read_bytes()[-2000:].decode("utf-8", "replace")
                failed.append(f"worker {job_path.name} exited with {rc}:\n{tail}")
                continue
            results.append(json.loads(Path(str(job_path) + ".json").read_text()))
    finally:
        for proc, _, err in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()
    if failed:
        raise RuntimeError("tokenize_to_shards: " + "\n".join(failed))
    for p in tmp.glob("job-*"):
        p.unlink()
    return results


# ----------------------------------------------------------------- entry point

def tokenize_to_shards(corpus: Any, tokenizer: Any, cache_dir: Union[str, os.PathLike, None] = None,
                       num_proc: int = 1, append_eos: bool = True, *, use_cache: bool = True,
                       cache_key: Optional[str] = None, use_raw_text: bool = True) -> TokenFile:
    """Tokenise every document of `corpus` into a cached, memory-mapped TokenFile.

    corpus: what `load_corpus` returns (streaming or not), a path/glob (loaded with
    load_corpus(..., streaming=True)), or a list of texts. Each document becomes its ids plus
    the tokenizer's EOS (append_eos; [SEP] for BERT-style tokenizers without EOS); empty
    documents are skipped. Rows with invalid UTF-8 (decoded with U+FFFD replacements) or no
    text are counted in ``meta["bad_rows"]`` and logged, never fatal.
    cache_dir: folder for ``tokens-<key>/`` (default ``default_cache_dir()/tokens``); the key
    covers the sources (paths, sizes, mtimes), the settings and the tokenizer's file hash, and an
    existing entry is reused (``TokenFile.from_cache`` is True). Corpora without a known origin
    (transformed streaming datasets) need `cache_key` to be cached.
    num_proc: worker processes (see the module docstring); the result does not depend on it.
    use_raw_text: read plain .txt corpora directly by byte ranges (same documents as `datasets`)."""
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"tokenize_to_shards: num_proc must be an int >= 1, got {num_proc!r}")
    if isinstance(corpus, (str, os.PathLike)):
        corpus = load_corpus(corpus, streaming=True, cache_dir=cache_dir)
    spec = corpus_spec(corpus)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_root = cache_root / "tokens" if cache_dir is None else cache_root
    vocab_size = int(tokenizer.vocab_size)
    eos_id = None
    if append_eos:
        eos_id = tokenizer.eos_id if tokenizer.eos_id is not None else getattr(tokenizer, "sep_id", None)
    key = cache_key or _cache_key(corpus, spec, tokenizer, append_eos)
    final = None
    if key is not None and use_cache:
        final = cache_root / f"tokens-{key}"
        if (final / "meta.json").is_file():
            try:
                tf = TokenFile(final)
                if tf.num_tokens and int(tf.tokens.max()) >= vocab_size:  # ids the embedding cannot look up
                    raise ValueError(f"token id {int(tf.tokens.max())} >= vocab size {vocab_size}")
                tf.from_cache = True
                log.info("tokenize_to_shards: reusing %s (%d tokens, %d documents)", final, tf.num_tokens,
                         tf.num_docs)
                return tf
            except (ValueError, OSError, KeyError) as e:  # damaged entry: rebuild it
                log.warning("tokenize_to_shards: rebuilding damaged cache entry %s (%s)", final, e)
                shutil.rmtree(final, ignore_errors=True)
    if final is None:
        final = cache_root / f"tokens-nocache-{uuid.uuid4().hex[:12]}"
        if key is None:
            log.warning("tokenize_to_shards: this corpus has no known origin, so its tokens are not cached "
                        "for reuse (pass cache_key=... to cache them)")

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        plan = _plan(corpus, spec, num_proc, use_raw_text)
        dtype = np.dtype(token_dtype(vocab_size)).name
        jobs = [dict(units=units, tokenizer=tokenizer, tokens=str(tmp / f"part-{k:05d}.bin"),
                     ends=str(tmp / f"ends-{k:05d}.bin"), dtype=dtype, vocab_size=vocab_size, eos_id=eos_id)
                for k, units in enumerate(plan)]
        if len(jobs) == 1:
            results = [_tokenize_part(jobs[0])]
        else:
            results = _run_workers(jobs, tmp)
        # concatenate the parts in order
        part_tokens = [Path(j["tokens"]) for j in jobs]
        if len(part_tokens) == 1:
            os.replace(part_tokens[0], tmp / "tokens.bin")
        else:
            with open(tmp / "tokens.bin", "wb") as out:
                for p in part_tokens:
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, out, _COPY_CHUNK)
                    os.remove(p)
        ends = [Path(j["ends"]) for j in jobs]
        _write_offsets(ends, tmp / "offsets.bin")
        for e in ends:
            os.remove(e)
        seconds = time.perf_counter() - t0
        bad: dict[str, int] = dict(getattr(corpus, "_tforge_bad_rows", {}))  # rows load_corpus dropped
        for r in results:
            for k, v in r["bad"].items():
                bad[k] = bad.get(k, 0) + v
        n_tok = sum(r["num_tokens"] for r in results)
        n_doc = sum(r["num_docs"] for r in results)
        in_bytes = sum(os.path.getsize(f) for f in spec.files()) if spec is not None else None
        meta = dict(version=CACHE_VERSION, key=key, dtype=dtype, num_tokens=n_tok, num_docs=n_doc,
                    vocab_size=vocab_size, eos_id=eos_id, append_eos=append_eos,
                    tokenizer=repr(tokenizer), tokenizer_fingerprint=getattr(tokenizer, "fingerprint", None),
                    corpus=spec.to_dict() if spec is not None else None, bad_rows=bad,
                    stats=dict(seconds=seconds, num_proc=len(jobs), chars=sum(r["chars"] for r in results),
                               bytes=in_bytes, created=time.time()))
        _write_meta(tmp, meta)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same key first: use theirs
            if not (final / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if bad.get("invalid_utf8") or bad.get("missing_text"):
        log.warning("tokenize_to_shards: %d rows with invalid UTF-8 (kept, bad bytes replaced by U+FFFD) and %d "
                    "rows without text (skipped); see meta['bad_rows'] in %s", bad.get("invalid_utf8", 0),
                    bad.get("missing_text", 0), final)
    rate = (in_bytes or meta["stats"]["chars"]) / max(seconds, 1e-9) / 1e6
    log.info("tokenize_to_shards: %d documents, %d tokens in %.1f s (%.1f MB/s, %d processes) -> %s",
             n_doc, n_tok, seconds, rate, len(jobs), final)
    return TokenFile(final)

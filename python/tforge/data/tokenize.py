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

Here: the entry point. The token file and its writers are in token_file.py,
the planning (cache key, parts) in _tokenize_plan.py, reading and tokenising a
part and the worker processes in _tokenize_parts.py.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from tforge.data._tokenize_parts import _iter_unit, _run_workers, _tokenize_part  # noqa: F401  (_iter_unit: tests)
from tforge.data._tokenize_plan import _cache_key, _plan, _split_bytes  # noqa: F401  (_split_bytes: tests)
from tforge.data.corpus import corpus_spec, default_cache_dir, load_corpus
from tforge.data.token_file import CACHE_VERSION, TokenFile, _write_meta, _write_offsets
from tforge.data.tokenizer import token_dtype

__all__ = ["TokenFile", "tokenize_to_shards", "CACHE_VERSION"]

log = logging.getLogger("tforge.data")
_COPY_CHUNK = 16 << 20


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

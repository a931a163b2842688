"""tokenize_to_shards' parts: reading a part's work units (byte ranges of plain-text files, whole
files, Dataset rows, a streaming shard, a list of texts) in batches of documents, tokenising them into
the part's files (_tokenize_part, in this process or a `python -m tforge.data._worker` one), and
running several parts in worker processes (_run_workers)."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Iterator

from tforge.data.token_file import _PartWriter

_TEXT_BATCH = 1000          # documents per encode_batch call
_READ_CHUNK = 4 << 20       # bytes read at a time from a plain-text file


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

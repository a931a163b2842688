#!/usr/bin/env python
"""Data pipeline at scale: tokenise a large corpus in bounded memory.

Builds a corpus of --size-mb MB (default 1024) by repeating the Shakespeare
plays with their lines shuffled anew each time, trains a sentencepiece model
on it (sampling input_sentence_size lines) or reuses the one trained before,
then tokenises it with tforge.data.tokenize_to_shards for each --num-proc
(default 1,2) into a fresh cache, and finally opens the token file for
training (PackedLMDataset) and streams from the raw corpus
(StreamingLMDataset) to time the first batches.

Each phase runs in its own child process, so its peak RSS (getrusage
ru_maxrss of that process and of its children, the tokenising workers) is
its own. Prints a table and appends JSON lines to
benchmarks/results/data_scale.jsonl (or --out, or $OUT).
Goal (issue #6): 1 GB tokenises with peak RSS under 2 GB.

    python benchmarks/data_scale.py --size-mb 20          # quick check
    python benchmarks/data_scale.py                       # the full 1 GB run
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

MB = 1 << 20


def _rss_mb() -> tuple[float, float]:
    """Peak RSS (MB) of this process and of its largest waited-for child (Linux reports KB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / MB
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)


# ----------------------------------------------------------------- phases (run in child processes)

def phase_train(args) -> dict:
    from tforge.data import SPTokenizer

    t0 = time.perf_counter()
    prefix = Path(args.model).with_suffix("")
    tok = SPTokenizer.train([args.corpus], vocab_size=args.vocab_size, model_type="unigram", prefix=prefix,
                            input_sentence_size=args.input_sentence_size)
    return dict(seconds=time.perf_counter() - t0, vocab_size=tok.vocab_size)


def phase_tokenize(args) -> dict:
    from tforge.data import SPTokenizer, load_corpus, tokenize_to_shards

    tok = SPTokenizer(args.model)
    t0 = time.perf_counter()
    corpus = load_corpus(args.corpus, line_docs=True, streaming=True, cache_dir=args.cache)
    tf = tokenize_to_shards(corpus, tok, args.cache, num_proc=args.num_proc)
    seconds = time.perf_counter() - t0
    size = os.path.getsize(args.corpus)
    return dict(seconds=seconds, mb_per_s=size / MB / seconds, tokens=tf.num_tokens, docs=tf.num_docs,
                dtype=tf.dtype.name, token_file=str(tf.path), from_cache=tf.from_cache,
                token_file_mb=(tf.path / "tokens.bin").stat().st_size / MB)


def phase_stream(args) -> dict:
    from tforge.data import PackedLMDataset, SPTokenizer, StreamingLMDataset, TokenFile, load_corpus

    out = {}
    t0 = time.perf_counter()
    ds = PackedLMDataset(TokenFile(args.token_file), block_size=1024, batch_size=8)
    it = iter(ds)
    next(it)
    out["memmap_first_batch_s"] = time.perf_counter() - t0
    for _ in range(args.batches - 1):
        next(it)
    out["memmap_batches_per_s"] = args.batches / (time.perf_counter() - t0)
    out["memmap_rss_mb"] = _rss_mb()[0]
    t0 = time.perf_counter()
    corpus = load_corpus(args.corpus, line_docs=True, streaming=True, cache_dir=args.cache)
    stream = iter(StreamingLMDataset(corpus, SPTokenizer(args.model), block_size=1024, batch_size=8,
                                     shuffle_buffer=64))
    next(stream)
    out["stream_first_batch_s"] = time.perf_counter() - t0
    return out


PHASES = {"train": phase_train, "tokenize": phase_tokenize, "stream": phase_stream}


def run_phase(name: str, **kw) -> dict:
    """Run one phase in a child process; its result plus that child's peak RSS (self / its workers)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", name]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- the corpus

def build_corpus(path: Path, size_mb: int, seed: int = 0) -> dict:
    """Repeat the plays' lines, shuffled anew each round, until the file holds size_mb MB."""
    from tforge.data import shakespeare_files

    target = size_mb * MB
    if path.is_file() and path.stat().st_size >= target:
        return dict(seconds=0.0, reused=True, bytes=path.stat().st_size)
    t0 = time.perf_counter()
    lines = []
    for f in shakespeare_files():
        lines.extend(f.read_text(encoding="utf-8", errors="replace").splitlines())
    rng = random.Random(seed)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    written = 0
    with open(tmp, "w", encoding="utf-8") as out:
        while written < target:
            rng.shuffle(lines)
            for i in range(0, len(lines), 4096):
                chunk = "\n".join(lines[i:i + 4096]) + "\n"
                out.write(chunk)
                written += len(chunk.encode("utf-8"))
                if written >= target:
                    break
    os.replace(tmp, path)
    return dict(seconds=time.perf_counter() - t0, reused=False, bytes=path.stat().st_size)


# ----------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--num-proc", default="1,2", help="comma-separated worker counts to tokenise with")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--input-sentence-size", type=int, default=300_000, help="lines sampled to train the tokenizer")
    p.add_argument("--workdir", default=None, help="corpus, model and token caches (default: <tforge cache>/data_scale)")
    p.add_argument("--retrain", action="store_true", help="train the tokenizer even if one exists")
    p.add_argument("--keep", action="store_true", help="keep the token files afterwards")
    p.add_argument("--batches", type=int, default=50, help="batches read in the streaming phase")
    p.add_argument("--out", default=None)
    p.add_argument("--no-json", action="store_true")
    # internal: one phase in a child process
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    for name in ("corpus", "model", "cache", "token-file"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase == "tokenize":
        args.num_proc = int(args.num_proc)

    if args.phase:
        res = PHASES[args.phase](args)
        res["peak_rss_mb"], res["peak_rss_children_mb"] = _rss_mb()
        print(json.dumps(res))
        return 0

    from tforge.bench import machine, report
    from tforge.data import default_cache_dir

    work = Path(args.workdir) if args.workdir else default_cache_dir() / "data_scale"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"shakespeare_{args.size_mb}mb.txt"
    model = work / f"sp_unigram_{args.vocab_size}_{args.size_mb}mb.model"
    run_id = uuid.uuid4().hex[:8]
    minfo, vers = machine.machine_info("cpu"), machine.versions()
    records = []

    def record(phase: str, **fields) -> None:
        rec = dict(timestamp=report.timestamp(), run_id=run_id, machine=minfo, versions=vers, op="data_scale",
                   phase=phase, size_mb=args.size_mb, **fields)
        rec["peak_mb"] = max(fields.get("peak_rss_mb") or 0, fields.get("peak_rss_children_mb") or 0) or None
        records.append(rec)

    built = build_corpus(corpus, args.size_mb)
    bytes_ = built["bytes"]
    record("build_corpus", seconds=built["seconds"], reused=built["reused"], bytes=bytes_,
           mb_per_s=bytes_ / MB / built["seconds"] if built["seconds"] else None)
    print(f"corpus: {corpus} ({bytes_ / MB:.0f} MB{', reused' if built['reused'] else ''})", flush=True)

    if args.retrain or not model.is_file():
        r = run_phase("train", corpus=corpus, model=model, vocab_size=args.vocab_size,
                      input_sentence_size=args.input_sentence_size)
        record("train_tokenizer", num_proc=None, **r)
        print(f"tokenizer trained in {r['seconds']:.1f} s -> {model}", flush=True)

    token_file = None
    caches = []
    for n in [int(x) for x in args.num_proc.split(",") if x]:
        cache = work / f"tokens-run-{run_id}-np{n}"
        shutil.rmtree(cache, ignore_errors=True)
        caches.append(cache)
        r = run_phase("tokenize", corpus=corpus, model=model, cache=cache, num_proc=n)
        token_file = r.pop("token_file")  # removed at the end unless --keep: not worth recording
        record("tokenize", num_proc=n, **r)
        print(f"tokenised with num_proc={n}: {r['mb_per_s']:.1f} MB/s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(workers {r['peak_rss_children_mb']:.0f} MB)", flush=True)

    if token_file is not None:
        r = run_phase("stream", corpus=corpus, model=model, cache=caches[-1], token_file=token_file,
                      batches=args.batches)
        record("stream", **r)
    if not args.keep:
        for c in caches:
            shutil.rmtree(c, ignore_errors=True)

    columns = [report.Column("phase", "phase", align="<"), report.Column("num_proc", "procs"),
               report.Column("seconds", "seconds", "{:.1f}"), report.Column("mb_per_s", "MB/s", "{:.1f}"),
               report.Column("tokens", "tokens", "{:,}"), report.Column("peak_rss_mb", "peak RSS MB", "{:.0f}"),
               report.Column("peak_rss_children_mb", "workers MB", "{:.0f}"),
               report.Column("memmap_first_batch_s", "1st batch (memmap) s", "{:.3f}"),
               report.Column("stream_first_batch_s", "1st batch (stream) s", "{:.2f}")]
    tok_peaks = [r["peak_mb"] for r in records if r["phase"] == "tokenize"]
    goals = [dict(what=f"tokenise {args.size_mb} MB with peak RSS < 2 GB (goal stated for 1 GB)",
                  met=(max(tok_peaks) < 2048) if tok_peaks else None,
                  detail=f"max {max(tok_peaks):.0f} MB" if tok_peaks else None)]
    report.emit(records, columns, goals, "data_scale", args.out, not args.no_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

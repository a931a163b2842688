"""The `tforge` command. Subcommands so far: `info` (what this build and
machine offer). Training, compression and benchmarking commands join here as
they land."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_info() -> dict:
    import torch

    import tforge
    from tforge import _native

    info = {
        "tforge": tforge.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "platform": platform.platform(),
        "cpu": {"kernel_isa": _native.cpu_isa(), "threads": torch.get_num_threads(),
                "processor": platform.processor() or platform.machine()},
        "native_loaded": _native.loaded(),
        "cuda_kernels_compiled": _native.cuda_compiled(),
        "cuda_archs": _native.require().cuda_archs if _native.loaded() else None,
        "cuda_runtime": _native.require().cuda_runtime_info() if _native.cuda_compiled() else None,
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "backends": tforge.backends(),
    }
    return info


def _print_info(info: dict) -> None:
    print(f"tforge {info['tforge']}  (python {info['python']}, torch {info['torch']}, "
          f"triton {info['triton'] or 'not installed'})")
    print(f"platform        {info['platform']}")
    cpu = info["cpu"]
    int8_isa = info["backends"]["cpu"].get("int8_isa")
    print(f"CPU kernels     {cpu['kernel_isa'] or 'not built'}{f' (int8: {int8_isa})' if int8_isa else ''} "
          f"({cpu['processor']}, {cpu['threads']} threads)")
    if info["cuda_kernels_compiled"]:
        print(f"CUDA kernels    compiled for {info['cuda_archs']}; {info['cuda_runtime']}")
    else:
        print("CUDA kernels    not compiled")
    print(f"GPU             {', '.join(info['gpu']) if info['gpu'] else 'none seen'}")
    print("backends:")
    for name, entry in info["backends"].items():
        state = "available" if entry["available"] else f"unavailable: {entry.get('reason')}"
        print(f"  {name:<7} {state}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tforge", description="Fast Transformer kernels and training tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, compiled backends, CPU features, GPU")
    p_info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)

    if args.command == "info":
        info = collect_info()
        if args.json:
            json.dump(info, sys.stdout, indent=2, default=str)
            print()
        else:
            _print_info(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())

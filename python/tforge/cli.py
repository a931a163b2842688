"""The `tforge` command line:

    tforge pretrain | finetune | evaluate | predict | compress | demo | bench | info

This module only builds the argument parsers; each verb's work lives in
tforge.commands.<verb>: CONFIG (its config dataclass, whose fields give the
defaults, the --help text and the shortcut flags) and run(cfg). Config verbs
take `--config FILE` (TOML), `--set section.key=value` (repeatable) and the
shortcut flags, print the resolved config with --print-config, and write it
into their run folder. Bad input (a missing
run folder or file, an unknown config key, a bad value) ends with a one-line
error and exit code 2; TFORGE_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tforge.commands.config import Setting


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


# ---------------------------------------------------------------- config verbs

_VERBS = {
    "pretrain": "train a language model (GPT clm or BERT mlm) on local text",
    "finetune": "fine-tune a BERT classifier (head / full / lora) with early stopping",
    "evaluate": "evaluate a run's model (loss/perplexity or accuracy/macro-F1)",
    "predict": "generate text, fill masks or label texts with a run's model",
    "compress": "int8 quantisation and 2:4 pruning of a run's model, evaluated before/after",
    "demo": "the end-to-end demo: pretrain, fine-tune, compress, report (runs/demo/report.md)",
}
_RESUMABLE = ("pretrain", "finetune")
_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _command_module(verb: str):
    return importlib.import_module(f"tforge.commands.{verb}")


def _add_setting_flag(parser: argparse.ArgumentParser, s: "Setting") -> None:
    """The setting's shortcut flag (e.g. --steps for train.max_steps); an unused flag stays None
    so it does not override --config. dest is the setting's key, "train.max_steps"."""
    from tforge.commands.config import toml_value
    shown = "unset" if s.default is None else toml_value(s.default)
    repeatable = "; repeatable" if s.type is list and s.repeat else ""
    kwargs: dict = {"dest": s.key, "default": None, "help": f"{s.help} [{s.key}{repeatable}; default: {shown}]"}
    if s.type is bool:
        if s.default:
            raise ValueError(f"{s.key}: a flag can only switch a setting that defaults to false on")
        kwargs.update(action="store_const", const=True)
    else:
        item = s.item_type if s.type is list else s.type
        kwargs["type"] = item if item in _METAVARS else str
        if s.choices:
            kwargs["choices"] = s.choices
        else:
            kwargs["metavar"] = s.metavar or _METAVARS.get(item, "VALUE")
        if s.type is list and s.repeat:
            kwargs["action"] = "append"
        elif s.type is list:
            kwargs["nargs"] = "+"
    parser.add_argument(s.flag, **kwargs)


def _add_config_verb(sub, verb: str) -> None:
    from tforge.commands.config import dumps, settings
    module = _command_module(verb)
    p = sub.add_parser(verb, help=_VERBS[verb], description=module.__doc__,
                       epilog="defaults (override with --config FILE.toml and --set section.key=value):\n\n"
                              + dumps(module.CONFIG()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="TOML file with [section] key = value settings "
                                                    "(default: none, the defaults below)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable), e.g. --set train.lr=3e-4; `none` unsets an optional "
                        "one (default: none)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (TOML) and exit")
    if verb in _RESUMABLE:
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint (with its config.toml "
                            "unless --config is given)")
    if verb in _RESUMABLE + ("compress",):
        p.add_argument("--overwrite", action="store_true",
                       help="start over in --out: remove what an earlier run wrote there first")
    for s in settings(module.CONFIG):
        if s.flag:
            _add_setting_flag(p, s)
    if hasattr(module, "add_arguments"):
        module.add_arguments(p)


def _resolve_config(verb: str, args: argparse.Namespace):
    from tforge.commands import config as cfglib
    config_cls = _command_module(verb).CONFIG
    flags = {s.key: getattr(args, s.key) for s in cfglib.settings(config_cls) if s.flag}
    config_file = args.config
    if getattr(args, "resume", False) and not config_file:
        # resuming without --config: start from the run's own config.toml
        out = flags.get("run.out") or cfglib.parse_overrides(args.overrides).get("run", {}).get("out")
        if out and (Path(out) / "config.toml").is_file():
            config_file = str(Path(out) / "config.toml")
    return cfglib.resolve(config_cls, config_file, args.overrides, flags)


def _run_bench(args: argparse.Namespace) -> int:
    from tforge.commands import bench
    return bench.run(args.name, args.bench_args, list_only=args.list)


class _StdoutLogHandler(logging.Handler):
    """Writes tforge's log records as `[train] message` lines to the current
    sys.stdout (looked up at each record, so redirection and capture work)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(f"[{record.name.rpartition('.')[2]}] {record.getMessage()}\n")
            sys.stdout.flush()
        except Exception:  # never let logging break a run
            self.handleError(record)


def _install_logging() -> tuple[logging.Handler, int]:
    """tforge's INFO logs (training steps when there is no progress bar, cache
    reuse, weights initialised fresh) go to stdout beside the progress lines."""
    logger = logging.getLogger("tforge")
    handler = _StdoutLogHandler(logging.INFO)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    return handler, old_level


def _remove_logging(state: tuple[logging.Handler, int]) -> None:
    logger = logging.getLogger("tforge")
    logger.removeHandler(state[0])
    logger.setLevel(state[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tforge", description="Fast Transformer kernels and training tools.",
                                     epilog="Run `tforge <command> --help` for a command's options and defaults.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for verb in ("pretrain", "finetune", "evaluate", "predict", "compress", "demo"):
        _add_config_verb(sub, verb)
    p_bench = sub.add_parser("bench", help="run a kernel benchmark of the repository's benchmarks/ folder",
                             description="Run benchmarks/bench_<name>.py (or another script there) with the "
                                         "remaining arguments, e.g. `tforge bench layer_norm --quick`. "
                                         "Needs a source checkout of tforge (the benchmarks are not installed).")
    p_bench.add_argument("name", nargs="?", help="benchmark name (layer_norm, rms_norm, attention, int8_gemm, "
                                                 "sparse24, ...); omit to list them")
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    p_bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p_info = sub.add_parser("info", help="versions, compiled backends, CPU features, GPU")
    p_info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "info":
        info = collect_info()
        if args.json:
            json.dump(info, sys.stdout, indent=2, default=str)
            print()
        else:
            _print_info(info)
        return 0
    if args.command == "bench":
        return _run_bench(args)
    cfg = _resolve_config(args.command, args)
    if args.print_config:
        from tforge.commands.config import dumps
        print(dumps(cfg), end="")
        return 0
    # `datasets` progress bars for a few local files are noise next to our progress lines
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1" and "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()  # imported earlier in this process: it read the env then
    state = _install_logging()
    try:
        module = _command_module(args.command)
        if args.command in _RESUMABLE:
            module.run(cfg, resume=args.resume, overwrite=args.overwrite)
        elif args.command == "compress":
            module.run(cfg, overwrite=args.overwrite)
        elif args.command == "demo":
            module.run(cfg, quick=args.quick, tiny=args.tiny)
        else:
            module.run(cfg)
    finally:
        from tforge.train.runfolder import unlock_run_dir
        unlock_run_dir()  # run folders written by this command are free for the next one
        _remove_logging(state)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tforge.commands.config import ConfigError
    from tforge.train import CheckpointError, TrainingAborted
    try:
        return _dispatch(args)
    except (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, CheckpointError) as e:
        if os.environ.get("TFORGE_DEBUG"):
            raise
        message = " ".join(str(e).split("\n")) or type(e).__name__
        print(f"tforge {args.command}: error: {message}", file=sys.stderr)
        return 2
    except TrainingAborted as e:
        if os.environ.get("TFORGE_DEBUG"):
            raise
        print(f"tforge {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

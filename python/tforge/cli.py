"""The `tforge` command line:

    tforge pretrain | finetune | evaluate | predict | compress | demo | bench | info

This module only builds the argument parsers; each verb's work lives in
tforge.commands.<verb> (a DEFAULTS config, documented in the verb's --help,
and run(cfg)). Config verbs take `--config FILE` (TOML), `--set
section.key=value` (repeatable) and a few shortcuts, print the resolved config
with --print-config, and write it into their run folder. Bad input (a missing
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

# verb -> (module, one-line help, shortcuts: (flags, config key or None, argparse kwargs))
_SHORTCUTS: dict[str, list[tuple[tuple[str, ...], str | None, dict]]] = {
    "pretrain": [
        (("--steps",), "train.max_steps", dict(type=int, help="optimizer steps (train.max_steps)")),
        (("--objective",), "model.objective", dict(choices=("clm", "mlm"), help="clm (GPT) or mlm (BERT)")),
        (("--data",), "data.sources", dict(nargs="+", metavar="PATH",
                                           help="text files / globs / folders, or 'shakespeare' (data.sources)")),
        (("--tokenizer",), "data.tokenizer", dict(help="a sentencepiece .model or HF model folder (data.tokenizer)")),
        (("--device",), "train.device", dict(help="cpu, cuda, cuda:1 ... (train.device)")),
    ],
    "finetune": [
        (("--pretrained",), "model.pretrained",
         dict(help="'minilm', an HF BERT folder, or a tforge mlm run folder (model.pretrained)")),
        (("--mode",), "model.mode", dict(choices=("head", "full", "lora"), help="what trains (model.mode)")),
        (("--train",), "data.train", dict(metavar="PATH", help="'fine-food' or a csv/jsonl/parquet file (data.train)")),
        (("--test",), "data.test", dict(metavar="PATH", help="'fine-food', a file, or '' for none (data.test)")),
        (("--epochs",), "train.epochs", dict(type=float, help="passes over the training data (train.epochs)")),
        (("--steps",), "train.max_steps", dict(type=int, help="optimizer steps; overrides --epochs (train.max_steps)")),
        (("--baseline",), "baseline.tfidf", dict(action="store_const", const=True, default=None,
                                                 help="also train the TF-IDF + logistic regression baseline")),
        (("--device",), "train.device", dict(help="cpu, cuda, ... (train.device)")),
    ],
    "evaluate": [
        (("--run",), "run.dir", dict(metavar="DIR", help="a pretrain / finetune / compress run folder")),
        (("--checkpoint",), "run.checkpoint", dict(help="auto (default), final, best, latest or a checkpoint folder")),
        (("--data",), "data.path", dict(metavar="PATH",
                                        help="text (LM) or labelled csv/jsonl/parquet (classifier) to evaluate on; "
                                             "default: the run's own validation / test data")),
        (("--limit",), "data.limit", dict(type=int, help="classifier: at most this many examples")),
        (("--max-batches",), "data.max_batches", dict(type=int, help="LM: at most this many batches")),
    ],
    "predict": [
        (("--run",), "run.dir", dict(metavar="DIR", help="a pretrain / finetune / compress run folder")),
        (("--checkpoint",), "run.checkpoint", dict(help="auto (default), final, best, latest or a checkpoint folder")),
        (("--prompt",), "predict.prompts", dict(action="append", metavar="TEXT", help="clm: text to continue (repeatable)")),
        (("--text",), "predict.texts", dict(action="append", metavar="TEXT",
                                            help="classifier: text to label; mlm: text with [MASK] (repeatable)")),
        (("--input",), "predict.input", dict(metavar="FILE", help="txt (one text a line), csv, jsonl or parquet")),
        (("--output",), "predict.output", dict(metavar="FILE", help="write the predictions as JSON lines")),
        (("--max-new-tokens",), "predict.max_new_tokens", dict(type=int)),
        (("--temperature",), "predict.temperature", dict(type=float)),
        (("--top-k",), "predict.top_k", dict(type=int)),
        (("--seed",), "predict.seed", dict(type=int)),
    ],
    "compress": [
        (("--run",), "run.dir", dict(metavar="DIR", help="a pretrain / finetune run folder")),
        (("--checkpoint",), "run.checkpoint", dict(help="auto (default), final, best, latest or a checkpoint folder")),
        (("--int8",), "compress.int8", dict(action="store_const", const=True, default=None,
                                            help="int8 weights and activations (SmoothQuant)")),
        (("--sparse24",), "compress.sparse24", dict(action="store_const", const=True, default=None,
                                                    help="2:4 pruning (Wanda) and packing")),
        (("--recover-steps",), "compress.recover_steps", dict(type=int, help="2:4: fine-tuning steps with the "
                                                                             "masks fixed (compress.recover_steps)")),
        (("--calib-batches",), "compress.calib_batches", dict(type=int)),
        (("--limit",), "eval.limit", dict(type=int, help="classifier: evaluate on at most this many examples")),
    ],
    "demo": [
        (("--quick",), None, dict(action="store_true", help="tiny sizes: the whole demo in under 3 minutes")),
        (("--tiny",), None, dict(action="store_true", help=argparse.SUPPRESS)),
    ],
}

_VERBS = {
    "pretrain": "train a language model (GPT clm or BERT mlm) on local text",
    "finetune": "fine-tune a BERT classifier (head / full / lora) with early stopping",
    "evaluate": "evaluate a run's model (loss/perplexity or accuracy/macro-F1)",
    "predict": "generate text, fill masks or label texts with a run's model",
    "compress": "int8 quantisation and 2:4 pruning of a run's model, evaluated before/after",
    "demo": "the end-to-end demo: pretrain, fine-tune, compress, report (runs/demo/report.md)",
}
_RESUMABLE = ("pretrain", "finetune")


def _command_module(verb: str):
    return importlib.import_module(f"tforge.commands.{verb}")


def _defaults_epilog(module) -> str:
    from tforge.commands.config import dumps
    return ("defaults (override with --config FILE.toml and --set section.key=value):\n\n"
            + dumps(module.DEFAULTS, getattr(module, "HELP", None)))


def _add_config_verb(sub, verb: str) -> None:
    module = _command_module(verb)
    p = sub.add_parser(verb, help=_VERBS[verb], description=module.__doc__, epilog=_defaults_epilog(module),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="TOML file with [section] key = value settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable), e.g. --set train.lr=3e-4")
    if "out" in module.DEFAULTS.get("run", {}):
        p.add_argument("--out", metavar="DIR", help="output folder (run.out)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (TOML) and exit")
    if verb in _RESUMABLE:
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint (with its config.toml "
                            "unless --config is given)")
    if verb in _RESUMABLE + ("compress",):
        p.add_argument("--overwrite", action="store_true",
                       help="start over in --out: remove what an earlier run wrote there first")
    for flags, key, kwargs in _SHORTCUTS.get(verb, []):
        dest = ("shortcut:" + key) if key else flags[0].lstrip("-").replace("-", "_")
        p.add_argument(*flags, dest=dest, **kwargs)


def _resolve_config(verb: str, args: argparse.Namespace) -> dict:
    from tforge.commands import config as cfglib
    module = _command_module(verb)
    shortcuts = {k[len("shortcut:"):]: v for k, v in vars(args).items() if k.startswith("shortcut:")}
    out = getattr(args, "out", None)
    if out is not None:
        shortcuts["run.out"] = out
    config_file = args.config
    if getattr(args, "resume", False) and not config_file:
        # resuming without --config: start from the run's own config.toml
        out = out or cfglib.parse_overrides(args.overrides).get("run", {}).get("out")
        if out and (Path(out) / "config.toml").is_file():
            config_file = str(Path(out) / "config.toml")
    return cfglib.resolve(module.DEFAULTS, config_file, args.overrides, shortcuts)


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
        module = _command_module(args.command)
        print(dumps(cfg, getattr(module, "HELP", None)), end="")
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

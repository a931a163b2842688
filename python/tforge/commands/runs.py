"""Run folders: where each command writes, and how later commands read a run.

A pretrain / finetune run folder holds
    config.toml       the resolved configuration (rerun or resume with it)
    model_spec.json   what to build: architecture, model config, labels, LoRA settings
    tokenizer/        the tokenizer (sentencepiece .model, or the HF tokenizer files)
    metrics.jsonl, step-XXXXXXXX/, latest, best/    written by tforge.train.Trainer
    model/            the final model: model.safetensors + config.json (LoRA merged)
    summary.json      results and timings
`evaluate`, `predict` and `compress` take such a folder (--run) and load the
model from model/ (the final export), best/ or the latest checkpoint.
Compressed variants written by `compress` are run folders too (their
model_spec.json says "compressed": "int8" or "sparse24").
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from tforge.commands import config as cfglib

CONFIG_FILE = "config.toml"
SPEC_FILE = "model_spec.json"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_CHOICES = ("auto", "final", "best", "latest")
_RUN_MARKERS = (SPEC_FILE, SUMMARY_FILE, "metrics.jsonl", "latest")  # files that say a run already wrote here
# what --overwrite removes: only names a run writes, so files of the user's own in the folder survive
_RUN_ENTRIES = (CONFIG_FILE, SPEC_FILE, SUMMARY_FILE, "metrics.jsonl", "latest", "best", MODEL_DIR, TOKENIZER_DIR,
                "tensorboard", "int8", "sparse24")
_RUN_GLOBS = ("step-*", ".tmp-*", "evaluate-*.json", ".latest.tmp-*")

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------- printing

def say(tag: str, message: str) -> None:
    """A progress line for the user (rank 0 only), flushed at once."""
    from tforge.train import distributed as tdist
    if tdist.is_main():
        print(f"[{tag}] {message}", flush=True)


def fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


# ---------------------------------------------------------------- folders and files

def new_run_dir(verb: str, out: Optional[str] = None, *, resume: bool = False, overwrite: bool = False) -> Path:
    """The run folder: `out` when given, else runs/<verb>-<YYYYmmdd-HHMMSS>
    (made unique), locked for this process (tforge.train.runfolder). Under
    torchrun every rank gets rank 0's choice and rank 0 holds the lock.
    resume: the folder must hold a verifiable checkpoint. overwrite: what an
    earlier run wrote there is removed first."""
    from tforge.train import distributed as tdist
    from tforge.train.runfolder import lock_run_dir
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts it over: pass one of them")
    if out:
        path = Path(out)
    else:
        if resume:
            raise ValueError(f"--resume needs the run folder to continue: pass --out DIR (or set run.out)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{verb}-{stamp}"
        k = 2
        while path.exists():
            path = Path("runs") / f"{verb}-{stamp}-{k}"
            k += 1
    if tdist.is_distributed():
        path = Path(tdist.all_gather_bytes(str(path).encode())[0].decode())
    if resume and not path.is_dir():
        raise FileNotFoundError(f"--resume: run folder {path} does not exist")
    error = None
    if tdist.is_main():
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_run_dir(path, f"tforge {verb}")  # before looking inside: a live run may be writing there
            if overwrite:
                _clear_run(path)
        except (ValueError, OSError) as e:
            error = e
    if tdist.is_distributed():  # the other ranks must stop too, not wait for rank 0 at a barrier
        why = tdist.all_gather_bytes(("!" + str(error) if error else "-").encode())[0].decode()
        if why.startswith("!") and error is None:
            raise ValueError(why[1:])
    if error is not None:
        raise error
    tdist.barrier()
    if resume:
        _check_resumable(path)
    elif path.is_dir():
        found = [name for name in _RUN_MARKERS if (path / name).exists()]
        if found:
            raise ValueError(f"run folder {path} already holds a run ({', '.join(found)}); pass --resume to "
                             f"continue it, --overwrite to start it over, or choose another --out")
    return path


def _check_resumable(path: Path) -> None:
    """--resume needs a checkpoint to continue from; without one, training would start over on top of
    the folder's files (its step-* folders, model/ and metrics.jsonl)."""
    from tforge.train import find_checkpoint
    ckpt = find_checkpoint(path)  # CheckpointError when the newest one cannot be verified
    if ckpt is None:
        present = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
        raise ValueError(f"--resume: run folder {path} holds no checkpoint to resume from "
                         f"({'it holds ' + ', '.join(present[:6]) if present else 'it is empty'}); start over "
                         f"with --overwrite, or choose a new --out")


def _clear_run(path: Path) -> None:
    removed = []
    entries = [path / name for name in _RUN_ENTRIES] + [p for g in _RUN_GLOBS for p in path.glob(g)]
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
        else:
            continue
        removed.append(entry.name)
    if removed:
        say("run", f"--overwrite: removed {', '.join(sorted(removed))} from {path}")


def check_device(device: Optional[str], what: str = "train.device") -> Optional[str]:
    """`device` ("" / None = automatic) when this machine has it, else a one-line ValueError."""
    if not device:
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{what} = {device!r} is not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        raise ValueError(f"{what} = {device!r}: tforge runs on cpu or cuda, not {dev.type}")
    if not torch.cuda.is_available():
        raise ValueError(f"{what} = {device!r}, but no CUDA GPU is available here (torch {torch.__version__}, "
                         f"cuda {torch.version.cuda or 'not compiled in'}); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{what} = {device!r}, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def write_json(path: PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


def read_json(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def save_config(cfg: cfglib.Config, run_dir: Path) -> None:
    """Write the resolved config (commented with each setting's help) as run_dir/config.toml."""
    from tforge.train import distributed as tdist
    if tdist.is_main():
        cfglib.save(cfg, run_dir / CONFIG_FILE)


def check_run_dir(run: PathLike) -> Path:
    """The run folder, or a clear error when it is missing or not a run."""
    if run is None or str(run) == "":
        raise ValueError("no run folder given: pass --run DIR (a pretrain or finetune run folder)")
    path = Path(run)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    if not (path / SPEC_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a tforge run folder (no {SPEC_FILE}; "
                                f"pass the folder a pretrain/finetune/compress run wrote)")
    return path


def run_config(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The config.toml a run was made with (a plain dict; {} when absent)."""
    p = run_dir / CONFIG_FILE
    return cfglib.load_toml(p) if p.is_file() else {}


def run_settings(run_dir: Path, config_cls: type) -> Any:
    """The config a run was made with, as config_cls: keys an older run lacks take their
    defaults; keys this version does not know are skipped (the values it has are checked)."""
    return cfglib.from_dict(config_cls, run_config(run_dir), source=str(run_dir / CONFIG_FILE), strict=False)


# ---------------------------------------------------------------- tokenizers

_HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
             "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def save_tokenizer(tokenizer: Any, run_dir: Path) -> Path:
    """Copy the tokenizer into run_dir/tokenizer/ so the run folder stands alone."""
    dest = run_dir / TOKENIZER_DIR
    dest.mkdir(parents=True, exist_ok=True)
    folder = getattr(tokenizer, "folder", None)
    if folder is not None:  # HF tokenizer: copy its files
        for name in _HF_FILES:
            src = Path(folder) / name
            if src.is_file():
                shutil.copyfile(src, dest / name)
    elif hasattr(tokenizer, "save"):  # sentencepiece
        tokenizer.save(dest / "tokenizer.model")
    else:
        raise ValueError(f"cannot save a {type(tokenizer).__name__} tokenizer into the run folder")
    return dest


def load_run_tokenizer(run_dir: Path) -> Any:
    from tforge.data import load_tokenizer
    path = run_dir / TOKENIZER_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} has no {TOKENIZER_DIR}/ folder")
    return load_tokenizer(path)


# ---------------------------------------------------------------- models

def model_spec(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """What is needed to rebuild `model`: its class, its config, and extra
    (num_labels, label_names, objective, lora settings, ...)."""
    config = getattr(model, "config", None)
    if not hasattr(config, "to_dict"):
        raise ValueError(f"cannot describe a {type(model).__name__}: it has no config with to_dict()")
    spec = {"architecture": type(model).__name__, "config": config.to_dict()}
    if hasattr(model, "num_labels"):
        spec["num_labels"] = int(model.num_labels)
    spec.update(extra)
    return spec


def check_same_model(run_dir: Path, spec: dict[str, Any]) -> None:
    """--resume: the model now configured must be the one the run's checkpoints hold."""
    path = run_dir / SPEC_FILE
    if not path.is_file():
        return
    old = read_json(path)
    changed = [f"{k} {old['config'].get(k)!r} -> {v!r}" for k, v in spec["config"].items()
               if isinstance(old.get("config"), dict) and old["config"].get(k) != v and "dropout" not in k]
    if old.get("architecture") != spec["architecture"]:
        changed.insert(0, f"architecture {old.get('architecture')!r} -> {spec['architecture']!r}")
    if changed:
        raise ValueError(f"--resume: the model differs from the one in {run_dir} ({'; '.join(changed[:4])}); resume "
                         f"with the run's model settings, or start over with --overwrite or a new --out")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the architecture `spec` describes."""
    from tforge.models import BertConfig, BertForMaskedLM, BertForSequenceClassification, GPT, GPTConfig
    arch = spec.get("architecture")
    cfg = spec.get("config") or {}
    if arch == "GPT":
        return GPT(GPTConfig.from_dict(cfg))
    if arch == "BertForMaskedLM":
        return BertForMaskedLM(BertConfig.from_dict(cfg))
    if arch == "BertForSequenceClassification":
        return BertForSequenceClassification(BertConfig.from_dict(cfg), int(spec["num_labels"]))
    raise ValueError(f"{SPEC_FILE}: unknown architecture {arch!r} (known: GPT, BertForMaskedLM, "
                     f"BertForSequenceClassification)")


def export_final(model: nn.Module, run_dir: Path, spec: dict[str, Any]) -> Path:
    """Write run_dir/model/ (model.safetensors with LoRA merged + config.json)."""
    from tforge.train import export_model
    extra = {k: v for k, v in spec.items() if k not in ("config", "lora")}
    extra["tokenizer"] = f"../{TOKENIZER_DIR}"
    return export_model(model, run_dir / MODEL_DIR, config=spec["config"], extra=extra)  # writes its manifest


def _weights_source(run_dir: Path, checkpoint: str) -> tuple[str, Path]:
    """("final", model.safetensors path) or ("checkpoint", checkpoint dir)."""
    from tforge.train import find_checkpoint
    final = run_dir / MODEL_DIR / WEIGHTS_FILE
    if checkpoint in ("auto", "final"):
        if final.is_file():
            return "final", final
        if checkpoint == "final":
            raise FileNotFoundError(f"run folder {run_dir} has no final model ({MODEL_DIR}/{WEIGHTS_FILE}); "
                                    f"the run may not have finished: use --checkpoint latest")
    if checkpoint in ("auto", "best") and (run_dir / "best").is_dir():
        found = find_checkpoint(run_dir / "best")
        if found is not None:
            return "checkpoint", found
        if checkpoint == "best":
            raise FileNotFoundError(f"run folder {run_dir}: best/ holds no checkpoint")
    elif checkpoint == "best":
        raise FileNotFoundError(f"run folder {run_dir} has no best/ checkpoint (no evaluation ran)")
    if checkpoint in ("auto", "latest"):
        found = find_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"run folder {run_dir} holds no model: no {MODEL_DIR}/{WEIGHTS_FILE} and no "
                                    f"checkpoint")
        return "checkpoint", found
    path = Path(checkpoint)
    if not path.is_absolute() and not path.exists():
        path = run_dir / checkpoint
    found = find_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"--checkpoint {checkpoint}: not 'auto', 'final', 'best', 'latest' or a "
                                f"checkpoint folder")
    return "checkpoint", found


def load_weights(model: nn.Module, spec: dict[str, Any], kind: str, path: Path) -> nn.Module:
    """Load final weights or a checkpoint's into `model` (LoRA checkpoints are
    loaded into adapters that are then merged)."""
    from tforge.train import read_checkpoint
    from tforge.train.checkpoint import safetensors_to_state_dict
    from tforge.train.runfolder import read_verified_export
    if kind == "final":
        state = safetensors_to_state_dict(read_verified_export(path.parent, path.name), str(path))
    else:
        state = read_checkpoint(path).model_state
        lora = spec.get("lora")
        if lora and any(".lora_" in k for k in state):
            from tforge.models import apply_lora, merge_lora
            apply_lora(model, rank=int(lora["rank"]), alpha=float(lora["alpha"]), targets=tuple(lora["targets"]))
            _load_strict(model, state, path)
            merge_lora(model)
            for p in model.parameters():
                p.requires_grad_(True)
            return model
    _load_strict(model, state, path)
    return model


def _load_strict(model: nn.Module, state: dict, where: Path) -> None:
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:  # load_state_dict would raise a multi-line RuntimeError
        raise ValueError(f"weights in {where} do not fit the model of {SPEC_FILE}: {len(wrong)} tensor(s) differ "
                         f"in shape, e.g. {'; '.join(wrong[:2])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise ValueError(f"weights in {where} do not fit the model of {SPEC_FILE}: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")


def load_run_model(run: PathLike, checkpoint: str = "auto", device: Union[str, torch.device, None] = "cpu"
                   ) -> tuple[nn.Module, Any, dict[str, Any], str]:
    """(model in eval mode, tokenizer, spec, where the weights came from) of a run folder."""
    run_dir = check_run_dir(run)
    if isinstance(device, str):
        check_device(device, "run.device")
    spec = read_json(run_dir / SPEC_FILE)
    tokenizer = load_run_tokenizer(run_dir)
    model = build_model(spec)
    compressed = spec.get("compressed")
    if compressed:
        weights = run_dir / MODEL_DIR / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"compressed run {run_dir} has no {MODEL_DIR}/{WEIGHTS_FILE}")
        from tforge.compress.serialization import load_compressed_bytes
        from tforge.train.runfolder import read_verified_export
        load_compressed_bytes(model, read_verified_export(weights.parent, WEIGHTS_FILE), str(weights))
        source = f"{weights} ({compressed})"
    else:
        kind, path = _weights_source(run_dir, checkpoint)
        load_weights(model, spec, kind, path)
        source = str(path)
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer, spec, source


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def isatty() -> bool:
    return sys.stderr.isatty()


__all__ = ["say", "fmt_seconds", "new_run_dir", "write_json", "read_json", "save_config", "check_run_dir",
           "run_config", "save_tokenizer", "load_run_tokenizer", "model_spec", "build_model", "export_final",
           "load_weights", "load_run_model", "check_device", "check_same_model", "model_device", "to_device",
           "model_bytes", "CHECKPOINT_CHOICES", "run_settings"]

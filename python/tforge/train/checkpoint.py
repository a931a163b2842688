"""Checkpoints that survive crashes and refuse corrupted files, without pickle.

Layout of one checkpoint directory (root/step-00000100/)::

    model.safetensors      model state_dict; tied weights stored once, aliases in the header
    optimizer.safetensors  optimizer state tensors, keys state.{param}.{name}
    optimizer.json         param_groups and the non-tensor optimizer state
    trainer.json           step, data state, scheduler state, history tail, config, ...
    rng.safetensors        torch CPU/CUDA, numpy and python RNG states (per rank)
    manifest.json          sha256 and size of every file above

A checkpoint is written into root/.tmp-<name>-<pid>/, each file fsynced, then
renamed into place with os.replace (atomic on POSIX), and only then does the
`latest` pointer file (also replaced atomically) move to it. A crash mid-save
leaves the previous checkpoint and pointer untouched. Loading checks every file
against the manifest and raises CheckpointError naming the bad file. Nothing
is unpickled: tensors come from safetensors, everything else from JSON (the
codecs are in tforge.train.state).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import safetensors.torch
import torch
from torch import nn

# the tensor-state codecs live in tforge.train.state; re-exported here, where callers have always found them
from tforge.train.state import (CheckpointError, _json_bytes, _json_default, _merge_rng_blobs,  # noqa: F401
                                _parse_safetensors, flatten_optimizer_state, restore_rng_from_bytes, rng_state,
                                rng_state_bytes, safetensors_to_state_dict, set_rng_state,
                                state_dict_to_safetensors, unflatten_optimizer_state)

FORMAT = "tforge-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_JSON = "trainer.json"
RNG_FILE = "rng.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")

PathLike = Union[str, os.PathLike]


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# ------------------------------------------------------------ small file helpers

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; durability is best-effort there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    """Write and fsync; return the manifest entry (sha256 and size)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def write_text_atomic(path: PathLike, text: str) -> None:
    """Replace `path` with `text` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_bytes(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: PathLike,
                    metadata: Optional[dict[str, str]] = None) -> None:
    """Write a state dict as one safetensors file (tied weights deduplicated), fsynced."""
    _write_bytes(Path(path), state_dict_to_safetensors(state_dict, metadata))


def load_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such safetensors file: {path}")
    return safetensors_to_state_dict(path.read_bytes(), str(path))


# ------------------------------------------------------------ model / optimizer access

def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# ------------------------------------------------------------ directories

def list_checkpoints(root: PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every finished step-* checkpoint under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _STEP_DIR.match(entry.name)
        if m and entry.is_dir() and (entry / MANIFEST).is_file():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def _pointer_target(root: Path, pointer: Path) -> Path:
    """The checkpoint folder a `latest` file names; it must be a folder directly inside root (a pointer
    such as ../other/step-... would load another run's weights)."""
    name = pointer.read_text(errors="replace").strip()
    target = root / name
    if not name or "/" in name or "\\" in name or name in (".", "..") \
            or target.resolve().parent != root.resolve():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint folder inside {root}; "
                              f"refusing to follow it (fix or delete {pointer})")
    return target


def find_checkpoint(path: PathLike) -> Optional[Path]:
    """Resolve what to load: `path` itself when it is a checkpoint directory,
    else the one its `latest` file names, else the newest step-* directory;
    None when there is none. A checkpoint that is there but cannot be verified
    (its manifest deleted, the folder `latest` names gone) raises
    CheckpointError rather than silently loading an older one."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if path.is_dir() and (_STEP_DIR.match(path.name) or path.name == "best") and not (path / LATEST).exists():
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is missing (incomplete save or not a tforge "
                              f"checkpoint)")
    found = list_checkpoints(path)
    chosen = found[-1][1] if found else None
    pointer = path / LATEST
    if pointer.is_file():
        target = _pointer_target(path, pointer)
        if not (target / MANIFEST).is_file():
            undo = f"{target.name}/ and {LATEST}" if target.is_dir() else LATEST
            older = f"; remove {undo} to go back to {chosen.name}" if chosen is not None else ""
            what = f"{MANIFEST} is missing" if target.is_dir() else "the folder does not exist"
            raise CheckpointError(f"checkpoint {target} (named by {pointer}): {what}, so it cannot be "
                                  f"verified{older}")
        chosen = target
    if chosen is not None and path.is_dir():
        # a newer step-* folder without a manifest was damaged after saving (saves rename complete folders)
        step = int(_STEP_DIR.match(chosen.name).group(1)) if _STEP_DIR.match(chosen.name) else -1
        for entry in path.iterdir():
            m = _STEP_DIR.match(entry.name)
            if m and int(m.group(1)) > step and entry.is_dir() and not (entry / MANIFEST).is_file():
                raise CheckpointError(f"checkpoint {entry}: {MANIFEST} is missing, so the newest checkpoint "
                                      f"cannot be verified; delete {entry.name} to go back to {chosen.name}")
    return chosen


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    found = list_checkpoints(root)
    pointer = root / LATEST
    protected = pointer.read_text().strip() if pointer.is_file() else None
    for _, path in found[:-keep_last]:
        if path.name != protected:
            shutil.rmtree(path, ignore_errors=True)


def _clean_stale_temps(root: Path) -> None:
    # what a killed save left: temp folders, and a pointer temp file from write_text_atomic
    for entry in root.glob(".tmp-*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    for entry in root.glob(f".{LATEST}.tmp-*"):
        entry.unlink(missing_ok=True)


# ------------------------------------------------------------ save

def save_checkpoint(root: PathLike, step: int, model: Optional[nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                    data_state: Optional[dict] = None, extra: Optional[dict] = None, *, keep_last: int = 3,
                    model_state: Optional[Mapping[str, torch.Tensor]] = None,
                    optimizer_state: Optional[Mapping[str, Any]] = None,
                    rng_blobs: Optional[list[bytes]] = None, name: Optional[str] = None,
                    update_latest: bool = True) -> Path:
    """Write checkpoint root/step-XXXXXXXX (or root/<name>) atomically and return its path.

    model/optimizer give the state dicts unless model_state/optimizer_state
    are passed (already gathered, e.g. full state dicts under FSDP). rng_blobs:
    per-rank rng_state_bytes() (default: this process only). extra goes into
    trainer.json next to step, data_state and the scheduler state. With
    update_latest the `latest` pointer moves here and all but the newest
    `keep_last` step directories are removed (0 keeps all).
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(root)
    dir_name = name or step_dir_name(step)
    final = root / dir_name
    tmp = root / f".tmp-{dir_name}-{os.getpid()}"
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        if model_state is None and model is not None:
            model_state = unwrap_model(model).state_dict()
        if model_state is not None:
            files[MODEL_FILE] = _write_bytes(tmp / MODEL_FILE, state_dict_to_safetensors(model_state))
        if optimizer_state is None and optimizer is not None:
            optimizer_state = optimizer.state_dict()
        if optimizer_state is not None:
            tensors, meta = flatten_optimizer_state(optimizer_state)
            files[OPTIMIZER_FILE] = _write_bytes(tmp / OPTIMIZER_FILE, safetensors.torch.save(tensors))
            files[OPTIMIZER_JSON] = _write_bytes(tmp / OPTIMIZER_JSON, _json_bytes(meta, "optimizer state"))
        blobs = rng_blobs if rng_blobs is not None else [rng_state_bytes()]
        files[RNG_FILE] = _write_bytes(tmp / RNG_FILE, _merge_rng_blobs(blobs))
        trainer = {"step": step, "data_state": data_state,
                   "scheduler": scheduler.state_dict() if scheduler is not None else None,
                   "torch_version": torch.__version__, "saved_at": time.time()}
        trainer.update(extra or {})
        files[TRAINER_JSON] = _write_bytes(tmp / TRAINER_JSON, _json_bytes(trainer, "trainer state (extra, data_state)"))
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "files": files}
        _write_bytes(tmp / MANIFEST, _json_bytes(manifest, "manifest"))
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step: swap the old one out first
            old = root / f".tmp-old-{dir_name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_latest and name is None:
        write_text_atomic(root / LATEST, dir_name + "\n")
        _prune(root, keep_last)
    return final


# ------------------------------------------------------------ load

def _read_manifest(ckpt: Path) -> dict[str, Any]:
    path = ckpt / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt}: {MANIFEST} is missing (incomplete save or not a tforge checkpoint)")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {ckpt}: {MANIFEST} is not a {FORMAT} manifest")
    return manifest


def _read_verified(ckpt: Path, name: str, manifest: dict[str, Any]) -> bytes:
    entry = manifest["files"].get(name)
    if entry is None:
        raise CheckpointError(f"checkpoint {ckpt}: {name} is not listed in {MANIFEST}")
    path = ckpt / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt}: file {name} is missing")
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        raise CheckpointError(f"checkpoint {ckpt}: file {name} has {len(data)} bytes but the manifest says "
                              f"{entry['bytes']} (truncated or partially written)")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"checkpoint {ckpt}: file {name} fails its sha256 check (modified or corrupted)")
    return data


def verify_checkpoint(path: PathLike) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise CheckpointError."""
    ckpt = Path(path)
    manifest = _read_manifest(ckpt)
    for name in manifest["files"]:
        _read_verified(ckpt, name, manifest)
    return manifest


@dataclass
class CheckpointContents:
    """Everything a checkpoint holds, verified and parsed (tensors on CPU)."""
    path: Path
    trainer: dict[str, Any]
    model_state: Optional[dict[str, torch.Tensor]] = None
    optimizer_state: Optional[dict[str, Any]] = None
    rng: Optional[bytes] = field(default=None, repr=False)

    @property
    def step(self) -> int:
        return int(self.trainer["step"])


def read_checkpoint(path: PathLike) -> CheckpointContents:
    """Verify and parse a checkpoint directory (or a root with `latest`)."""
    ckpt = find_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint found at {path}")
    manifest = _read_manifest(ckpt)
    blobs = {name: _read_verified(ckpt, name, manifest) for name in manifest["files"]}
    if TRAINER_JSON not in blobs:
        raise CheckpointError(f"checkpoint {ckpt}: {TRAINER_JSON} is not listed in {MANIFEST}")
    try:
        trainer = json.loads(blobs[TRAINER_JSON])
        opt_meta = json.loads(blobs[OPTIMIZER_JSON]) if OPTIMIZER_JSON in blobs else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: bad JSON ({e})") from None
    contents = CheckpointContents(path=ckpt, trainer=trainer, rng=blobs.get(RNG_FILE))
    if MODEL_FILE in blobs:
        contents.model_state = safetensors_to_state_dict(blobs[MODEL_FILE], f"checkpoint {ckpt}: {MODEL_FILE}")
    if OPTIMIZER_FILE in blobs:
        if opt_meta is None:
            raise CheckpointError(f"checkpoint {ckpt}: {OPTIMIZER_FILE} without {OPTIMIZER_JSON}")
        tensors, _ = _parse_safetensors(blobs[OPTIMIZER_FILE], f"checkpoint {ckpt}: {OPTIMIZER_FILE}")
        try:
            contents.optimizer_state = unflatten_optimizer_state(tensors, opt_meta)
        except KeyError as e:
            raise CheckpointError(f"checkpoint {ckpt}: {OPTIMIZER_JSON} names tensor {e} "
                                  f"missing from {OPTIMIZER_FILE}") from None
    return contents


def load_checkpoint(path: PathLike, model: Optional[nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None, *,
                    restore_rng: bool = True, strict: bool = True, rank: int = 0) -> dict[str, Any]:
    """Load a checkpoint into plain (non-FSDP) objects and return trainer.json
    (with "path" added). Raises CheckpointError when a file fails verification
    or a requested part is absent."""
    contents = read_checkpoint(path)
    if model is not None:
        if contents.model_state is None:
            raise CheckpointError(f"checkpoint {contents.path}: has no {MODEL_FILE}")
        unwrap_model(model).load_state_dict(contents.model_state, strict=strict)
    if optimizer is not None:
        if contents.optimizer_state is None:
            raise CheckpointError(f"checkpoint {contents.path}: has no {OPTIMIZER_FILE}")
        optimizer.load_state_dict(contents.optimizer_state)
    if scheduler is not None and contents.trainer.get("scheduler") is not None:
        scheduler.load_state_dict(contents.trainer["scheduler"])
    if restore_rng and contents.rng is not None:
        restore_rng_from_bytes(contents.rng, rank, f"checkpoint {contents.path}: {RNG_FILE}")
    return {**contents.trainer, "path": str(contents.path)}


__all__ = ["CheckpointError", "CheckpointContents", "save_checkpoint", "load_checkpoint", "read_checkpoint",
           "verify_checkpoint", "find_checkpoint", "list_checkpoints", "save_state_dict", "load_state_dict",
           "state_dict_to_safetensors", "safetensors_to_state_dict", "flatten_optimizer_state",
           "unflatten_optimizer_state", "rng_state", "set_rng_state", "rng_state_bytes", "restore_rng_from_bytes",
           "unwrap_model", "write_text_atomic", "step_dir_name"]

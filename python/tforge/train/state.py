"""Tensor state without pickle: state dicts, optimizer state and RNG state as
safetensors bytes plus JSON (what tforge checkpoints are made of).

State dicts: tensors that are the same view (tied weights) are stored once and
recorded as aliases in the header, the key order is kept (every FSDP rank must
walk the keys alike). Optimizer state: tensors under keys state.{param}.{name},
the rest as JSON. RNG state: torch CPU/CUDA, numpy and python generators, one
blob per rank. Parsing errors are CheckpointError.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import safetensors.torch
import torch

_ALIAS_KEY = "tforge.aliases"
_ORDER_KEY = "tforge.order"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, truncated or was modified."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor) and value.numel() <= 1024:
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")


def _json_bytes(obj: Any, what: str) -> bytes:
    try:
        return json.dumps(obj, indent=1, default=_json_default, allow_nan=True).encode()
    except TypeError as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from None


# ------------------------------------------------------------ state dicts <-> safetensors

def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr())


def state_dict_to_safetensors(state_dict: Mapping[str, torch.Tensor],
                              metadata: Optional[dict[str, str]] = None) -> bytes:
    """Serialise a state dict. Entries that are the same tensor (tied weights)
    are stored once and recorded as aliases in the header; other tensors that
    share storage with a different view are copied (safetensors refuses shared
    storage)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    exact: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                            "only tensors can be stored in safetensors")
        t = value.detach()
        if hasattr(t, "full_tensor"):  # DTensor: callers gather before saving; be safe anyway
            t = t.full_tensor()
        if t.numel() == 0:
            tensors[name] = t.cpu().contiguous()
            continue
        view = (_storage_key(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in exact:
            aliases[name] = exact[view]
            continue
        exact[view] = name
        shared = _storage_key(t) in storages
        storages.add(_storage_key(t))
        t = t.cpu()
        tensors[name] = t.clone() if shared or not t.is_contiguous() else t
    # a CPU tensor still sharing memory with an earlier one (e.g. a slice of a
    # bigger buffer) must be copied so safetensors sees disjoint storage
    seen: set[int] = set()
    for name, t in tensors.items():
        if t.numel() == 0:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            tensors[name] = t.clone()
            ptr = tensors[name].untyped_storage().data_ptr()
        seen.add(ptr)
    meta = dict(metadata or {})
    if aliases:
        meta[_ALIAS_KEY] = json.dumps(aliases)
    meta[_ORDER_KEY] = json.dumps(list(state_dict))
    return safetensors.torch.save(tensors, metadata=meta or None)


def _parse_safetensors(data: bytes, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        tensors = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{where}: not a valid safetensors file ({e})") from None
    return tensors, metadata


def safetensors_to_state_dict(data: bytes, where: str = "safetensors data") -> dict[str, torch.Tensor]:
    """Inverse of state_dict_to_safetensors: aliases point at the same tensor again."""
    tensors, metadata = _parse_safetensors(data, where)
    for alias, target in json.loads(metadata.get(_ALIAS_KEY, "{}")).items():
        if target not in tensors:
            raise CheckpointError(f"{where}: alias {alias!r} points at missing tensor {target!r}")
        tensors[alias] = tensors[target]
    # safetensors returns tensors in a per-process hash order; the state dict's own order is
    # restored so every rank walks the keys alike (FSDP loads issue one collective per key)
    order = [k for k in json.loads(metadata.get(_ORDER_KEY, "[]")) if k in tensors]
    order += sorted(k for k in tensors if k not in set(order))
    return {k: tensors[k] for k in order}


# ------------------------------------------------------------ optimizer state

def flatten_optimizer_state(osd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (keys state.{param}.{name})
    and a JSON-able rest. `param` is the state key (an int index, or for
    FSDP full state dicts a parameter name; those get a running number)."""
    tensors: dict[str, torch.Tensor] = {}
    state_meta = []
    for i, (key, entry) in enumerate(osd.get("state", {}).items()):
        tag = str(key) if isinstance(key, int) else f"n{i}"
        item: dict[str, Any] = {"key": key, "tensors": {}, "values": {}}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tkey = f"state.{tag}.{name}"
                tensors[tkey] = value.detach().cpu().contiguous()
                item["tensors"][name] = tkey
            else:
                item["values"][name] = value
        state_meta.append(item)
    groups = []
    for g, group in enumerate(osd.get("param_groups", [])):
        plain: dict[str, Any] = {}
        for name, value in group.items():
            if isinstance(value, torch.Tensor):  # e.g. lr as a tensor (capturable optimizers)
                tkey = f"param_groups.{g}.{name}"
                tensors[tkey] = value.detach().cpu().contiguous()
                plain[name] = {"__tensor__": tkey}
            elif isinstance(value, tuple):
                plain[name] = {"__tuple__": list(value)}
            else:
                plain[name] = value
        groups.append(plain)
    return tensors, {"state": state_meta, "param_groups": groups}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    def restore(value: Any) -> Any:
        if isinstance(value, dict) and "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if isinstance(value, dict) and "__tuple__" in value:
            return tuple(value["__tuple__"])
        return value

    state = {}
    for item in meta["state"]:
        entry = {name: tensors[tkey] for name, tkey in item["tensors"].items()}
        entry.update(item["values"])
        state[item["key"]] = entry
    groups = [{name: restore(v) for name, v in group.items()} for group in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------ RNG state

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch CPU and CUDA, numpy's and python's
    global generators, as tensors plus a JSON-able remainder."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss_next = random.getstate()
    tensors["python_state"] = torch.tensor(py_state, dtype=torch.int64)
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "gauss_next": gauss_next}}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            torch.cuda.set_rng_state(states[0])
    n = meta["numpy"]
    np.random.set_state((n["kind"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(int(x) for x in tensors["python_state"].tolist()), p["gauss_next"]))


def rng_state_bytes() -> bytes:
    """This process's RNG state as one safetensors blob (for gathering across ranks)."""
    tensors, meta = rng_state()
    return safetensors.torch.save(tensors, metadata={"rng": json.dumps(meta)})


def _merge_rng_blobs(blobs: list[bytes]) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"world_size": len(blobs)}
    for rank, blob in enumerate(blobs):
        t, m = _parse_safetensors(blob, f"rng state of rank {rank}")
        tensors.update({f"rank{rank}.{k}": v for k, v in t.items()})
        meta[f"rank{rank}"] = json.loads(m["rng"])
    return safetensors.torch.save(tensors, metadata={"rng": json.dumps(meta)})


def restore_rng_from_bytes(data: bytes, rank: int = 0, where: str = "rng.safetensors") -> bool:
    """Restore this rank's RNG states from rng.safetensors bytes. Returns False
    (and changes nothing) when the checkpoint has no state for this rank (it
    was written with fewer processes)."""
    tensors, metadata = _parse_safetensors(data, where)
    meta = json.loads(metadata.get("rng", "{}"))
    if f"rank{rank}" not in meta:
        return False
    prefix = f"rank{rank}."
    set_rng_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, meta[f"rank{rank}"])
    return True


__all__ = ["CheckpointError", "state_dict_to_safetensors", "safetensors_to_state_dict", "flatten_optimizer_state",
           "unflatten_optimizer_state", "rng_state", "set_rng_state", "rng_state_bytes", "restore_rng_from_bytes"]

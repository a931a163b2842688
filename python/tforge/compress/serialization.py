"""Saving and loading compressed models as safetensors, all or nothing.

The file holds the model's state_dict (tied weights stored once, aliases in
the header, as tforge checkpoints do) and, in its metadata, every compressed
module with its options, so `load_compressed` can rebuild the same module tree
from the float model's architecture:

    Int8Linear    {"type", "in", "out", "bias", "activations", "smooth"}
    SparseLinear  {"type", "in", "out", "bias", "n", "m", "packed", "dtype", "dense_dtype"}
                  packed: values (dtype float or int8, + fp32 scale) and uint8 meta;
                  else the training form: weight (dense_dtype) and a bool mask

Loading checks, before the model is touched or anything sized by the file is
allocated: the header's bounds, every compressed module against the Linear it
replaces (features, bias, dtype), and every tensor's dtype and shape against
what the rebuilt model expects (no cast: an int32 weight is refused, not
wrapped into int8), then the values that kernels trust (2:4 metadata with
i0 < i1 and zero padding, finite non-negative scales, 0/1 masks). Only then are
the modules swapped and the tensors copied in. No pickle is involved.

Files saved before a module of the model was renamed load too: a module may declare
``legacy_keys`` ({earlier prefix: current prefix}, relative to it, as tforge's BertAttention
does for attention.output.dense -> attention.self.o), and the file's tensor keys and module
names are read through that map, as the module's load_state_dict pre-hook reads state dicts.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from tforge.nn.int8_linear import Int8Linear
from tforge.nn.sparse_linear import SparseLinear

_KEY = "tforge.compressed_modules"
_FORMAT_KEY = "tforge.compressed_format"
_FORMAT = "2"
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_DTYPE_NAMES = {str(d).replace("torch.", ""): d for d in _DTYPES.values()}
_PACKED_DTYPES = ("float32", "bfloat16", "float16", "int8")


class CompressedFileError(ValueError):
    """A compressed-model file that does not fit the target model (or is damaged)."""


def _layout_of(mod: torch.nn.Module) -> Optional[dict[str, Any]]:
    if isinstance(mod, Int8Linear):
        return {"type": "Int8Linear", "in": mod.in_features, "out": mod.out_features, "bias": mod.bias is not None,
                "activations": mod.activations, "smooth": mod.smooth is not None}
    if isinstance(mod, SparseLinear):
        dense = str(mod._dense_dtype).replace("torch.", "")
        if mod.is_packed:
            dtype = str(mod.values.dtype).replace("torch.", "")
        else:
            dtype = dense = str(mod.weight.dtype).replace("torch.", "")
        return {"type": "SparseLinear", "in": mod.in_features, "out": mod.out_features, "bias": mod.bias is not None,
                "n": mod.n, "m": mod.m, "packed": mod.is_packed, "dtype": dtype, "dense_dtype": dense}
    return None


def compressed_layout(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: layout} of the model's Int8Linear and SparseLinear modules."""
    return {name: lay for name, mod in model.named_modules() if (lay := _layout_of(mod)) is not None}


def save_compressed(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write the model's tensors and compressed-module layout to `path` (safetensors), atomically."""
    from tforge.train.checkpoint import _write_bytes, state_dict_to_safetensors
    path = Path(path)
    data = state_dict_to_safetensors(model.state_dict(), metadata={_KEY: json.dumps(compressed_layout(model)),
                                                                   _FORMAT_KEY: _FORMAT})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- checks before loading

def _header(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, str], int]:
    if len(data) < 8:
        raise CompressedFileError(f"{where}: {len(data)} bytes, too short for a safetensors file (truncated?)")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, _MAX_HEADER):
        raise CompressedFileError(f"{where}: header length {n} exceeds the file's {len(data)} bytes (truncated?)")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise CompressedFileError(f"{where}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CompressedFileError(f"{where}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CompressedFileError(f"{where}: the safetensors metadata is not a JSON object")
    return header, meta, len(data) - 8 - n


def _check_layout(name: str, lay: Any, target: Optional[torch.nn.Module], where: str) -> None:
    def bad(why: str) -> CompressedFileError:
        return CompressedFileError(f"{where}: compressed module {name!r}: {why}")
    if not isinstance(lay, dict) or lay.get("type") not in ("Int8Linear", "SparseLinear"):
        raise bad(f"unknown layout {lay!r}")
    if target is None:
        raise bad("the model has no such module")
    if not isinstance(target, (torch.nn.Linear, type_of(lay))):
        raise bad(f"the model's module there is a {type(target).__name__}, not a Linear")
    for key in ("in", "out"):
        if isinstance(lay.get(key), bool) or not isinstance(lay.get(key), int):
            raise bad(f"{key!r} must be an integer, got {lay.get(key)!r}")
    if (lay["in"], lay["out"]) != (target.in_features, target.out_features):
        raise bad(f"{lay['in']} -> {lay['out']} features, but the model's Linear has {target.in_features} -> "
                  f"{target.out_features}")
    if lay.get("bias") is not (target.bias is not None):
        raise bad(f"bias={lay.get('bias')!r}, but the model's Linear has bias={target.bias is not None}")
    if lay["type"] == "Int8Linear":
        if lay.get("activations") not in ("int8", "fp") or not isinstance(lay.get("smooth"), bool):
            raise bad(f"bad Int8Linear options activations={lay.get('activations')!r}, smooth={lay.get('smooth')!r}")
        return
    if not isinstance(lay.get("packed"), bool) or lay.get("dense_dtype") not in _PACKED_DTYPES[:3]:
        raise bad(f"bad SparseLinear options packed={lay.get('packed')!r}, dense_dtype={lay.get('dense_dtype')!r}")
    if lay.get("dtype") not in (_PACKED_DTYPES if lay["packed"] else (lay["dense_dtype"],)):
        raise bad(f"bad SparseLinear value dtype {lay.get('dtype')!r}")
    if lay["packed"] and (lay["in"] % 4 or (lay.get("n"), lay.get("m")) != (2, 4)):
        raise bad("the packed form needs 2:4 and in_features % 4 == 0")
    n, m = lay.get("n"), lay.get("m")
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m):
        raise bad(f"bad n:m = {n!r}:{m!r}")
    weight_dtype = getattr(getattr(target, "weight", None), "dtype", None)
    if weight_dtype is not None and _DTYPE_NAMES[lay["dense_dtype"]] != weight_dtype:
        raise bad(f"saved from a {lay['dense_dtype']} model, the target is {weight_dtype}")


def type_of(lay: dict) -> type:
    return Int8Linear if lay["type"] == "Int8Linear" else SparseLinear


def _expected(lay: dict) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """(dtype, shape) of each state_dict entry of the module a layout describes (nothing allocated)."""
    i, o = lay["in"], lay["out"]
    f32 = torch.float32
    if lay["type"] == "Int8Linear":
        out = {"weight": (torch.int8, (o, i)), "weight_scale": (f32, (o,))}
        if lay["bias"]:
            out["bias"] = (f32, (o,))
        if lay["smooth"]:
            out["smooth"] = (f32, (i,))
        return out
    dense = _DTYPE_NAMES[lay["dense_dtype"]]
    if lay["packed"]:
        from tforge.ops.sparse24 import meta_cols
        values = _DTYPE_NAMES[lay["dtype"]]
        out = {"values": (values, (o, i // 2)), "meta": (torch.uint8, (o, meta_cols(i)))}
        if values == torch.int8:
            out["scale"] = (f32, (o,))
    else:
        out = {"weight": (dense, (o, i)), "mask": (torch.bool, (o, i))}
    if lay["bias"]:
        out["bias"] = (dense, (o,))
    return out


def _check_values(name: str, t: torch.Tensor, lay: Optional[dict], where: str) -> None:
    """The values kernels trust without checking them on every call."""
    leaf = name.rpartition(".")[2]
    if lay is None:
        return
    if leaf == "meta" and lay["type"] == "SparseLinear":
        from tforge.ops.sparse24 import _positions
        i0, i1 = _positions(t, lay["in"])
        bad = i0 >= i1  # backends disagree on such groups (the kernels assume i0 < i1)
        if bool(bad.any()):
            row, group = (int(x) for x in bad.nonzero()[0])
            raise CompressedFileError(f"{where}: {name}: corrupt 2:4 metadata at row {row}, group {group} "
                                      f"(positions {int(i0[row, group])}, {int(i1[row, group])}; need i0 < i1)")
        if (lay["in"] // 4) % 2 and bool((t[:, -1] >> 4).any()):
            raise CompressedFileError(f"{where}: {name}: the padding nibble of the last metadata byte is not 0")
    elif leaf in ("scale", "weight_scale", "smooth") and t.is_floating_point():
        ok = torch.isfinite(t) & ((t > 0) if leaf == "smooth" else (t >= 0))
        if not bool(ok.all()):
            raise CompressedFileError(f"{where}: {name}: {int((~ok).sum())} value(s) are not finite and "
                                      f"{'positive' if leaf == 'smooth' else 'non-negative'}")
    elif leaf == "mask" and t.dtype == torch.bool and bool((t.view(torch.uint8) > 1).any()):
        raise CompressedFileError(f"{where}: {name}: bool mask bytes other than 0 and 1")


def _plan(model: torch.nn.Module, header: dict, meta: dict, data_bytes: int, where: str) -> dict:
    """Check the whole file against the model; returns {module name: layout} to apply."""
    if _KEY not in meta:
        raise CompressedFileError(f"{where} was not written by tforge.compress.save_compressed")
    try:
        layout = json.loads(meta[_KEY])
        aliases = json.loads(meta.get("tforge.aliases", "{}"))
    except ValueError as e:
        raise CompressedFileError(f"{where}: bad layout metadata ({e})") from None
    if not isinstance(layout, dict) or not isinstance(aliases, dict):
        raise CompressedFileError(f"{where}: bad layout metadata (not JSON objects)")
    modules = dict(model.named_modules())
    expected = {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}
    for name, lay in layout.items():
        _check_layout(name, lay, modules.get(name), where)
        prefix = name + "."
        expected = {k: v for k, v in expected.items() if not k.startswith(prefix)}
        expected.update({prefix + k: v for k, v in _expected(lay).items()})
    for key, info in header.items():
        if key not in expected:
            raise CompressedFileError(f"{where}: tensor {key!r} has no place in the model")
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPES or not isinstance(info.get("shape"), list):
            raise CompressedFileError(f"{where}: tensor {key!r}: bad header entry {info!r}")
        dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
        if (dtype, shape) != expected[key]:
            want = expected[key]
            raise CompressedFileError(f"{where}: tensor {key!r} is {str(dtype)[6:]} {shape}, the model needs "
                                      f"{str(want[0])[6:]} {want[1]}")
        offsets = info.get("data_offsets")
        numel = 1
        for s in shape:
            numel *= s
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_bytes
                and offsets[1] - offsets[0] == numel * dtype.itemsize):
            raise CompressedFileError(f"{where}: tensor {key!r}: data offsets {offsets!r} do not fit "
                                      f"{numel} x {dtype.itemsize} bytes within the file (truncated?)")
    for alias, target in aliases.items():
        if target not in header or expected.get(alias) != expected.get(target):
            raise CompressedFileError(f"{where}: alias {alias!r} -> {target!r} does not fit the model")
    missing = [k for k in expected if k not in header and k not in aliases and not k.endswith("inv_freq")]
    if missing:
        raise CompressedFileError(f"{where}: the file lacks {len(missing)} tensor(s) of the model, e.g. "
                                  f"{missing[:3]}")
    return layout


# ---------------------------------------------------------------- earlier names

def _legacy_renamer(model: torch.nn.Module):
    """key -> the model's current name for it, from the legacy_keys its modules declare (None: none do).
    Works on tensor keys and on module names (which have no trailing dot)."""
    prefixes = []
    for name, mod in model.named_modules():
        legacy = getattr(mod, "legacy_keys", None)
        if isinstance(legacy, dict):
            here = name + "." if name else ""
            prefixes += [(here + old, here + new) for old, new in legacy.items()]
    if not prefixes:
        return None

    def rename(key: str) -> str:
        dotted = key + "."
        for old, new in prefixes:
            if dotted.startswith(old):
                return (new + dotted[len(old):])[:-1]
        return key
    return rename


def _rename_file_keys(rename, header: dict, meta: dict, where: str) -> tuple[dict, dict]:
    """The header and metadata with every tensor key, layout module name and alias under its current
    name (metadata that does not parse is left for _plan to report)."""
    renamed = {}
    for key, info in header.items():
        new = rename(key)
        if new in renamed:
            raise CompressedFileError(f"{where}: tensor {new!r} is in the file under its current and its "
                                      f"earlier name")
        renamed[new] = info
    meta = dict(meta)
    try:
        layout = json.loads(meta[_KEY]) if _KEY in meta else None
        aliases = json.loads(meta.get("tforge.aliases", "{}"))
    except (ValueError, TypeError):
        return renamed, meta
    if isinstance(layout, dict):
        meta[_KEY] = json.dumps({rename(k): v for k, v in layout.items()})
    if isinstance(aliases, dict) and aliases:
        meta["tforge.aliases"] = json.dumps({rename(k): rename(v) if isinstance(v, str) else v
                                             for k, v in aliases.items()})
    return renamed, meta


# ---------------------------------------------------------------- loading

def load_compressed_bytes(model: torch.nn.Module, data: bytes, where: str = "compressed model") -> torch.nn.Module:
    """load_compressed from the file's bytes (already read, e.g. checked against a manifest)."""
    import safetensors.torch
    header, meta, data_bytes = _header(data, where)
    rename = _legacy_renamer(model)
    if rename is not None:
        header, meta = _rename_file_keys(rename, header, meta, where)
    layout = _plan(model, header, meta, data_bytes, where)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors' own error types
        raise CompressedFileError(f"{where}: not a valid safetensors file ({e})") from None
    if rename is not None:
        tensors = {rename(k): t for k, t in tensors.items()}
    for alias, target in json.loads(meta.get("tforge.aliases", "{}")).items():
        tensors[alias] = tensors[target]
    owners = {name + ".": lay for name, lay in layout.items()}
    for key, t in tensors.items():
        owner = next((lay for p, lay in owners.items() if key.startswith(p) and "." not in key[len(p):]), None)
        _check_values(key, t, owner, where)
    # everything checked: now swap the modules and copy the tensors in
    originals = {}
    try:
        with torch.random.fork_rng(devices=[]):  # building modules must not move the caller's RNG
            for name, lay in layout.items():
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                old = getattr(parent, child)
                device = next((t.device for t in old.parameters()), None)
                originals[name] = (parent, child, old)
                setattr(parent, child, _build(lay, device))
        model.load_state_dict(tensors, strict=False)
    except Exception:
        for parent, child, old in originals.values():
            setattr(parent, child, old)
        raise
    return model


def _build(lay: dict, device) -> torch.nn.Module:
    if lay["type"] == "Int8Linear":
        return Int8Linear(lay["in"], lay["out"], bias=lay["bias"], activations=lay["activations"],
                          smooth=lay["smooth"], device=device)
    dense = _DTYPE_NAMES[lay["dense_dtype"]]
    if lay["packed"]:
        return SparseLinear(lay["in"], lay["out"], bias=lay["bias"], device=device, dtype=dense, packed=True,
                            weight_dtype=_DTYPE_NAMES[lay["dtype"]])
    return SparseLinear(lay["in"], lay["out"], bias=lay["bias"], device=device, dtype=dense, n=lay["n"], m=lay["m"],
                        mask_init="dense")


def load_compressed(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the compressed modules recorded in `path` inside `model` (a float model of the
    same architecture) and load every tensor; returns the model. All or nothing: on any
    mismatch CompressedFileError (a ValueError) is raised and the model is unchanged. When a
    manifest.json beside the file lists it (tforge exports), its sha256 is checked too."""
    from tforge.train.checkpoint import MANIFEST
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_compressed: no such file {path}")
    manifest = path.parent / MANIFEST
    if manifest.is_file() and path.name in manifest.read_text(errors="replace"):
        from tforge.train.runfolder import read_verified_export
        data = read_verified_export(path.parent, path.name)
    else:
        data = path.read_bytes()
    return load_compressed_bytes(model, data, str(path))


__all__ = ["save_compressed", "load_compressed", "load_compressed_bytes", "compressed_layout", "CompressedFileError"]

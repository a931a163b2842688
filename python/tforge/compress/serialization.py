"""Saving and loading compressed models as safetensors.

The file holds the full state_dict (int8 weights and scales included) and, in
its metadata, which modules are tforge Int8Linear and with which options, so
`load_compressed` can rebuild the same module tree from the float model's
architecture and load the tensors exactly. No pickle is involved.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from tforge.nn.int8_linear import Int8Linear

_KEY = "tforge.compressed_modules"


def save_compressed(model: torch.nn.Module, path: str) -> None:
    """Write model's tensors and its compressed-module layout to `path` (safetensors)."""
    layout = {}
    for name, mod in model.named_modules():
        if isinstance(mod, Int8Linear):
            layout[name] = {"type": "Int8Linear", "in": mod.in_features, "out": mod.out_features,
                            "bias": mod.bias is not None, "activations": mod.activations,
                            "smooth": mod.smooth is not None}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Tied weights share storage; safetensors refuses aliases, so store copies.
    tensors = {k: v.clone() for k, v in tensors.items()}
    save_file(tensors, path, metadata={_KEY: json.dumps(layout)})


def load_compressed(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Rebuild the compressed modules recorded in `path` inside `model` (a float model of the
    same architecture) and load every tensor; returns the model."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if _KEY not in meta:
        raise ValueError(f"load_compressed: {path} was not written by tforge.compress.save_compressed")
    layout = json.loads(meta[_KEY])
    for name, spec in layout.items():
        if spec.get("type") != "Int8Linear":
            raise ValueError(f"load_compressed: unknown module type {spec.get('type')!r} for {name}")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(spec["in"], spec["out"], bias=spec["bias"], activations=spec["activations"],
                                          smooth=spec["smooth"]))
    state = load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("inv_freq")]:
        raise ValueError(f"load_compressed: checkpoint does not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model

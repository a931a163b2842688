"""sparsify_'s layer selection: which nn.Linear layers get pruned (and why the others are skipped),
swapping a module in by name, and finding the model's list of repeated blocks."""
from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Iterable, Optional

import torch

if TYPE_CHECKING:
    from tforge.compress.sparsify import Sparse24Config


def _matches(name: str, patterns: Iterable[str]) -> Optional[str]:
    last = name.rpartition(".")[2]
    for p in patterns:
        if fnmatch.fnmatch(name, p) or fnmatch.fnmatch(last, p):
            return p
    return None


def _select(model: torch.nn.Module, config: Sparse24Config) -> tuple[dict, dict]:
    """({name: nn.Linear to prune}, {name: reason skipped})."""
    selected, skipped = {}, {}
    parents = {name: mod for name, mod in model.named_modules()}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        parent = parents.get(name.rpartition(".")[0]) if "." in name else model
        pattern = _matches(name, config.skip)
        if pattern is not None:
            skipped[name] = f"matches skip pattern {pattern!r}"
        elif isinstance(parent, torch.nn.MultiheadAttention):
            skipped[name] = "inside nn.MultiheadAttention, which reads the weight directly (no forward call)"
        elif config.structured and mod.in_features % config.m != 0:
            skipped[name] = f"in_features % m != 0 ({mod.in_features} is not a multiple of {config.m})"
        elif not mod.weight.is_floating_point():
            skipped[name] = f"weight dtype {mod.weight.dtype} is not floating point"
        else:
            selected[name] = mod
    return selected, skipped


def _set_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def find_blocks(model: torch.nn.Module) -> Optional[tuple[str, torch.nn.ModuleList]]:
    """(name, list) of the model's repeated blocks: the nn.ModuleList whose children all share one type,
    contain an nn.Linear, and hold the most parameters (ties: more children). None when there is none."""
    best, best_key = None, None
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0 or len({type(c) for c in mod}) != 1:
            continue
        if not any(isinstance(s, torch.nn.Linear) for s in mod.modules()):
            continue
        key = (sum(p.numel() for p in mod.parameters()), len(mod))
        if best_key is None or key > best_key:
            best, best_key = (name, mod), key
    return best

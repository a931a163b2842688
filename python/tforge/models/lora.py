"""apply_lora / merge_lora: put tforge.nn.LoRALinear adapters on a model's
projections by name pattern, freeze everything else, and fold them back.

Target patterns (fnmatch) are tried against a Linear's full name, its last name
component and the role tforge's models give it: "o" (attention output), "fc" and
"proj" (MLP in / out). Fused projections declare their output segments: the
attention's qkv Linear has segments "q", "k", "v" (HF spellings "query", "key",
"value", "q_proj", ... also work), so targets=("q", "v") adapts only the q and v
blocks of the fused qkv, each with its own rank-r pair, as separate q/v Linears would.
"""
from __future__ import annotations

from fnmatch import fnmatch
from typing import List, Sequence, Union

import torch

from tforge.nn.lora import LoRALinear

_ALIASES = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v",
            "o_proj": "o", "out_proj": "o", "output": "o"}
_ATTRS = ("lora_segments", "lora_role")  # tags tforge's models put on their Linear modules


def _as_patterns(name: str, patterns: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name}: patterns must be non-empty strings, got {patterns!r}")
    return patterns


def _hit(patterns: List[str], *names) -> bool:
    return any(n is not None and (fnmatch(n, p) or _ALIASES.get(p) == n) for p in patterns for n in names)


def param_matches(name: str, patterns: Sequence[str]) -> bool:
    """Does a parameter name match any pattern (the pattern itself, or as a module prefix/component)?"""
    return any(fnmatch(name, p) or fnmatch(name, p + ".*") or fnmatch(name, "*." + p + ".*") for p in patterns)


def _set_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def apply_lora(model: torch.nn.Module, rank: int = 8, alpha: float = 16.0,
               targets: Union[str, Sequence[str]] = ("q", "k", "v", "o"), dropout: float = 0.0,
               train_extra: Union[str, Sequence[str]] = ()) -> List[str]:
    """Replace every nn.Linear matching ``targets`` by a LoRALinear(rank, alpha, dropout) and freeze
    all parameters except the adapters and those matching ``train_extra`` (e.g. "classifier").
    Returns the names of the adapted modules; raises ValueError when nothing matches."""
    patterns = _as_patterns("apply_lora: targets", targets)
    extra = _as_patterns("apply_lora: train_extra", train_extra) if train_extra else []
    wrapped = {id(m.base) for m in model.modules() if isinstance(m, LoRALinear)}  # already adapted
    plan = []
    for name, mod in model.named_modules():
        if type(mod) is not torch.nn.Linear or id(mod) in wrapped:  # not quantised or sparse subclasses
            continue
        leaf = name.rpartition(".")[2]
        segments = getattr(mod, "lora_segments", None)
        if _hit(patterns, name, leaf, getattr(mod, "lora_role", None)):
            plan.append((name, mod, None, None))
        elif segments is not None:
            active = [_hit(patterns, seg) for seg, _ in segments]
            if any(active):
                sizes = [size for _, size in segments]
                plan.append((name, mod, sizes, active) if not all(active) else (name, mod, None, None))
    if not plan:
        linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
        raise ValueError(f"apply_lora: no Linear module matches targets {patterns}; Linear modules are "
                         f"{linears[:12]}{' ...' if len(linears) > 12 else ''}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, mod, sizes, active in plan:
        _set_module(model, name, LoRALinear(mod, rank, alpha, dropout, segments=sizes, active=active))
    if extra:
        matched = False
        for pname, p in model.named_parameters():
            if param_matches(pname, extra):
                p.requires_grad_(True)
                matched = True
        if not matched:
            raise ValueError(f"apply_lora: train_extra {extra} matches no parameter")
    return [name for name, *_ in plan]


@torch.no_grad()
def merge_lora(model: torch.nn.Module) -> List[str]:
    """Fold every LoRALinear in ``model`` into a plain nn.Linear, in place (the merged weights stay
    frozen, as the base weights were). Returns the names of the merged modules."""
    names = [name for name, mod in model.named_modules() if isinstance(mod, LoRALinear)]
    for name in names:
        lora = model.get_submodule(name)
        merged = lora.merge()
        merged.requires_grad_(False)
        for attr in _ATTRS:
            if hasattr(lora.base, attr):
                setattr(merged, attr, getattr(lora.base, attr))
        _set_module(model, name, merged)
    return names


def lora_parameters(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The adapters' parameters (lora_A, lora_B of every LoRALinear)."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]

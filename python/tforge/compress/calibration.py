"""Calibration: run a model on sample batches and record, per nn.Linear, the
per-input-channel max |activation| (for SmoothQuant) and the sum of squares
(for Wanda-style pruning), plus which norm module produced each Linear's input
(so smoothing factors can be folded into that norm's weight and bias).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Iterable

import torch

_NORM_TYPES = (torch.nn.LayerNorm,)


def is_norm(mod: torch.nn.Module) -> bool:
    """LayerNorm / RMSNorm-like modules whose output is linear in (weight, bias)."""
    return isinstance(mod, _NORM_TYPES) or type(mod).__name__.endswith(("LayerNorm", "RMSNorm"))


@dataclasses.dataclass
class LinearStats:
    absmax: torch.Tensor        # (in_features,) fp32
    sq_sum: torch.Tensor        # (in_features,) fp32, sum of x^2 over tokens
    tokens: int = 0
    source_norm: str | None = None  # name of the norm whose output is this Linear's input (all batches)


def select_linears(model: torch.nn.Module, skip: Iterable[str] = ()) -> dict[str, torch.nn.Linear]:
    """nn.Linear modules by qualified name, minus those matching a `skip` pattern (fnmatch)."""
    skip = list(skip)
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and not any(fnmatch.fnmatch(name, p) for p in skip)}


def run_batch_output(model: torch.nn.Module, batch):
    """model(batch) for a kwargs dict, an args tuple/list or a single tensor."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def run_batch(model: torch.nn.Module, batch) -> None:
    run_batch_output(model, batch)


@torch.no_grad()
def collect_linear_stats(model: torch.nn.Module, linears: dict[str, torch.nn.Linear], calib_data,
                         max_batches: int | None = None) -> dict[str, LinearStats]:
    """Run `calib_data` (an iterable of batches: dicts of kwargs, tuples of args, or a tensor)
    through `model` and gather LinearStats for each Linear in `linears`."""
    stats: dict[str, LinearStats] = {}
    norm_outputs: dict[int, str] = {}  # data_ptr of a norm output in the current batch -> norm name
    links: dict[str, set] = {name: set() for name in linears}
    hooks = []

    def norm_hook(name):
        def hook(mod, inputs, output):
            if isinstance(output, torch.Tensor):
                norm_outputs[output.data_ptr()] = name
        return hook

    def linear_hook(name):
        def hook(mod, inputs):
            x = inputs[0].detach()
            flat = x.reshape(-1, x.shape[-1]).float()
            st = stats.get(name)
            if st is None:
                st = stats[name] = LinearStats(torch.zeros(flat.shape[1], device=flat.device),
                                               torch.zeros(flat.shape[1], device=flat.device))
            torch.maximum(st.absmax, flat.abs().amax(0), out=st.absmax)
            st.sq_sum += flat.square().sum(0)
            st.tokens += flat.shape[0]
            links[name].add(norm_outputs.get(x.data_ptr()))
        return hook

    for name, mod in model.named_modules():
        if is_norm(mod):
            hooks.append(mod.register_forward_hook(norm_hook(name)))
    for name, mod in linears.items():
        hooks.append(mod.register_forward_pre_hook(linear_hook(name)))
    was_training = model.training
    model.eval()
    try:
        n = 0
        for batch in calib_data:
            if max_batches is not None and n >= max_batches:
                break
            norm_outputs.clear()
            run_batch(model, batch)
            n += 1
        if n == 0:
            raise ValueError("calibration: calib_data yielded no batches")
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, st in stats.items():
        srcs = links[name]
        st.source_norm = next(iter(srcs)) if len(srcs) == 1 and None not in srcs else None
    missing = [n for n in linears if n not in stats]
    if missing:
        raise ValueError(f"calibration: these Linear layers never ran on calib_data: {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}")
    return stats

"""quantize_(model, Int8Config(...), calib_data=...): replace nn.Linear layers
in place with tforge.nn.Int8Linear, optionally with SmoothQuant.

SmoothQuant moves activation outliers into the weights: per input channel j,
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); X' = X / s, W' = W * s. When a
Linear's input is the output of a LayerNorm/RMSNorm (found during calibration),
1/s is folded into that norm's weight and bias, shared by every Linear the norm
feeds (e.g. q, k, v), provided the float model's output is unchanged by the
fold (it is not when the norm output also feeds a residual, as in post-norm
BERT). Every other Linear divides its input by s at run time.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from typing import Iterable, Optional

import torch

from tforge.compress.calibration import collect_linear_stats, select_linears
from tforge.nn.int8_linear import Int8Linear


@dataclasses.dataclass
class Int8Config:
    smoothquant_alpha: Optional[float] = 0.5  # None: no smoothing
    activations: str = "int8"                 # "int8" (W8A8) or "fp" (weight-only)
    skip: tuple = ()                           # fnmatch patterns of Linear names to keep in floating point
    max_calib_batches: Optional[int] = None
    backend: Optional[str] = None

    def __post_init__(self):
        if self.smoothquant_alpha is not None and not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ValueError(f"Int8Config: smoothquant_alpha must be in [0, 1] or None, got {self.smoothquant_alpha}")
        if self.activations not in ("int8", "fp"):
            raise ValueError(f"Int8Config: activations must be 'int8' or 'fp', got {self.activations!r}")


def _set_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _output(model, batch):
    from tforge.compress.calibration import run_batch_output
    return run_batch_output(model, batch)


def _close(a, b) -> bool:
    """Do two model outputs (tensors, or tuples/dicts/ModelOutputs of them) agree to fp32 noise?"""
    if isinstance(a, torch.Tensor):
        scale = a.detach().float().abs().max().clamp_min(1e-6)
        return bool(((a.detach().float() - b.detach().float()).abs().max() / scale) < 1e-4)
    if isinstance(a, dict):
        return all(_close(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    if isinstance(a, (tuple, list)):
        return all(_close(x, y) for x, y in zip(a, b) if isinstance(x, torch.Tensor))
    return True


@torch.no_grad()
def _smoothing(model, linears, stats, alpha, probe_batch) -> tuple[dict, dict]:
    """SmoothQuant factors per Linear. A norm whose output feeds only Linears takes 1/s
    into its weight and bias (checked: the float model's output must not change, which
    fails e.g. for post-norm BERT where the norm output is also the residual); other
    Linears divide their input by s at run time (Int8Linear.smooth).
    Returns ({linear: norm folded into}, {linear: s kept at run time})."""
    groups: dict[str, list[str]] = {}
    for name, st in stats.items():
        groups.setdefault(st.source_norm or f"<none>:{name}", []).append(name)
    reference = _output(model, probe_batch) if probe_batch is not None else None
    folded, runtime = {}, {}
    for key, names in groups.items():
        act_max = torch.stack([stats[n].absmax for n in names]).amax(0)
        w_max = torch.stack([linears[n].weight.detach().abs().amax(0).float() for n in names]).amax(0)
        s = (act_max.clamp_min(1e-5) ** alpha / w_max.clamp_min(1e-5).to(act_max.device) ** (1 - alpha)).clamp_min(1e-5)
        norm = None if key.startswith("<none>:") else model.get_submodule(key)
        weight = getattr(norm, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.dim() == 1 and reference is not None:
            bias = getattr(norm, "bias", None)
            saved = [t.detach().clone() for t in [weight] + [linears[n].weight for n in names]]
            saved_bias = bias.detach().clone() if isinstance(bias, torch.Tensor) else None
            weight.div_(s.to(weight))
            if saved_bias is not None:
                bias.div_(s.to(bias))
            for n in names:
                linears[n].weight.mul_(s.to(linears[n].weight)[None, :])
            if _close(reference, _output(model, probe_batch)):
                folded.update({n: key for n in names})
                continue
            weight.copy_(saved[0])  # not a pure Linear feeder: undo
            if saved_bias is not None:
                bias.copy_(saved_bias)
            for n, w in zip(names, saved[1:]):
                linears[n].weight.copy_(w)
        runtime.update({n: s for n in names})
    return folded, runtime


def quantize_(model: torch.nn.Module, config: Int8Config | None = None, calib_data: Optional[Iterable] = None
              ) -> dict:
    """Quantise `model`'s nn.Linear layers to Int8Linear in place, and its 2:4 SparseLinear layers
    (from tforge.compress.sparsify_) to packed int8 2:4.

    calib_data (an iterable of batches the model accepts: kwargs dicts, arg tuples or tensors)
    is needed for SmoothQuant; without it, or with smoothquant_alpha=None, layers are quantised
    without smoothing. Returns a report: {"quantized": [...], "smoothed": {linear: norm}, "skipped": [...]}.
    """
    config = config or Int8Config()
    linears = select_linears(model, config.skip)
    all_linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    folded, runtime = {}, {}
    if config.smoothquant_alpha is not None and calib_data is not None:
        batches = list(calib_data) if config.max_calib_batches is None else \
            list(itertools.islice(calib_data, config.max_calib_batches))
        stats = collect_linear_stats(model, linears, batches)
        folded, runtime = _smoothing(model, linears, stats, config.smoothquant_alpha, batches[0])
    for name, lin in linears.items():
        _set_module(model, name, Int8Linear.from_float(lin, smooth=runtime.get(name), activations=config.activations,
                                                       backend=config.backend))
    sparse24 = _quantize_sparse24(model, config.skip)
    return {"quantized": list(linears), "smoothed": folded, "smoothed_at_runtime": sorted(runtime),
            "skipped": [n for n in all_linears if n not in linears], "sparse24_int8": sparse24}


def _quantize_sparse24(model: torch.nn.Module, skip: tuple) -> list[str]:
    """2:4 layers from sparsify_ (SparseLinear with a 2:4 mask) become packed int8 2:4 (weight-only:
    per-channel int8 values, activations stay in floating point). Unstructured ones are left alone."""
    from tforge.nn.sparse_linear import SparseLinear, nm_violation

    done = []
    for name, mod in model.named_modules():
        if not isinstance(mod, SparseLinear) or any(fnmatch.fnmatch(name, p) for p in skip):
            continue
        if mod.is_packed:
            if mod.values.dtype == torch.int8:
                continue
            mod.unpack()
        if nm_violation(mod.mask, 2, 4) is None:
            mod.pack(weight_dtype=torch.int8)
            done.append(name)
    return done

"""quantize_(model, Int8Config(...), calib_data=...): replace nn.Linear layers
in place with tforge.nn.Int8Linear, optionally with SmoothQuant.

SmoothQuant moves activation outliers into the weights: per input channel j,
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); X' = X / s, W' = W * s. When a
Linear's input is the output of a LayerNorm/RMSNorm (found during calibration),
1/s is folded into that norm's weight and bias, shared by every Linear the norm
feeds (e.g. q, k, v). Linears fed by anything else are quantised unsmoothed.
"""
from __future__ import annotations

import dataclasses
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


@torch.no_grad()
def _fold_smoothing(model, linears, stats, alpha) -> dict[str, str]:
    """Fold SmoothQuant factors into norms; returns {linear name: norm name} for those smoothed."""
    groups: dict[str, list[str]] = {}
    for name, st in stats.items():
        if st.source_norm is not None:
            groups.setdefault(st.source_norm, []).append(name)
    smoothed = {}
    for norm_name, names in groups.items():
        norm = model.get_submodule(norm_name)
        weight = getattr(norm, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1:
            continue
        act_max = torch.stack([stats[n].absmax for n in names]).amax(0)
        w_max = torch.stack([linears[n].weight.detach().abs().amax(0).float() for n in names]).amax(0)
        s = (act_max.clamp_min(1e-5) ** alpha / w_max.clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)
        s = s.to(weight.device)
        weight.div_(s.to(weight.dtype))
        bias = getattr(norm, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.div_(s.to(bias.dtype))
        for n in names:
            linears[n].weight.mul_(s.to(linears[n].weight.dtype)[None, :])
            smoothed[n] = norm_name
    return smoothed


def quantize_(model: torch.nn.Module, config: Int8Config | None = None, calib_data: Optional[Iterable] = None
              ) -> dict:
    """Quantise `model`'s nn.Linear layers to Int8Linear in place.

    calib_data (an iterable of batches the model accepts: kwargs dicts, arg tuples or tensors)
    is needed for SmoothQuant; without it, or with smoothquant_alpha=None, layers are quantised
    without smoothing. Returns a report: {"quantized": [...], "smoothed": {linear: norm}, "skipped": [...]}.
    """
    config = config or Int8Config()
    linears = select_linears(model, config.skip)
    all_linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    smoothed = {}
    if config.smoothquant_alpha is not None and calib_data is not None:
        stats = collect_linear_stats(model, linears, calib_data, config.max_calib_batches)
        smoothed = _fold_smoothing(model, linears, stats, config.smoothquant_alpha)
    for name, lin in linears.items():
        _set_module(model, name, Int8Linear.from_float(lin, activations=config.activations, backend=config.backend))
    return {"quantized": list(linears), "smoothed": smoothed,
            "skipped": [n for n in all_linears if n not in linears]}

"""Hugging Face transformers integration.

``patch(model)`` swaps a model's LayerNorm / RMSNorm modules for tforge's in
place. The new modules share the original Parameter objects (so optimizers,
tied weights and state_dict keys are untouched). Each candidate is verified on
a small random input before it is swapped: norms whose math differs (e.g.
Gemma's ``1 + weight`` RMSNorm) are left alone and reported as skipped, never
silently changed.
"""
from __future__ import annotations

import dataclasses

import torch

from tforge.nn.norm import LayerNorm, RMSNorm


@dataclasses.dataclass
class PatchReport:
    replaced: dict[str, str]  # module path -> original class name
    skipped: dict[str, str]   # module path -> why it was left alone

    def __len__(self):
        return len(self.replaced)


def _rms_eps(mod) -> float | None:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        val = getattr(mod, attr, None)
        if isinstance(val, (float, int)):
            return float(val)
    return None


def _candidate(mod: torch.nn.Module, backend: str | None) -> torch.nn.Module | None:
    """A tforge module sharing `mod`'s parameters, or None if `mod` is no norm we know."""
    if isinstance(mod, (LayerNorm, RMSNorm)):
        return None
    w = getattr(mod, "weight", None)
    if isinstance(mod, torch.nn.LayerNorm):
        new = LayerNorm(mod.normalized_shape, eps=mod.eps, elementwise_affine=False, bias=False, backend=backend)
        new.elementwise_affine = mod.elementwise_affine
        new.weight, new.bias = mod.weight, mod.bias
        return new
    if isinstance(mod, torch.nn.RMSNorm):
        new = RMSNorm(mod.normalized_shape, eps=mod.eps, elementwise_affine=False, backend=backend)
        new.elementwise_affine = mod.elementwise_affine
        new.weight = mod.weight
        return new
    if type(mod).__name__.endswith("RMSNorm") and isinstance(w, torch.nn.Parameter) and w.dim() == 1:
        eps = _rms_eps(mod)
        if eps is None:
            return None
        new = RMSNorm(w.shape[0], eps=eps, elementwise_affine=False, backend=backend)
        new.elementwise_affine = True
        new.weight = w
        return new
    return None


@torch.no_grad()
def _agrees(old: torch.nn.Module, new: torch.nn.Module, shape: tuple) -> str | None:
    """None when both modules give the same output on a random input, else why not."""
    p = next(old.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    x = torch.randn(3, *shape, device=device, dtype=torch.float32).to(dtype)
    try:
        a, b = old(x), new(x)
    except Exception as exc:  # a norm we cannot serve (dtype, device): leave it
        return f"tforge could not run it: {exc}"
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    if not torch.allclose(a.float(), b.float(), atol=tol, rtol=tol):
        return f"outputs differ (max {(a.float() - b.float()).abs().max().item():.3g}); different math"
    return None


def patch(model: torch.nn.Module, *, backend: str | None = None, verify: bool = True) -> PatchReport:
    """Replace LayerNorm / RMSNorm modules of `model` in place with tforge.nn ones.

    Returns a PatchReport: ``replaced`` maps module paths to the original class
    names, ``skipped`` the norm-like modules left alone and why.
    """
    report = PatchReport({}, {})
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = _candidate(child, backend)
            if new is None:
                continue
            path = f"{name}.{child_name}" if name else child_name
            why = _agrees(child, new, tuple(new.normalized_shape)) if verify else None
            if why is not None:
                report.skipped[path] = why
                continue
            new.train(child.training)
            setattr(parent, child_name, new)
            report.replaced[path] = type(child).__name__
    return report

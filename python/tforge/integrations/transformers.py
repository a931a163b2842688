"""Hugging Face transformers integration.

``register()`` adds ``attn_implementation="tforge"`` to transformers' attention
registry (with SDPA's boolean masks), so BERT- and Llama-family models run
tforge.attention. ``patch(model)`` switches a loaded model to it and swaps its
LayerNorm / RMSNorm modules for tforge's in place. The new modules share the original Parameter objects (so optimizers,
tied weights and state_dict keys are untouched). Each candidate is verified on
a small random input before it is swapped: norms whose math differs (e.g.
Gemma's ``1 + weight`` RMSNorm) are left alone and reported as skipped, never
silently changed.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch

from tforge.nn.norm import LayerNorm, RMSNorm
from tforge.ops.attention import attention

ATTN_NAME = "tforge"


def tforge_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             is_causal=None, **kwargs):
    """transformers attention function: query (B, Hq, Sq, D), key/value (B, Hk, Sk, D);
    attention_mask a boolean (True = attend) or additive float mask broadcastable to
    (B, Hq, Sq, Sk), or None. Returns ((B, Sq, Hq, D), None) as SDPA's does."""
    if kwargs.get("output_attentions"):
        raise ValueError("tforge attention never materialises attention weights; use attn_implementation='eager'")
    if kwargs.get("softcap") is not None:
        raise ValueError("tforge attention does not support softcap")
    if dropout and module.training:
        warnings.warn("tforge attention has no attention-probability dropout; it runs without it", stacklevel=2)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    sq, sk = q.shape[1], k.shape[1]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    bias = None
    if attention_mask is not None:
        mask = attention_mask[..., :sk]
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))
        else:
            bias = mask
        causal = False  # the mask already holds the causal pattern
    elif causal and sq > 1 and sk > sq:
        # Prefill into an empty static cache: keys past sq are empty slots (SDPA does the same).
        k, v = k[:, :sq], v[:, :sq]
    out = attention(q, k, v, causal=causal and sq > 1, softmax_scale=scaling, attn_bias=bias)
    return out, None


def register() -> str:
    """Register attn_implementation="tforge" with transformers; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, tforge_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


@dataclasses.dataclass
class PatchReport:
    replaced: dict[str, str]  # module path -> original class name
    skipped: dict[str, str]   # module path -> why it was left alone
    attention: bool = False   # attn_implementation switched to "tforge"

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


def patch(model: torch.nn.Module, *, backend: str | None = None, verify: bool = True,
          attention: bool = True) -> PatchReport:
    """Replace LayerNorm / RMSNorm modules of `model` in place with tforge.nn ones
    and, when `attention` and the model supports it, switch it to
    attn_implementation="tforge".

    Returns a PatchReport: ``replaced`` maps module paths to the original class
    names, ``skipped`` the norm-like modules left alone and why.
    """
    report = PatchReport({}, {})
    if attention and hasattr(model, "set_attn_implementation"):
        register()
        model.set_attn_implementation(ATTN_NAME)
        report.attention = True
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

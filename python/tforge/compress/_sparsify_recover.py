"""After sparsify_: recover(model, data, steps) fine-tunes with every SparseLinear mask fixed, and
pack_(model) turns every 2:4 SparseLinear into its packed inference form."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from tforge.compress.calibration import run_batch_output
from tforge.nn.sparse_linear import SparseLinear, nm_violation


def _sparse_modules(model: torch.nn.Module) -> dict:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SparseLinear)}


def _default_loss(model, batch):
    out = run_batch_output(model, batch)
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, dict):
        loss = out.get("loss")
    if loss is None and isinstance(out, torch.Tensor) and out.dim() == 0:
        loss = out
    if not isinstance(loss, torch.Tensor):
        raise ValueError("recover: the model's output has no loss (no .loss / ['loss'] and not a scalar); "
                         "pass loss_fn(model, batch) -> scalar tensor")
    return loss


def recover(model: torch.nn.Module, data: Iterable, steps: int, lr: float = 1e-4,
            loss_fn: Optional[Callable] = None, weight_decay: float = 0.0, log_every: int = 10,
            progress: bool = True) -> list:
    """Fine-tune `model` for `steps` AdamW steps with every SparseLinear mask fixed; returns the loss of
    each step. data: an iterable of batches, cycled (re-iterated) when it runs out. Loss: loss_fn(model,
    batch) when given, else the model's own (out.loss, out["loss"], or a scalar output; HF models
    given labels). Checks at the end that every mask is unchanged and every pruned weight is zero."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"recover: steps must be a positive integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"recover: lr must be > 0, got {lr!r}")
    if log_every < 1:
        raise ValueError(f"recover: log_every must be >= 1, got {log_every!r}")
    sparse = _sparse_modules(model)
    if not sparse:
        raise ValueError("recover: the model has no SparseLinear layers; run sparsify_ first")
    masks = {name: mod.mask.clone() for name, mod in sparse.items() if not mod.is_packed}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("recover: the model has no parameters that require grad")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loss_fn = loss_fn or _default_loss
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc="recover", leave=False)
        except ImportError:  # tqdm is optional
            bar = None
    losses = []
    it = iter(data)
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(data)
                try:
                    batch = next(it)
                except StopIteration:
                    raise ValueError(f"recover: data ran out after {step} steps and cannot be re-iterated; "
                                     "pass a list or a DataLoader") from None
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                if step % log_every == 0 or step == steps - 1:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    for name, mask in masks.items():
        mod = model.get_submodule(name)
        if not torch.equal(mod.mask, mask):
            raise AssertionError(f"recover: the mask of {name} changed during fine-tuning")
        if bool((mod.weight.detach()[~mod.mask] != 0).any()):
            raise AssertionError(f"recover: pruned weights of {name} became non-zero during fine-tuning")
    return losses


def pack_(model: torch.nn.Module, weight_dtype: Optional[torch.dtype] = None) -> dict:
    """Pack every 2:4 SparseLinear (training form) in place; returns {"packed": [...], "skipped": {name: why}}.
    weight_dtype: see SparseLinear.pack (torch.int8: weight-only int8 2:4)."""
    packed, skipped = [], {}
    for name, mod in _sparse_modules(model).items():
        if mod.is_packed:
            skipped[name] = "already packed"
            continue
        why = nm_violation(mod.mask, 2, 4)
        if why is not None:
            skipped[name] = f"mask is not 2:4 ({why})"
            continue
        mod.pack(weight_dtype)
        packed.append(name)
    return {"packed": packed, "skipped": skipped}

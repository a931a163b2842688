"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine
learning-rate schedule.

Parameters with ndim < 2 (biases, norm weights and other gain vectors) get no
weight decay: decaying them pulls gains towards zero, which only hurts.
The fused AdamW kernel is used where this PyTorch has one for the parameters'
device (CUDA always; CPU since torch 2.4), else the foreach (multi-tensor) one.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
from torch import nn

from tforge.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over the trainable parameters: ndim >= 2 with weight
    decay, the rest without. Shared (tied) parameters appear once."""
    decay, no_decay, seen = [], [], set()
    for _, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    return groups


def _fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """True when every parameter is a floating tensor on a device the fused
    AdamW kernel serves (probed once per device type with a tiny step)."""
    device_types = {p.device.type for p in params}
    if len(device_types) != 1:
        return False
    device_type = device_types.pop()
    if device_type not in _FUSED_PROBE:
        try:
            probe = nn.Parameter(torch.zeros(2, device=device_type))
            probe.grad = torch.ones_like(probe)
            torch.optim.AdamW([probe], fused=True).step()
            _FUSED_PROBE[device_type] = True
        except (RuntimeError, TypeError, ValueError):
            _FUSED_PROBE[device_type] = False
    return _FUSED_PROBE[device_type]


_FUSED_PROBE: dict[str, bool] = {}


def build_optimizer(model: nn.Module, config: TrainConfig, fused: Optional[bool] = None) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, config.weight_decay)`. fused=None picks
    the fused kernel when available, False forces foreach."""
    groups = param_groups(model, config.weight_decay)
    params = [p for g in groups for p in g["params"]]
    # DTensor parameters (FSDP2) work with foreach; keep fused for plain tensors
    plain = all(type(p.data) is torch.Tensor for p in params)
    use_fused = _fused_supported(params) and plain if fused is None else fused
    kwargs = {"fused": True} if use_fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, **kwargs)


def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate of update number `step` (0-based): linear warmup
    lr * (step+1) / warmup_steps, then cosine from lr to min_lr at max_steps,
    and min_lr after that."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets every param group's lr to cosine_lr(step) scaled by the group's
    base lr (so groups with their own lr keep their ratio). Call step() after
    each optimizer update. state_dict() is JSON-able."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                 min_lr_ratio: float = 0.1, last_step: int = 0) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio!r}")
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio
        self.base_lrs = [float(g.setdefault("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.last_step = last_step
        self._apply()

    def factor(self, step: int) -> float:
        return cosine_lr(step, 1.0, self.min_lr_ratio, self.warmup_steps, self.max_steps)

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs), "warmup_steps": self.warmup_steps,
                "max_steps": self.max_steps, "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.base_lrs = [float(x) for x in state.get("base_lrs", self.base_lrs)]
        self.warmup_steps = int(state.get("warmup_steps", self.warmup_steps))
        self.max_steps = int(state.get("max_steps", self.max_steps))
        self.min_lr_ratio = float(state.get("min_lr_ratio", self.min_lr_ratio))
        self._apply()


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> WarmupCosineSchedule:
    return WarmupCosineSchedule(optimizer, config.warmup_steps, config.max_steps,
                                min_lr_ratio=config.final_lr / config.lr)


__all__ = ["param_groups", "build_optimizer", "cosine_lr", "WarmupCosineSchedule", "build_schedule"]

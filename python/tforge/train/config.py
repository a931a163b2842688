"""TrainConfig: every knob of the training loop in one JSON-able dataclass.

The config is stored in each checkpoint (trainer.json) so a resumed run can be
checked against the one that wrote it; `from_dict` ignores unknown keys so an
older checkpoint still loads after a field is added.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

AUTOCAST_MODES = ("off", "bf16")
STRATEGIES = ("ddp", "fsdp")
EARLY_STOP_MODES = ("min", "max")


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one run.

    Schedule: linear warmup over `warmup_steps` to `lr`, then cosine decay to
    `min_lr` (default 10% of lr) at `max_steps`. One step = one optimizer update
    of `grad_accum` micro-batches. Intervals of 0 (eval_every, save_every,
    log_every) switch the action off (a final checkpoint is still written).
    """

    lr: float = 3e-4
    min_lr: Optional[float] = None          # None: 0.1 * lr
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0
    max_steps: int = 1000
    grad_accum: int = 1
    clip_grad: Optional[float] = 1.0        # None or 0: no clipping (the norm is still recorded)
    autocast: str = "off"                   # "off" | "bf16" (GPU, or CPU on request)
    compile: bool = False                   # torch.compile the model
    eval_every: int = 0
    save_every: int = 0
    keep_last: int = 3
    seed: int = 0
    log_every: int = 10
    out_dir: str = "runs/default"
    early_stop_patience: Optional[int] = None   # evals without improvement before stopping
    early_stop_metric: str = "loss"
    early_stop_mode: str = "min"            # "min" (loss) | "max" (accuracy, macro_f1)
    restore_best: bool = True               # load the best weights back when early stopping is on
    max_bad_steps: int = 5                  # consecutive non-finite steps before TrainingAborted
    progress: bool = True
    strategy: str = "ddp"                   # "ddp" | "fsdp" (FSDP2 fully_shard) under torchrun
    device: Optional[str] = None            # None: cuda:<local_rank> when available, else cpu
    tensorboard: bool = True                # when torch.utils.tensorboard is importable
    history_keep: int = 10000               # history entries kept in trainer.json

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives lists back
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not 0 <= self.final_lr <= self.lr:
            raise ValueError(f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        for name in ("max_steps", "grad_accum", "max_bad_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "log_every", "keep_last", "history_keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ValueError(f"clip_grad must be None or >= 0, got {self.clip_grad!r}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast must be one of {AUTOCAST_MODES}, got {self.autocast!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.early_stop_mode not in EARLY_STOP_MODES:
            raise ValueError(f"early_stop_mode must be one of {EARLY_STOP_MODES}, got {self.early_stop_mode!r}")
        if self.early_stop_patience is not None and (not isinstance(self.early_stop_patience, int)
                                                     or self.early_stop_patience < 1):
            raise ValueError(f"early_stop_patience must be None or an integer >= 1, "
                             f"got {self.early_stop_patience!r}")
        if self.early_stop_patience is not None and self.eval_every < 1:
            raise ValueError("early_stop_patience needs eval_every >= 1 (early stopping counts evaluations)")

    @property
    def final_lr(self) -> float:
        """The lr the cosine ends at: min_lr, or 10% of lr when min_lr is None."""
        return 0.1 * self.lr if self.min_lr is None else float(self.min_lr)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


__all__ = ["TrainConfig", "AUTOCAST_MODES", "STRATEGIES", "EARLY_STOP_MODES"]

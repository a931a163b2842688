"""TrainConfig: every knob of the training loop in one JSON-able dataclass,
each field with its help text (which the `tforge` verbs' [train] sections reuse).

The config is stored in each checkpoint (trainer.json) so a resumed run can be
checked against the one that wrote it; `from_dict` ignores unknown keys so an
older checkpoint still loads after a field is added.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

AUTOCAST_MODES = ("off", "bf16")
STRATEGIES = ("ddp", "fsdp")
EARLY_STOP_MODES = ("min", "max")


def _setting(default: Any, help: str) -> Any:
    # the help text is read by the CLI config sections built on these fields (tforge.commands.config.like)
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one run.

    Schedule: linear warmup over `warmup_steps` to `lr`, then cosine decay to
    `min_lr` (default 10% of lr) at `max_steps`. One step = one optimizer update
    of `grad_accum` micro-batches. Intervals of 0 (eval_every, save_every,
    log_every) switch the action off (a final checkpoint is still written).
    """

    lr: float = _setting(3e-4, "peak learning rate (after warmup)")
    min_lr: Optional[float] = _setting(None, "learning rate the cosine ends at (None: 0.1 * lr)")
    weight_decay: float = _setting(0.1, "AdamW weight decay (of weights with 2+ dimensions; biases and norms get none)")
    betas: Tuple[float, float] = _setting((0.9, 0.95), "AdamW betas")
    eps: float = _setting(1e-8, "AdamW epsilon")
    warmup_steps: int = _setting(0, "linear warmup steps")
    max_steps: int = _setting(1000, "optimizer steps")
    grad_accum: int = _setting(1, "micro-batches per optimizer step")
    clip_grad: Optional[float] = _setting(1.0, "gradient norm clipping (0 = none; the norm is still recorded)")
    autocast: str = _setting("off", "off or bf16 (GPU, or CPU on request)")
    compile: bool = _setting(False, "torch.compile the model")
    eval_every: int = _setting(0, "steps between evaluations (0 = none)")
    save_every: int = _setting(0, "steps between checkpoints (0 = only at the end)")
    keep_last: int = _setting(3, "step checkpoints kept (older ones are deleted; 0 = all)")
    seed: int = _setting(0, "seed of the weights, data order and dropout")
    log_every: int = _setting(10, "steps between logged training metrics (0 = none)")
    out_dir: str = _setting("runs/default", "run folder: checkpoints, metrics.jsonl")
    early_stop_patience: Optional[int] = _setting(None, "evaluations without improvement before stopping "
                                                        "(None: never stop early)")
    early_stop_metric: str = _setting("loss", "eval metric that early stopping and best/ follow")
    early_stop_mode: str = _setting("min", "min (loss) or max (accuracy, macro_f1)")
    restore_best: bool = _setting(True, "load the best weights back when early stopping is on")
    max_bad_steps: int = _setting(5, "consecutive non-finite steps before TrainingAborted")
    progress: bool = _setting(True, "progress bar (on a terminal, rank 0)")
    strategy: str = _setting("ddp", "ddp or fsdp (FSDP2 fully_shard) under torchrun")
    device: Optional[str] = _setting(None, "None: cuda:<local_rank> when available, else cpu")
    tensorboard: bool = _setting(True, "write TensorBoard events when torch.utils.tensorboard is importable")
    history_keep: int = _setting(10000, "history entries kept in trainer.json")

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

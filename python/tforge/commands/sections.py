"""Config sections more than one verb uses: [run] (where a run goes, or which
run is read) and the [train] keys of pretrain and finetune, with the one
function that turns a [train] section into the TrainConfig of the loop."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tforge.commands.config import like, setting
from tforge.commands.runs import CHECKPOINT_CHOICES
from tforge.train.config import AUTOCAST_MODES, STRATEGIES, TrainConfig


@dataclass
class RunOut:
    """[run] of a verb that writes a run folder."""
    out: str = setting("", "run folder (\"\" = a new runs/<command>-<date>-<time>)", flag="--out", metavar="DIR")


@dataclass
class RunSource:
    """[run] of a verb that reads a run folder."""
    dir: str = setting("", "the run folder to read (a pretrain / finetune / compress output)", flag="--run",
                       metavar="DIR")
    checkpoint: str = setting("auto", f"which weights: {', '.join(CHECKPOINT_CHOICES)} or a checkpoint folder",
                              flag="--checkpoint", metavar="WHICH")
    device: str = setting("cpu", "cpu, cuda or cuda:N")


@dataclass
class TrainSection:
    """[train] keys pretrain and finetune share; each verb's [train] extends this and changes
    defaults where its runs differ. Help texts come from TrainConfig's fields."""
    max_steps: int = like(TrainConfig, "max_steps", min=1, flag="--steps", metavar="N")
    lr: float = like(TrainConfig, "lr", min=0.0)
    weight_decay: float = like(TrainConfig, "weight_decay", min=0.0)
    grad_accum: int = like(TrainConfig, "grad_accum", min=1)
    clip_grad: float = like(TrainConfig, "clip_grad", min=0.0)
    autocast: str = like(TrainConfig, "autocast", choices=AUTOCAST_MODES)
    compile: bool = like(TrainConfig, "compile")
    eval_every: int = like(TrainConfig, "eval_every", min=0)
    save_every: int = like(TrainConfig, "save_every", min=0)
    keep_last: int = like(TrainConfig, "keep_last", 2, min=0)
    log_every: int = like(TrainConfig, "log_every", min=0)
    seed: int = like(TrainConfig, "seed")
    device: str = setting("", "cpu, cuda, cuda:N (\"\" = cuda when available, else cpu)", flag="--device",
                          metavar="DEVICE")
    strategy: str = like(TrainConfig, "strategy", choices=STRATEGIES)
    progress: bool = like(TrainConfig, "progress")


def train_config(train: TrainSection, out_dir: str, **derived: Any) -> TrainConfig:
    """The TrainConfig of a verb's [train] section: every key TrainConfig has by the same
    name, then `derived` (what the verb computes: max_steps from epochs, lr by mode, ...)."""
    shared = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(train, f.name)}
    shared["device"] = train.device or None  # TOML has no null: "" means "pick one"
    if "early_stop_patience" in shared:
        shared["early_stop_patience"] = shared["early_stop_patience"] or None  # 0 = never stop early
    return TrainConfig(**{**shared, "out_dir": out_dir, **derived})


__all__ = ["RunOut", "RunSource", "TrainSection", "train_config"]

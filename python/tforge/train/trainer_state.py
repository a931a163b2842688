"""A Trainer's checkpointed state: what goes into trainer.json beside the
weights and optimizer, and how a run is resumed from it (model, optimizer,
schedule, data position, every rank's RNG and the counters), including under
FSDP2 (full state dicts gathered on rank 0)."""
from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import numpy as np
import torch

from tforge.train import distributed as tdist
from tforge.train.checkpoint import CheckpointError, find_checkpoint, read_checkpoint, restore_rng_from_bytes

if TYPE_CHECKING:
    from tforge.train.loop import Trainer

log = logging.getLogger("tforge.train")


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global generators."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def trainer_state(trainer: "Trainer", data_states: Optional[list]) -> dict[str, Any]:
    """The counters, history and configs saved in trainer.json (data_states: each rank's data position)."""
    model_config = getattr(trainer.model, "config", None)
    return {"tokens_seen": trainer.tokens_seen, "epoch": trainer.epoch, "batches_in_epoch": trainer.batches_in_epoch,
            "history": trainer.history[-trainer.config.history_keep:] if trainer.config.history_keep else [],
            "bad_steps": trainer.bad_steps, "consecutive_bad_steps": trainer.consecutive_bad_steps,
            "best_metric": trainer.best_metric, "best_step": trainer.best_step,
            "evals_since_best": trainer.evals_since_best, "stopped_early": trainer.stopped_early,
            "elapsed": trainer.elapsed, "world_size": trainer.world_size, "data_states": data_states,
            "config": trainer.config.to_dict(),
            "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None}


def gather_state(trainer: "Trainer", optimizer: bool = True) -> tuple[dict, Optional[dict]]:
    """(model state, optimizer state or None): full state dicts, gathered under FSDP2."""
    if tdist.is_fsdp(trainer.model):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(trainer.model, options=opts)
        optim_state = get_optimizer_state_dict(trainer.model, trainer.optimizer, options=opts) if optimizer else None
        return model_state, optim_state
    return trainer.model.state_dict(), (trainer.optimizer.state_dict() if optimizer else None)


def load_model_state(trainer: "Trainer", state: Optional[dict]) -> None:
    if state is None:
        raise CheckpointError("checkpoint has no model weights")
    if tdist.is_fsdp(trainer.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(trainer.model, state, options=StateDictOptions(full_state_dict=True))
    else:
        try:
            trainer.model.load_state_dict(state)
        except RuntimeError as e:  # size mismatch: torch's message spans many lines
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = "; ".join(lines[1:3]) or lines[0]
            raise CheckpointError(f"checkpoint weights do not fit the model ({why}); was the model "
                                  f"configuration changed since the checkpoint was written?") from None


def resume_or_seed(trainer: "Trainer", resume: Union[bool, str, Path]) -> None:
    """Trainer.fit's start: restore the checkpoint `resume` points at (see fit), or seed a fresh run."""
    if resume is False or resume is None:
        seed_everything(trainer.config.seed + trainer.rank)
        return
    source = trainer.out_dir if resume is True else Path(resume)
    ckpt = find_checkpoint(source)
    if ckpt is None:
        if resume is not True:
            raise CheckpointError(f"resume: no checkpoint found at {source}")
        written = [p.name for p in (source.iterdir() if source.is_dir() else [])
                   if p.name in ("metrics.jsonl", "latest", "model") or p.name.startswith("step-")]
        if written:  # starting fresh would overwrite that run's step-*, model/ and metrics.jsonl
            raise CheckpointError(f"resume: {source} holds a run ({', '.join(sorted(written)[:4])}) but no "
                                  f"checkpoint to resume from; start over in an empty folder")
        if trainer.is_main:
            log.info("resume: no checkpoint in %s, starting fresh", source)
        seed_everything(trainer.config.seed + trainer.rank)
        return
    restore(trainer, ckpt)


def restore(trainer: "Trainer", path: Union[str, Path]) -> None:
    """Restore the trainer's model, optimizer, schedule, data position, RNG and counters from
    a checkpoint (all ranks call)."""
    contents = read_checkpoint(path)
    st = contents.trainer
    load_model_state(trainer, contents.model_state)
    if contents.optimizer_state is None:
        raise CheckpointError(f"checkpoint {contents.path} has no optimizer state; cannot resume training")
    if tdist.is_fsdp(trainer.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(trainer.model, trainer.optimizer, contents.optimizer_state,
                                 options=StateDictOptions(full_state_dict=True))
    else:
        trainer.optimizer.load_state_dict(contents.optimizer_state)
    if st.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(st["scheduler"])
        # the schedule's shape follows the current config (max_steps may be extended on resume)
        trainer.scheduler.warmup_steps = trainer.config.warmup_steps
        trainer.scheduler.max_steps = trainer.config.max_steps
        trainer.scheduler.min_lr_ratio = trainer.config.final_lr / trainer.config.lr
        trainer.scheduler.load_state_dict(trainer.scheduler.state_dict())
    warn_config_changes(trainer, st.get("config") or {})
    trainer.step = int(st["step"])
    trainer.tokens_seen = int(st.get("tokens_seen", 0))
    trainer.epoch = int(st.get("epoch", 0))
    trainer.batches_in_epoch = int(st.get("batches_in_epoch", 0))
    trainer.history = list(st.get("history", []))
    trainer.bad_steps = int(st.get("bad_steps", 0))
    trainer.consecutive_bad_steps = int(st.get("consecutive_bad_steps", 0))
    trainer.best_metric, trainer.best_step = st.get("best_metric"), st.get("best_step")
    trainer.evals_since_best = int(st.get("evals_since_best", 0))
    trainer.stopped_early = bool(st.get("stopped_early", False))
    trainer.elapsed = float(st.get("elapsed", 0.0))
    trainer.last_saved_step = trainer.step
    trainer.resumed_from = contents.path
    data_states = st.get("data_states")
    if hasattr(trainer.train_data, "load_state_dict"):
        if data_states and len(data_states) == trainer.world_size:
            trainer._data_state_to_load = data_states[trainer.rank]
        elif st.get("data_state") is not None:
            trainer._data_state_to_load = st["data_state"]
    restored = contents.rng is not None and restore_rng_from_bytes(contents.rng, trainer.rank)
    if not restored:
        warnings.warn(f"checkpoint {contents.path} has no RNG state for rank {trainer.rank} (written by "
                      f"{st.get('world_size')} processes); reseeding, so the run will not repeat exactly")
        seed_everything(trainer.config.seed + trainer.rank + trainer.step)
    if trainer.is_main:
        log.info("resumed from %s at step %d", contents.path, trainer.step)


def warn_config_changes(trainer: "Trainer", saved: Mapping[str, Any]) -> None:
    ignore = {"out_dir", "progress", "max_steps", "save_every", "eval_every", "log_every", "keep_last",
              "tensorboard", "device", "early_stop_patience", "history_keep"}
    now = trainer.config.to_dict()
    changed = [k for k, v in saved.items() if k not in ignore and k in now and now[k] != v]
    if changed and trainer.is_main:
        warnings.warn("resuming with a different config for " + ", ".join(
            f"{k} ({saved[k]!r} -> {now[k]!r})" for k in changed))


__all__ = ["seed_everything", "trainer_state", "gather_state", "load_model_state", "resume_or_seed", "restore",
           "warn_config_changes"]

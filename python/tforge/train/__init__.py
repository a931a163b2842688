"""Training layer: the Trainer loop, checkpoints, distributed helpers, metrics
and fine-tuning set-ups.

    cfg = TrainConfig(lr=3e-4, max_steps=1000, warmup_steps=100, out_dir="runs/x", save_every=200)
    history = Trainer(model, batches, cfg, eval_fn=evaluate).fit(resume=True)

Batches are dicts passed as model(**batch); the model returns an object with
.loss (tforge.models.ModelOutput) or a dict with "loss" (HF). See loop.py for
the step semantics and checkpoint.py for the on-disk format.
"""
from tforge.train.checkpoint import (CheckpointError, find_checkpoint, list_checkpoints, load_checkpoint,
                                     load_state_dict, read_checkpoint, save_checkpoint, save_state_dict,
                                     verify_checkpoint)
from tforge.train.config import TrainConfig
from tforge.train.finetune import export_model, prepare_finetune
from tforge.train.loop import Trainer, TrainingAborted, get_loss, seed_everything
from tforge.train.metrics import MetricsLogger, ProgressBar, accuracy, macro_f1, read_metrics
from tforge.train.optim import WarmupCosineSchedule, build_optimizer, build_schedule, cosine_lr, param_groups
from tforge.train import distributed  # noqa: E402

__all__ = ["TrainConfig", "Trainer", "TrainingAborted", "get_loss", "seed_everything", "CheckpointError",
           "save_checkpoint", "load_checkpoint", "read_checkpoint", "verify_checkpoint", "find_checkpoint",
           "list_checkpoints", "save_state_dict", "load_state_dict", "export_model", "prepare_finetune",
           "MetricsLogger", "ProgressBar", "accuracy", "macro_f1", "read_metrics", "WarmupCosineSchedule",
           "build_optimizer", "build_schedule", "cosine_lr", "param_groups", "distributed"]

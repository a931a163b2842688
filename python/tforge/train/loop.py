"""The training loop: gradient accumulation, bf16 autocast, clipping, the
warmup + cosine schedule, skipping of non-finite steps, metrics, evaluation,
early stopping, checkpoints and exact resume, on one process or many (DDP or
FSDP2 under torchrun).

Exact resume: a checkpoint holds the model, optimizer, schedule, the data
iterable's state_dict() (per rank), every rank's RNG states and the counters;
a run resumed from step k repeats the uninterrupted run's losses bit for bit
on the same machine.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from tforge.train import distributed as tdist
from tforge.train.checkpoint import read_checkpoint, rng_state_bytes, save_checkpoint, _json_bytes
from tforge.train.config import TrainConfig
from tforge.train.metrics import MetricsLogger, ProgressBar
from tforge.train.optim import build_optimizer, build_schedule
from tforge.train.trainer_state import (gather_state, load_model_state, restore, resume_or_seed, seed_everything,
                                        trainer_state)

log = logging.getLogger("tforge.train")

BEST_DIR = "best"


class TrainingAborted(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


def get_loss(output: Any) -> torch.Tensor:
    """The loss of a model output: a 0-d tensor, an object with .loss
    (tforge.models.ModelOutput) or a mapping with "loss" (HF outputs)."""
    if isinstance(output, torch.Tensor):
        if output.dim() != 0:
            raise ValueError(f"a model returning a tensor must return the scalar loss, got shape {tuple(output.shape)}")
        return output
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None:
        raise ValueError(f"model output ({type(output).__name__}) has no loss: the batch must carry labels")
    return loss


def _fallback_count_tokens(batch: Mapping[str, Any]) -> int:
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum().item())
    ids = batch.get("input_ids")
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


def _resolve_count_tokens() -> Callable[[Mapping[str, Any]], int]:
    """tforge.data.count_tokens (the data package defines what a non-padding
    token is) for token batches; batches without input_ids count 0 tokens."""
    try:
        from tforge.data import count_tokens
    except ImportError:
        return _fallback_count_tokens

    def count(batch: Mapping[str, Any]) -> int:
        return count_tokens(batch) if isinstance(batch.get("input_ids"), torch.Tensor) else 0
    return count


class Trainer:
    """Trains `model` on `train_data` (an iterable of dict batches, each
    passed as model(**batch); optional state_dict()/load_state_dict()/set_epoch())
    according to `config`. eval_fn(model) -> dict of floats is called every
    eval_every steps (model in eval mode, no grad); the Trainer reports the
    results (progress bar, or the "tforge.train" log without one) and records
    them in the history and metrics.jsonl.

    Under torchrun the process group is joined here (tforge.train.distributed.
    init_from_env) and the model is wrapped in DDP or FSDP2 (config.strategy);
    the data iterable is expected to shard itself by rank. Only rank 0 writes
    files and shows progress.

    One step = grad_accum micro-batches, one optimizer update. A step whose
    (rank-averaged) loss or gradient norm is not finite is skipped (no update;
    the schedule and step counter still advance) and counted;
    config.max_bad_steps consecutive ones raise TrainingAborted.
    """

    def __init__(self, model: nn.Module, train_data: Iterable[Mapping[str, Any]], config: TrainConfig,
                 eval_fn: Optional[Callable[[nn.Module], Mapping[str, float]]] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 count_tokens: Optional[Callable[[Mapping[str, Any]], int]] = None) -> None:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.train_data = train_data
        self.eval_fn = eval_fn
        self.count_tokens = count_tokens or _resolve_count_tokens()
        self.dist = tdist.init_from_env()
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.device = torch.device(config.device) if config.device else self.dist.device
        self.out_dir = Path(config.out_dir)

        self.model = model.to(self.device)  # the user's module: state dicts, eval, export
        self.wrapped: nn.Module = self.model
        if self.world_size > 1:
            if config.strategy == "fsdp":
                self.wrapped = tdist.apply_fsdp(self.model)
            else:
                self.wrapped = tdist.wrap_ddp(self.model, self.device)
        self.forward_model = torch.compile(self.wrapped) if config.compile else self.wrapped
        self.optimizer = optimizer or build_optimizer(self.model, config)
        self.scheduler = build_schedule(self.optimizer, config)

        self.step = 0
        self.tokens_seen = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.bad_steps = 0
        self.consecutive_bad_steps = 0
        self.best_metric: Optional[float] = None
        self.best_step: Optional[int] = None
        self.evals_since_best = 0
        self.stopped_early = False
        self.elapsed = 0.0
        self.last_saved_step: Optional[int] = None
        self.resumed_from: Optional[Path] = None
        self._data_state_to_load: Optional[dict] = None
        self._data_iter: Optional[Iterator] = None
        self._params = [p for p in self.model.parameters() if p.requires_grad]

    # ---------------------------------------------------------------- public

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def fit(self, resume: Union[bool, str, Path] = False, until_step: Optional[int] = None) -> list[dict[str, Any]]:
        """Train to config.max_steps (or stop earlier at `until_step`, keeping
        the schedule of max_steps: a run can be split into pieces). resume=True
        continues from the latest checkpoint in out_dir when there is one (a
        fresh start when out_dir holds no run; CheckpointError when it holds a
        run without a verifiable checkpoint); a path resumes from that checkpoint or root and
        must exist. Returns the history: one dict per step."""
        cfg = self.config
        stop_at = cfg.max_steps if until_step is None else min(cfg.max_steps, until_step)
        continuing = self._data_iter is not None and not resume  # a second fit() on this trainer
        if not continuing:
            resume_or_seed(self, resume)
        logger = MetricsLogger(self.out_dir, enabled=self.is_main, tensorboard=cfg.tensorboard)
        if self.resumed_from is not None and not continuing:
            logger.truncate_after(self.step)  # steps after the checkpoint are about to be redone
        bar = ProgressBar(cfg.max_steps, initial=self.step, enabled=cfg.progress and self.is_main)
        if not continuing:
            self._data_iter = self._start_data()
        self.model.train()
        start = time.perf_counter() - self.elapsed
        window_t, window_tokens = time.perf_counter(), self.tokens_seen
        try:
            while self.step < stop_at and not self.stopped_early:
                record = self._train_step()
                self.elapsed = time.perf_counter() - start
                now = time.perf_counter()
                tokens_per_s = (self.tokens_seen - window_tokens) / max(now - window_t, 1e-9)
                bar.update(1, loss=record["loss"], tokens_per_s=tokens_per_s)
                if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == stop_at):
                    logger.log({**record, "tokens_per_s": tokens_per_s, "elapsed": self.elapsed}, step=self.step)
                    if not bar.active and self.is_main:
                        log.info("step %d/%d loss %.4f lr %.3g grad_norm %.3g tok/s %.0f", self.step,
                                 cfg.max_steps, record["loss"], record["lr"], record["grad_norm"], tokens_per_s)
                    window_t, window_tokens = now, self.tokens_seen
                if self.eval_fn is not None and cfg.eval_every and (self.step % cfg.eval_every == 0
                                                                    or self.step == cfg.max_steps):
                    results = self._evaluate_and_track()
                    record.update({f"eval_{k}": v for k, v in results.items()})
                    logger.log({f"eval/{k}": v for k, v in results.items()}, step=self.step)
                    message = f"step {self.step}/{cfg.max_steps} eval: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in results.items())
                    if bar.active:
                        bar.write(message)
                    elif self.is_main:  # piped output: the results go to the log beside the step lines
                        log.info(message)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
            if self.last_saved_step != self.step:
                self.save()
            if self.stopped_early and self.is_main:
                log.info("early stop at step %d: no %s improvement in %d evaluations (best %.4g at step %s)",
                         self.step, cfg.early_stop_metric, cfg.early_stop_patience, self.best_metric, self.best_step)
            if cfg.early_stop_patience is not None and cfg.restore_best and self.best_step is not None:
                self.load_best()
        finally:
            logger.close()
            bar.close()
        return self.history

    def evaluate(self) -> dict[str, float]:
        """eval_fn(model) in eval mode without gradients, values as floats."""
        if self.eval_fn is None:
            raise ValueError("Trainer has no eval_fn")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                results = self.eval_fn(self.model)
        finally:
            self.model.train(was_training)
        if not isinstance(results, Mapping):
            raise ValueError(f"eval_fn must return a dict of metrics, got {type(results).__name__}")
        return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in results.items()}

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        """Checkpoint now (all ranks must call; rank 0 writes). name=None: a
        step-XXXXXXXX directory and the `latest` pointer; else root/<name>
        holding the model and trainer state only (used for best/)."""
        full = name is None
        model_state, optim_state = gather_state(self, optimizer=full)
        rng_blobs = tdist.all_gather_bytes(rng_state_bytes())
        data_states = None
        if full and hasattr(self.train_data, "state_dict"):
            mine = _json_bytes(self.train_data.state_dict(), "train_data.state_dict()")
            data_states = [_parse_json(b) for b in tdist.all_gather_bytes(mine)]
        path = None
        if self.is_main:
            path = save_checkpoint(self.out_dir, self.step, model_state=model_state, optimizer_state=optim_state,
                                   scheduler=self.scheduler, data_state=data_states[0] if data_states else None,
                                   extra=trainer_state(self, data_states), keep_last=self.config.keep_last,
                                   rng_blobs=rng_blobs, name=name)
        tdist.barrier()
        if full:
            self.last_saved_step = self.step
        return path

    def load_best(self) -> None:
        """Load the weights of out_dir/best into the model."""
        contents = read_checkpoint(self.out_dir / BEST_DIR)
        load_model_state(self, contents.model_state)

    # ---------------------------------------------------------------- one step

    def _train_step(self) -> dict[str, Any]:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = self._next_batch()
            if not isinstance(batch, Mapping):
                raise ValueError(f"batches must be dicts passed as model(**batch), got {type(batch).__name__}")
            tokens += int(self.count_tokens(batch))
            batch = self._to_device(batch)
            last = micro == cfg.grad_accum - 1
            with self._grad_sync(last):
                with self._autocast():
                    output = self.forward_model(**batch)
                loss = get_loss(output).float()
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        loss_value = float(tdist.all_reduce_mean(loss_sum / cfg.grad_accum).item())
        self.tokens_seen += int(round(tdist.all_reduce_mean(float(tokens)) * self.world_size))
        grad_norm = self._clip_and_norm()
        lr = self.optimizer.param_groups[0]["lr"]
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.consecutive_bad_steps = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.consecutive_bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        record = {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                  "tokens": self.tokens_seen, "skipped": not finite}
        self.history.append(record)
        if not finite:
            log.warning("step %d skipped: loss %s, grad norm %s (%d in a row)", self.step, loss_value, grad_norm,
                        self.consecutive_bad_steps)
            if self.consecutive_bad_steps >= cfg.max_bad_steps:
                raise TrainingAborted(
                    f"training aborted at step {self.step}: {self.consecutive_bad_steps} consecutive steps had a "
                    f"non-finite loss or gradient norm (last loss {loss_value}, grad norm {grad_norm}); "
                    f"lower the learning rate, check the data, or raise max_bad_steps "
                    f"(now {cfg.max_bad_steps})")
        return record

    def _clip_and_norm(self) -> float:
        max_norm = self.config.clip_grad if self.config.clip_grad else math.inf
        params = [p for p in self._params if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return float(norm.item())

    def _grad_sync(self, sync: bool):
        """Skip the gradient all-reduce on all but the last micro-batch."""
        if sync or self.world_size == 1:
            return nullcontext()
        if isinstance(self.wrapped, nn.parallel.DistributedDataParallel):
            return self.wrapped.no_sync()
        if hasattr(self.wrapped, "set_requires_gradient_sync"):  # FSDP2
            return _FSDPNoSync(self.wrapped)
        return nullcontext()

    def _autocast(self):
        if self.config.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()}

    # ---------------------------------------------------------------- data

    def _start_data(self) -> Iterator:
        data = self.train_data
        if self._data_state_to_load is not None:
            data.load_state_dict(self._data_state_to_load)
            self._data_state_to_load = None
            return iter(data)
        if hasattr(data, "set_epoch"):
            data.set_epoch(self.epoch)
        it = iter(data)
        if self.batches_in_epoch and self.resumed_from is not None:
            # no state_dict(): replay the epoch's order up to where the checkpoint was taken
            for _ in range(self.batches_in_epoch):
                next(it)
        return it

    def _next_batch(self) -> Mapping[str, Any]:
        try:
            batch = next(self._data_iter)
        except StopIteration:
            if self.batches_in_epoch == 0:
                raise ValueError("train_data yielded no batches") from None
            self.epoch += 1
            self.batches_in_epoch = 0
            if hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(self.epoch)
            self._data_iter = iter(self.train_data)
            try:
                batch = next(self._data_iter)
            except StopIteration:
                raise ValueError(f"train_data yielded no batches in epoch {self.epoch}") from None
        self.batches_in_epoch += 1
        return batch

    # ---------------------------------------------------------------- eval / early stop

    def _evaluate_and_track(self) -> dict[str, float]:
        cfg = self.config
        results = self.evaluate()
        metric = results.get(cfg.early_stop_metric)
        if metric is None:
            if cfg.early_stop_patience is not None:
                raise ValueError(f"early_stop_metric {cfg.early_stop_metric!r} is not among the eval results "
                                 f"{sorted(results)}")
            return results
        better = (self.best_metric is None or (metric < self.best_metric if cfg.early_stop_mode == "min"
                                               else metric > self.best_metric))
        if better:
            self.best_metric, self.best_step, self.evals_since_best = metric, self.step, 0
            self.save(name=BEST_DIR)
        else:
            self.evals_since_best += 1
            if cfg.early_stop_patience is not None and self.evals_since_best >= cfg.early_stop_patience:
                self.stopped_early = True
        return results

    # ---------------------------------------------------------------- state

    def load(self, path: Union[str, Path]) -> None:
        """Restore everything from a checkpoint (all ranks call)."""
        restore(self, path)


class _FSDPNoSync:
    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.module.set_requires_gradient_sync(False)

    def __exit__(self, *exc: Any) -> None:
        self.module.set_requires_gradient_sync(True)


def _parse_json(data: bytes) -> Any:
    return json.loads(data)


__all__ = ["Trainer", "TrainingAborted", "get_loss", "seed_everything", "BEST_DIR"]  # seed_everything: re-export

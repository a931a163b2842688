"""sparsify_(model, Sparse24Config(...), calib_data=...): prune nn.Linear layers to n:m (2:4) or
unstructured sparsity in place (each becomes a tforge.nn.SparseLinear in training form), by weight
magnitude or by Wanda's score |W_ij| * ||X_j||_2 (X_j: input channel j of the layer over all
calibration tokens); recover(model, data, steps) fine-tunes with the masks fixed; pack_(model) turns
every 2:4 SparseLinear into its packed inference form.

Wanda, layer by layer (sequential=True): when the model holds a list of repeated blocks (the
nn.ModuleList whose children share one type and that holds the most parameters: HF LlamaModel.layers,
BertEncoder.layer, ...), one forward pass per calibration batch records every block's inputs (args and
kwargs, through forward pre-hooks; the pass stops at the last block), keeping only block 0's hidden
states. Then, block by block: run the block on its inputs collecting the norms of its Linears' inputs,
prune them, and run the pruned block again to produce the next block's hidden states, so each block is
calibrated on the outputs of the already-pruned blocks before it. The hidden states are the block's
first positional argument (or its `hidden_states` keyword); every other argument is the one recorded
for that block (KV caches are dropped, use_cache is turned off). Linears outside the blocks get their
norms from one full pass after the blocks are pruned. Without such a list (or with sequential=False)
one full pass with hooks on every selected Linear collects all norms.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from typing import Any, Callable, Iterable, Optional

import torch

from tforge.compress.calibration import run_batch_output
from tforge.nn.sparse_linear import SparseLinear, nm_violation
from tforge.ops.sparse24 import nm_mask, prune_scores, unstructured_mask

_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values", "layer_past")


@dataclasses.dataclass
class Sparse24Config:
    method: str = "wanda"          # "wanda" (needs calib_data) or "magnitude"
    n: int = 2                     # keep n of every m consecutive input weights (structured=True)
    m: int = 4
    skip: tuple = ("lm_head",)     # fnmatch patterns, matched against the Linear's full name and its last part
    structured: bool = True        # False: unstructured, `sparsity` of each row pruned
    sparsity: float = 0.5          # unstructured only
    sequential: bool = True        # Wanda block by block (see the module docstring)
    max_calib_batches: Optional[int] = None

    def __post_init__(self):
        if self.method not in ("wanda", "magnitude"):
            raise ValueError(f"Sparse24Config: method must be 'wanda' or 'magnitude', got {self.method!r}")
        if isinstance(self.skip, str):
            raise ValueError(f"Sparse24Config: skip must be a tuple of patterns, got the string {self.skip!r} "
                             f"(write ({self.skip!r},))")
        self.skip = tuple(self.skip)
        if self.structured:
            for name in ("n", "m"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"Sparse24Config: {name} must be an integer, got {v!r}")
            if not 1 <= self.n <= self.m <= 16:
                raise ValueError(f"Sparse24Config: need 1 <= n <= m <= 16, got n={self.n}, m={self.m}")
        elif isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"Sparse24Config: sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.max_calib_batches is not None and self.max_calib_batches < 1:
            raise ValueError(f"Sparse24Config: max_calib_batches must be >= 1 or None, got {self.max_calib_batches}")

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else f"unstructured {100 * self.sparsity:g}%"


@dataclasses.dataclass
class SparsifyReport:
    """What sparsify_ did. Also readable like a dict (report["pruned"])."""
    method: str
    pattern: str
    mode: str                                   # how calibration ran, in words
    pruned: list = dataclasses.field(default_factory=list)
    skipped: dict = dataclasses.field(default_factory=dict)       # name -> reason
    layer_sparsity: dict = dataclasses.field(default_factory=dict)  # name -> fraction of zero weights
    sparsity: float = 0.0                       # zero weights / weights over the pruned layers

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _StopForward(Exception):
    """Raised by a pre-hook once the inputs it needs are recorded."""


# ---------------------------------------------------------------- selection

def _matches(name: str, patterns: Iterable[str]) -> Optional[str]:
    last = name.rpartition(".")[2]
    for p in patterns:
        if fnmatch.fnmatch(name, p) or fnmatch.fnmatch(last, p):
            return p
    return None


def _select(model: torch.nn.Module, config: Sparse24Config) -> tuple[dict, dict]:
    """({name: nn.Linear to prune}, {name: reason skipped})."""
    selected, skipped = {}, {}
    parents = {name: mod for name, mod in model.named_modules()}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        parent = parents.get(name.rpartition(".")[0]) if "." in name else model
        pattern = _matches(name, config.skip)
        if pattern is not None:
            skipped[name] = f"matches skip pattern {pattern!r}"
        elif isinstance(parent, torch.nn.MultiheadAttention):
            skipped[name] = "inside nn.MultiheadAttention, which reads the weight directly (no forward call)"
        elif config.structured and mod.in_features % config.m != 0:
            skipped[name] = f"in_features % m != 0 ({mod.in_features} is not a multiple of {config.m})"
        elif not mod.weight.is_floating_point():
            skipped[name] = f"weight dtype {mod.weight.dtype} is not floating point"
        else:
            selected[name] = mod
    return selected, skipped


def _set_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def find_blocks(model: torch.nn.Module) -> Optional[tuple[str, torch.nn.ModuleList]]:
    """(name, list) of the model's repeated blocks: the nn.ModuleList whose children all share one type,
    contain an nn.Linear, and hold the most parameters (ties: more children). None when there is none."""
    best, best_key = None, None
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0 or len({type(c) for c in mod}) != 1:
            continue
        if not any(isinstance(s, torch.nn.Linear) for s in mod.modules()):
            continue
        key = (sum(p.numel() for p in mod.parameters()), len(mod))
        if best_key is None or key > best_key:
            best, best_key = (name, mod), key
    return best


# ---------------------------------------------------------------- statistics and pruning

class _NormCollector:
    """Forward pre-hooks accumulating, per Linear, the sum over tokens of x_j^2 (fp32)."""

    def __init__(self, linears: dict):
        self.sq = {}
        self.hooks = [mod.register_forward_pre_hook(self._hook(name)) for name, mod in linears.items()]

    def _hook(self, name):
        def hook(mod, inputs):
            x = inputs[0].detach()
            flat = x.reshape(-1, x.shape[-1]).float()
            sq = flat.square().sum(0)
            self.sq[name] = self.sq[name] + sq if name in self.sq else sq
        return hook

    def norms(self) -> dict:
        return {name: s.sqrt() for name, s in self.sq.items()}

    def remove(self):
        for h in self.hooks:
            h.remove()


@torch.no_grad()
def _prune(model, name: str, lin: torch.nn.Linear, config: Sparse24Config, act_norm, report: SparsifyReport):
    if config.method == "wanda" and act_norm is None:
        report.skipped[name] = "did not run on calib_data (no activation statistics)"
        return
    scores = prune_scores(lin.weight, config.method, act_norm if config.method == "wanda" else None)
    if config.structured:
        mask = nm_mask(scores, config.n, config.m)
    else:
        mask = unstructured_mask(scores, config.sparsity, per_row=True)
    new = SparseLinear.from_dense(lin, mask, n=config.n if config.structured else 2,
                                  m=config.m if config.structured else 4)
    _set_module(model, name, new)
    report.pruned.append(name)
    report.layer_sparsity[name] = new.sparsity()


def _sanitize_kwargs(kwargs: dict) -> dict:
    """Block kwargs safe to replay: no KV cache (replaying would append to it), no caching."""
    out = {}
    for k, v in kwargs.items():
        if k in _CACHE_KWARGS or type(v).__name__.endswith("Cache"):
            v = None
        elif k == "use_cache":
            v = False
        out[k] = v
    return out


def _stream_slot(args: tuple, kwargs: dict):
    if args and isinstance(args[0], torch.Tensor):
        return ("arg", 0)
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return ("kw", "hidden_states")
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return ("kw", k)
    return None


def _with_stream(args: tuple, kwargs: dict, slot, stream):
    if slot[0] == "arg":
        return (stream,) + tuple(args[1:]), kwargs
    return args, {**kwargs, slot[1]: stream}


def _block_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        first = next(iter(out.values()), None)
        if isinstance(first, torch.Tensor):
            return first
    raise ValueError(f"sparsify_: cannot find the hidden states in a block's output of type {type(out).__name__}")


def _capture_block_inputs(model, blocks: torch.nn.ModuleList, batches: list):
    """Per batch: [(args, kwargs) per block], hidden states kept for block 0 only (None elsewhere).
    Returns (records, slot) or (None, reason)."""
    n = len(blocks)
    records, current, slots = [], {}, []

    def pre_hook(i):
        def hook(mod, args, kwargs):
            if i in current:
                return None  # a block called twice (weight sharing): keep the first call
            slot = _stream_slot(args, kwargs)
            if slot is None:
                raise ValueError(f"block {i} got no tensor argument to treat as its hidden states")
            kw = _sanitize_kwargs(kwargs)
            if i > 0:  # drop the hidden states: the pruned blocks before produce them again
                args, kw = _with_stream(args, kw, slot, None)
            current[i] = (tuple(args), kw)
            slots.append(slot)
            if i == n - 1:
                raise _StopForward
            return None
        return hook

    hooks = [b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for batch in batches:
            current.clear()
            try:
                run_batch_output(model, batch)
            except _StopForward:
                pass
            if len(current) != n:
                return None, f"only {len(current)} of the {n} blocks ran on a calibration batch"
            records.append([current[i] for i in range(n)])
    except ValueError as exc:
        return None, str(exc)
    finally:
        for h in hooks:
            h.remove()
    if len(set(slots)) != 1:
        return None, "the blocks take their hidden states in different arguments"
    return records, slots[0]


@torch.no_grad()
def _sequential_wanda(model, blocks_name, blocks, batches, selected, config, report) -> set:
    """Prune the selected Linears inside the blocks, block by block. Returns the names handled, or
    None (with report.mode explaining) when the blocks cannot be replayed."""
    records, slot = _capture_block_inputs(model, blocks, batches)
    if records is None:
        report.mode = f"single pass (sequential calibration not possible: {slot})"
        return None
    handled = set()
    streams = [rec[0][0][0] if slot[0] == "arg" else rec[0][1][slot[1]] for rec in records]
    for i, block in enumerate(blocks):
        own = f"{blocks_name}.{i}" if blocks_name else f"{i}"
        inside = {name: mod for name, mod in selected.items() if name == own or name.startswith(own + ".")}
        # Norms on the unpruned block, as Wanda does for all the block's sublayers at once.
        if inside:
            collector = _NormCollector(inside)
            try:
                for rec, stream in zip(records, streams):
                    args, kwargs = _with_stream(*rec[i], slot, stream)
                    block(*args, **kwargs)
            finally:
                collector.remove()
            norms = collector.norms()
            for name, lin in inside.items():
                _prune(model, name, lin, config, norms.get(name), report)
            handled.update(inside)
        if i + 1 < len(blocks):  # the pruned block's outputs feed the next block
            block = blocks[i]  # (its Linears were just replaced inside it)
            next_streams = []
            for rec, stream in zip(records, streams):
                args, kwargs = _with_stream(*rec[i], slot, stream)
                next_streams.append(_block_output(block(*args, **kwargs)))
            streams = next_streams
    report.mode = f"sequential over {len(blocks)} blocks at {blocks_name!r}"
    return handled


@torch.no_grad()
def _single_pass_norms(model, linears: dict, batches: list) -> dict:
    collector = _NormCollector(linears)
    try:
        for batch in batches:
            run_batch_output(model, batch)
    finally:
        collector.remove()
    return collector.norms()


def sparsify_(model: torch.nn.Module, config: Optional[Sparse24Config] = None,
              calib_data: Optional[Iterable] = None) -> SparsifyReport:
    """Prune `model`'s nn.Linear layers in place (each becomes a training-form SparseLinear).

    calib_data (method="wanda"): an iterable of batches: dicts (model(**batch)), tuples/lists
    (model(*batch)) or tensors (model(batch)). Layers matching config.skip, with in_features not a
    multiple of m (structured), or that never run on calib_data are skipped, with the reason in the
    report. Works on any nn.Module, Hugging Face models included."""
    config = config or Sparse24Config()
    if not isinstance(config, Sparse24Config):
        raise ValueError(f"sparsify_: config must be a Sparse24Config, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"sparsify_: model must be an nn.Module, got {type(model).__name__}")
    selected, skipped = _select(model, config)
    report = SparsifyReport(method=config.method, pattern=config.pattern, mode="no calibration (magnitude)",
                            skipped=skipped)
    if config.method == "magnitude":
        for name, lin in selected.items():
            _prune(model, name, lin, config, None, report)
    else:
        if calib_data is None:
            raise ValueError("sparsify_: method='wanda' needs calib_data (an iterable of model inputs); "
                             "use method='magnitude' to prune without data")
        if isinstance(calib_data, (torch.Tensor, dict)):
            raise ValueError("sparsify_: calib_data must be an iterable of batches (e.g. a list), got a single "
                             f"{type(calib_data).__name__}; wrap it in a list")
        batches = list(calib_data if config.max_calib_batches is None
                       else itertools.islice(calib_data, config.max_calib_batches))
        if not batches:
            raise ValueError("sparsify_: calib_data yielded no batches")
        was_training = model.training
        model.eval()
        try:
            handled = None
            found = find_blocks(model) if config.sequential else None
            if found is not None:
                handled = _sequential_wanda(model, found[0], found[1], batches, selected, config, report)
            elif config.sequential:
                report.mode = "single pass (no list of repeated blocks found)"
            else:
                report.mode = "single pass (sequential=False)"
            rest = {name: lin for name, lin in selected.items() if handled is None or name not in handled}
            if rest:
                norms = _single_pass_norms(model, rest, batches)
                for name, lin in rest.items():
                    _prune(model, name, lin, config, norms.get(name), report)
                if handled is not None:
                    report.mode += f"; {len(rest)} Linear(s) outside the blocks from one full pass"
        finally:
            model.train(was_training)
    total = sum(model.get_submodule(n).weight.numel() for n in report.pruned)
    zeros = sum(report.layer_sparsity[n] * model.get_submodule(n).weight.numel() for n in report.pruned)
    report.sparsity = zeros / total if total else 0.0
    return report


# ---------------------------------------------------------------- recovery and packing

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

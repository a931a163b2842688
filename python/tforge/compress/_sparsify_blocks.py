"""sparsify_'s sequential Wanda calibration, for method="wanda".

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

import torch

from tforge.compress._sparsify_prune import _NormCollector, _prune
from tforge.compress.calibration import run_batch_output

_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values", "layer_past")


class _StopForward(Exception):
    """Raised by a pre-hook once the inputs it needs are recorded."""


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

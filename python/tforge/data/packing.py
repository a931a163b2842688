"""Causal-LM batches packed from a token file, with document boundaries kept.

The token stream (every document back to back, as tokenize_to_shards wrote
it) is cut into fixed blocks of block_size tokens; the tail shorter than a
block is dropped. A batch stacks batch_size blocks: input_ids (B, T) int64,
labels = input_ids (the model shifts), and cu_seqlens (D+1,) int32 over the
flattened B*T tokens marking where documents start and end inside the blocks
(each block edge is a boundary too), so attention_varlen never crosses a
document; max_seqlen is the longest such segment.

Order: a permutation of the blocks drawn from (seed, epoch); rank r of
world_size takes every world_size-th block of it, so ranks are disjoint.
drop_last=True keeps only full batches with the same count on every rank;
drop_last=False covers every block by repeating a few at the end (as
DistributedSampler does) and may end with a smaller batch.
The position (epoch, next batch) is saved by state_dict() and restored by
load_state_dict(): the resumed run yields exactly the batches the original
run had not yet yielded.

``StreamingLMDataset`` packs straight from a (streaming) corpus, tokenising
as it goes, so training can start before or without a full tokenisation pass.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Iterator, Union

import numpy as np
import torch

from tforge.data.tokenize import TokenFile

__all__ = ["PackedLMDataset", "StreamingLMDataset", "epoch_rng", "segments_to_cu_seqlens"]


def epoch_rng(seed: int, epoch: int, *more: int) -> np.random.Generator:
    """The generator for one (seed, epoch, ...) position: independent of call history."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), *[int(m) for m in more]])


def segments_to_cu_seqlens(lengths: Union[list, np.ndarray]) -> torch.Tensor:
    """(D,) segment lengths -> (D+1,) int32 cumulative offsets starting at 0."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    return torch.from_numpy(out.astype(np.int32))


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


class _Resumable:
    """Epoch + next-batch position shared by the resumable batch iterables."""

    epoch: int
    _batch: int

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; a no-op when already in that epoch (so a trainer calling
        set_epoch after load_state_dict keeps the resumed position)."""
        epoch = _check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.epoch, self._batch = epoch, 0

    def _guard(self) -> dict:  # settings a saved position is only valid for
        return {}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self._batch, **self._guard()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._guard()
        for k, v in mine.items():
            if k in state and state[k] != v:
                raise ValueError(f"{type(self).__name__}.load_state_dict: saved {k}={state[k]!r} does not match "
                                 f"this dataset's {k}={v!r}; the position would point at different data")
        self.epoch = _check_int("state['epoch']", state["epoch"], 0)
        self._batch = _check_int("state['batch']", state["batch"], 0)


class PackedLMDataset(_Resumable):
    """Iterable of causal-LM batches cut from a TokenFile (see the module docstring).
    Each ``for`` loop runs the rest of the current epoch, then moves to the next epoch."""

    def __init__(self, token_file: Union[TokenFile, str, os.PathLike], block_size: int, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True, shuffle: bool = True,
                 respect_documents: bool = True):
        self.tokens_file = token_file if isinstance(token_file, TokenFile) else TokenFile(token_file)
        self.block_size = _check_int("block_size", block_size, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={self.world_size}, got {rank}")
        self.seed, self.drop_last, self.shuffle = int(seed), bool(drop_last), bool(shuffle)
        self.respect_documents = bool(respect_documents)
        self.num_blocks = self.tokens_file.num_tokens // self.block_size
        self.epoch, self._batch = 0, 0
        if len(self) == 0:
            raise ValueError(f"PackedLMDataset: {self.tokens_file.num_tokens} tokens make {self.num_blocks} blocks of "
                             f"{self.block_size}, too few for one batch of {self.batch_size} on each of "
                             f"{self.world_size} ranks")

    def _guard(self) -> dict:
        return {"block_size": self.block_size, "batch_size": self.batch_size, "world_size": self.world_size,
                "num_blocks": self.num_blocks, "seed": self.seed}

    @property
    def dropped_tokens(self) -> int:
        """Tokens after the last full block (never seen)."""
        return self.tokens_file.num_tokens - self.num_blocks * self.block_size

    def __len__(self) -> int:
        per_rank = self.num_blocks // self.world_size if self.drop_last else -(-self.num_blocks // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def rank_blocks(self, epoch: int) -> np.ndarray:
        """Block indices this rank visits in `epoch`, in order."""
        n, w = self.num_blocks, self.world_size
        order = epoch_rng(self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)
        if self.drop_last:
            order = order[: len(self) * self.batch_size * w]
        else:
            total = -(-n // w) * w
            if total > n:  # repeat a few blocks so every rank gets the same count
                order = np.concatenate([order, order[: total - n]])
        return order[self.rank::w]

    def make_batch(self, blocks: np.ndarray) -> dict:
        """The batch of these block indices."""
        T = self.block_size
        toks = self.tokens_file.tokens
        ids = np.stack([toks[b * T:(b + 1) * T] for b in blocks]).astype(np.int64)
        input_ids = torch.from_numpy(ids)
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if self.respect_documents:
            offsets = self.tokens_file.offsets
            lengths: list[int] = []
            for b in blocks:
                s, e = int(b) * T, (int(b) + 1) * T
                lo = int(np.searchsorted(offsets, s, side="right"))
                hi = int(np.searchsorted(offsets, e, side="left"))
                cuts = np.concatenate([[s], np.asarray(offsets[lo:hi], dtype=np.int64), [e]])
                lengths.extend(np.diff(cuts).tolist())
            batch["cu_seqlens"] = segments_to_cu_seqlens(lengths)
            batch["max_seqlen"] = int(max(lengths))
        return batch

    def __iter__(self) -> Iterator[dict]:
        nb = len(self)
        if self._batch >= nb:  # the previous epoch was consumed to its end
            self.epoch, self._batch = self.epoch + 1, 0
        blocks = self.rank_blocks(self.epoch)
        B = self.batch_size
        while self._batch < nb:
            k = self._batch
            batch = self.make_batch(blocks[k * B:(k + 1) * B])
            self._batch = k + 1  # saved state = "next batch to yield"
            yield batch
        self.epoch, self._batch = self.epoch + 1, 0


class StreamingLMDataset(_Resumable):
    """Causal-LM batches packed on the fly from a corpus (a `datasets` IterableDataset or Dataset
    with a "text" column, or a list of texts), tokenised in batches as it is read.

    Documents are dealt to ranks round-robin (document i goes to rank i % world_size); each rank
    concatenates its documents (+EOS) and cuts blocks of block_size; blocks pass through a
    shuffle buffer (shuffle_buffer blocks, seeded by (seed, epoch, rank)). One pass over the
    corpus is one epoch; ranks may end an epoch a few batches apart, so with DDP bound training
    by max_steps. Resume (load_state_dict) re-reads the corpus and skips the batches already
    yielded: exact, at the cost of re-tokenising them."""

    def __init__(self, corpus: Any, tokenizer: Any, block_size: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle_buffer: int = 0, append_eos: bool = True,
                 respect_documents: bool = True, encode_batch_size: int = 256):
        self.corpus, self.tokenizer = corpus, tokenizer
        self.block_size = _check_int("block_size", block_size, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={self.world_size}, got {rank}")
        self.seed, self.shuffle_buffer = int(seed), _check_int("shuffle_buffer", shuffle_buffer, 0)
        self.respect_documents = bool(respect_documents)
        self.encode_batch_size = _check_int("encode_batch_size", encode_batch_size, 1)
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else getattr(tokenizer, "sep_id", None)
        self.eos_id = eos if append_eos else None
        self.epoch, self._batch = 0, 0

    def _guard(self) -> dict:
        return {"block_size": self.block_size, "batch_size": self.batch_size, "world_size": self.world_size,
                "seed": self.seed}

    def _texts(self) -> Iterator[str]:
        rows = self.corpus
        if hasattr(rows, "set_epoch"):  # shuffled IterableDatasets reshuffle per epoch
            rows.set_epoch(self.epoch)
        for i, row in enumerate(rows):
            if i % self.world_size != self.rank:
                continue
            t = row["text"] if isinstance(row, dict) else row
            if t and not t.isspace():
                yield t

    def _blocks(self) -> Iterator[tuple[np.ndarray, list[int]]]:
        """(block tokens, segment lengths inside the block)."""
        T = self.block_size
        buf: list[int] = []
        starts: list[int] = []  # document starts inside buf
        texts = self._texts()
        while True:
            chunk = list(itertools.islice(texts, self.encode_batch_size))
            if not chunk:
                break
            for ids in self.tokenizer.encode_batch(chunk):
                if not ids:
                    continue
                starts.append(len(buf))
                buf.extend(ids)
                if self.eos_id is not None:
                    buf.append(self.eos_id)
            while len(buf) >= T:
                inner = [s for s in starts if 0 < s < T]
                cuts = [0, *inner, T]
                yield np.asarray(buf[:T], dtype=np.int64), np.diff(cuts).tolist()
                buf = buf[T:]
                starts = [s - T for s in starts if s >= T]

    def _shuffled(self) -> Iterator[tuple[np.ndarray, list[int]]]:
        if self.shuffle_buffer <= 1:
            yield from self._blocks()
            return
        rng = epoch_rng(self.seed, self.epoch, self.rank)
        pool: list = []
        for blk in self._blocks():
            if len(pool) < self.shuffle_buffer:
                pool.append(blk)
                continue
            j = int(rng.integers(len(pool)))
            pool[j], blk = blk, pool[j]
            yield blk
        rng.shuffle(pool)
        yield from pool

    def __iter__(self) -> Iterator[dict]:
        B, skip = self.batch_size, self._batch
        k = 0
        blocks = self._shuffled()
        while True:
            group = list(itertools.islice(blocks, B))
            if len(group) < B:
                break
            if k >= skip:
                ids = torch.from_numpy(np.stack([g[0] for g in group]))
                batch = {"input_ids": ids, "labels": ids.clone()}
                if self.respect_documents:
                    lengths = [x for g in group for x in g[1]]
                    batch["cu_seqlens"] = segments_to_cu_seqlens(lengths)
                    batch["max_seqlen"] = int(max(lengths))
                self._batch = k + 1
                yield batch
            k += 1
        self.epoch, self._batch = self.epoch + 1, 0

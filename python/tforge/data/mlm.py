"""Masked-language-model batches: BERT's 15% / 80-10-10 masking, drawn anew each epoch.

``mlm_mask`` picks each maskable token with probability `prob`; of those,
80% become [MASK], 10% a random (non-special) token, 10% stay as they are;
labels hold the original id at picked positions and -100 elsewhere.
Special tokens ([CLS], [SEP], [PAD], BOS/EOS, [MASK], UNK) and padding
(attention_mask == 0) are never picked.

``MLMDataset`` packs blocks from a token file like PackedLMDataset and masks
each batch with a generator seeded by (seed, epoch, batch index, rank): a
different mask every epoch (dynamic masking), yet the same one again after a
resume, so runs are reproducible.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor

from tforge.data.packing import PackedLMDataset, _Resumable
from tforge.data.tokenize import TokenFile

__all__ = ["mlm_mask", "special_token_ids", "MLMDataset"]


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids that MLM never masks: the tokenizer's special_ids plus every named special id it has."""
    ids = set(int(i) for i in getattr(tokenizer, "special_ids", ()) or ())
    for name in ("pad_id", "unk_id", "bos_id", "eos_id", "cls_id", "sep_id", "mask_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            ids.add(int(v))
    return ids


def mlm_mask(input_ids: Tensor, tokenizer: Any, prob: float = 0.15, generator: Optional[torch.Generator] = None,
             attention_mask: Optional[Tensor] = None, special_ids: Optional[set[int]] = None,
             mask_ratio: float = 0.8, random_ratio: float = 0.1) -> tuple[Tensor, Tensor]:
    """(masked input_ids, labels) for integer `input_ids` of any shape (see the module docstring).
    `generator` must live on input_ids' device (a CPU generator for CPU tensors)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mlm_mask: prob must be in [0, 1], got {prob}")
    if mask_ratio < 0 or random_ratio < 0 or mask_ratio + random_ratio > 1:
        raise ValueError(f"mlm_mask: need mask_ratio, random_ratio >= 0 with a sum <= 1, got {mask_ratio}, "
                         f"{random_ratio}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"mlm_mask: input_ids must be an integer tensor, got {input_ids.dtype}")
    mask_id = getattr(tokenizer, "mask_id", None)
    if mask_id is None:
        raise ValueError("mlm_mask: the tokenizer has no [MASK] token (train the sentencepiece model with mlm=True "
                         "or use a BERT tokenizer)")
    vocab_size = int(tokenizer.vocab_size)
    special = special_token_ids(tokenizer) if special_ids is None else set(special_ids)
    dev = input_ids.device
    special_t = torch.tensor(sorted(special), dtype=input_ids.dtype, device=dev)
    candidates = ~torch.isin(input_ids, special_t)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"mlm_mask: attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")
        candidates &= attention_mask.bool()
    picked = (torch.rand(input_ids.shape, generator=generator, device=dev) < prob) & candidates
    how = torch.rand(input_ids.shape, generator=generator, device=dev)
    to_mask = picked & (how < mask_ratio)
    to_random = picked & (how >= mask_ratio) & (how < mask_ratio + random_ratio)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=dev)
    allowed[[i for i in special if 0 <= i < vocab_size]] = False
    allowed_ids = allowed.nonzero().flatten().to(input_ids.dtype)
    random_ids = allowed_ids[torch.randint(len(allowed_ids), input_ids.shape, generator=generator, device=dev)]
    out = input_ids.clone()
    out[to_mask] = mask_id
    out[to_random] = random_ids[to_random]
    labels = torch.full_like(input_ids, -100, dtype=torch.int64)
    labels[picked] = input_ids[picked].to(torch.int64)
    return out, labels


class MLMDataset(_Resumable):
    """MLM batches from a token file: blocks as in PackedLMDataset, masked per batch.
    Yields input_ids (B, T), labels (B, T) and either cu_seqlens + max_seqlen (documents kept
    apart, respect_documents=True) or attention_mask (B, T) of ones."""

    def __init__(self, token_file: Union[TokenFile, str, os.PathLike], tokenizer: Any, block_size: int,
                 batch_size: int, prob: float = 0.15, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, shuffle: bool = True, respect_documents: bool = True):
        if getattr(tokenizer, "mask_id", None) is None:
            raise ValueError("MLMDataset: the tokenizer has no [MASK] token (train the sentencepiece model with "
                             "mlm=True or use a BERT tokenizer)")
        if not 0.0 < prob < 1.0:
            raise ValueError(f"MLMDataset: prob must be in (0, 1), got {prob}")
        self.blocks = PackedLMDataset(token_file, block_size, batch_size, seed=seed, rank=rank,
                                      world_size=world_size, drop_last=drop_last, shuffle=shuffle,
                                      respect_documents=respect_documents)
        self.tokenizer, self.prob, self.seed, self.rank = tokenizer, float(prob), int(seed), int(rank)
        self.special = special_token_ids(tokenizer)

    # position lives in the block iterator
    @property
    def epoch(self) -> int:
        return self.blocks.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.blocks.epoch = value

    @property
    def _batch(self) -> int:
        return self.blocks._batch

    @_batch.setter
    def _batch(self, value: int) -> None:
        self.blocks._batch = value

    def _guard(self) -> dict:
        return {**self.blocks._guard(), "prob": self.prob}

    def __len__(self) -> int:
        return len(self.blocks)

    def mask_batch(self, batch: dict, epoch: int, index: int) -> dict:
        seed = np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch, index, self.rank]).generate_state(1, np.uint64)[0]
        gen = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
        ids, labels = mlm_mask(batch["input_ids"], self.tokenizer, self.prob, gen, special_ids=self.special)
        out = {"input_ids": ids, "labels": labels}
        if "cu_seqlens" in batch:
            out["cu_seqlens"], out["max_seqlen"] = batch["cu_seqlens"], batch["max_seqlen"]
        else:
            out["attention_mask"] = torch.ones_like(ids)
        return out

    def __iter__(self) -> Iterator[dict]:
        for batch in self.blocks:
            # the block iterator has already advanced to the next batch
            yield self.mask_batch(batch, self.blocks.epoch, self.blocks._batch - 1)

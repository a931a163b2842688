"""GPT: a decoder-only Transformer (pre-norm, GPT-2 style) built from tforge.nn modules.

A block is ln_1 -> tforge.nn.Attention (fused qkv, causal, grouped-query heads, rotary or
learned positions) -> add & ln_2 -> MLP. Each residual add is fused with the norm that
follows it (tforge.nn.add_norm). Packed batches (cu_seqlens marking document boundaries)
run varlen attention, so attention never crosses a document and nothing is padded. The
Linear layers are torch.nn.Linear; the LM loss is tforge.cross_entropy (fused: the logits'
gradient is written while the loss is computed).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tforge.models.config import GPTConfig
from tforge.models.output import ModelOutput
from tforge.models.parts import IGNORE_INDEX, check_cu_seqlens, resolve_max_seqlen
from tforge.nn.attention import Attention
from tforge.nn.norm import LayerNorm, RMSNorm, add_norm, make_norm
from tforge.nn.rotary import RotaryEmbedding, positions_from_cu_seqlens
from tforge.ops.cross_entropy import cross_entropy


class MLP(torch.nn.Module):
    """GELU (tanh) MLP, or SwiGLU with the gate and up projections fused into one Linear ``fc``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.fc = torch.nn.Linear(cfg.d_model, cfg.d_ff * (2 if self.swiglu else 1), bias=cfg.bias)
        self.proj = torch.nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        if self.swiglu:
            self.fc.lora_segments = (("gate", cfg.d_ff), ("up", cfg.d_ff))

    def forward(self, x: Tensor) -> Tensor:
        if self.swiglu:
            gate, up = self.fc(x).chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(torch.nn.Module):
    """Pre-norm block. forward takes the already normalised input h and the residual stream x and
    returns the MLP branch and the updated stream; the caller fuses the last add with the next norm."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = Attention(cfg.d_model, cfg.n_head, cfg.n_kv_head, bias=cfg.bias, causal=True,
                              rotary=cfg.pos == "rotary", rotary_base=cfg.rope_theta)
        self.ln_2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = torch.nn.Dropout(cfg.dropout) if cfg.dropout > 0 else torch.nn.Identity()

    def forward(self, h: Tensor, x: Tensor, positions: Tensor, cu_seqlens: Optional[Tensor],
                max_seqlen: Optional[int]) -> Tuple[Tensor, Tensor]:
        a = self.drop(self.attn(h, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, positions=positions))
        h, x = add_norm(a, x, self.ln_2)
        return self.drop(self.mlp(h)), x


class GPT(torch.nn.Module):
    """Decoder-only language model.

    forward(input_ids (B, T), labels=None, cu_seqlens=None, max_seqlen=None) -> ModelOutput with
    logits (B, T, vocab) and, given labels, the mean next-token cross-entropy: position t is
    scored on labels[t + 1] (labels == input_ids for plain LM; -100 ignored). cu_seqlens (int32,
    documents + 1 offsets over the flattened B * T tokens) marks document boundaries: attention
    stays inside a document, positions restart at 0 in each, and the last token of a document
    predicts nothing.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.wte = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = torch.nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = torch.nn.Dropout(cfg.dropout) if cfg.dropout > 0 else torch.nn.Identity()
        self.blocks = torch.nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.lm_head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, unit norms; the projections that write into
        the residual stream (attn.o, mlp.proj) use std 0.02 / sqrt(2 * n_layer)."""
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, m in self.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(m.weight, 0.0, resid_std if name.endswith(("attn.o", "mlp.proj")) else 0.02)
                if getattr(m, "bias", None) is not None:
                    torch.nn.init.zeros_(m.bias)
            elif isinstance(m, (LayerNorm, RMSNorm, RotaryEmbedding)):
                m.reset_parameters()

    def hidden_states(self, input_ids: Tensor, cu_seqlens: Optional[Tensor] = None, max_seqlen=None) -> Tensor:
        """Final-norm hidden states (B, T, d_model) (the LM head's input)."""
        cfg = self.config
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError(f"GPT: input_ids must be a 2-D (batch, seq) tensor, got "
                             f"{tuple(getattr(input_ids, 'shape', ()))}")
        B, T = input_ids.shape
        ids = input_ids
        if cu_seqlens is not None:  # packed: (B * T,) tokens, positions restart in every document
            cu_seqlens = check_cu_seqlens("GPT", cu_seqlens, B * T)
            max_seqlen = resolve_max_seqlen(cu_seqlens, max_seqlen)
            ids = input_ids.reshape(B * T)
            positions = positions_from_cu_seqlens(cu_seqlens, B * T)
        else:
            max_seqlen, positions = T, torch.arange(T, device=ids.device)
        if cfg.pos == "learned" and max_seqlen > cfg.max_seq_len:
            raise ValueError(f"GPT: sequence of {max_seqlen} tokens exceeds max_seq_len {cfg.max_seq_len} "
                             "(learned positions)")
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        h = self.blocks[0].ln_1(x)
        for i, block in enumerate(self.blocks):
            m, x = block(h, x, positions, cu_seqlens, max_seqlen)
            h, x = add_norm(m, x, self.blocks[i + 1].ln_1 if i + 1 < len(self.blocks) else self.ln_f)
        return h.view(B, T, -1)

    def forward(self, input_ids: Tensor, labels: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                max_seqlen=None) -> ModelOutput:
        logits = self.lm_head(self.hidden_states(input_ids, cu_seqlens, max_seqlen))
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"GPT: labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(labels.shape)}")
            loss = cross_entropy(logits.view(-1, logits.shape[-1]), shift_labels(labels, cu_seqlens), IGNORE_INDEX)
        return ModelOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Sample max_new_tokens tokens after input_ids ((B, T) or (T,)); returns the prompt
        followed by the samples. temperature 0 is greedy; top_k keeps the k likeliest tokens.
        Runs in eval mode (restored afterwards); the context is cropped to max_seq_len."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"GPT.generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"GPT.generate: temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"GPT.generate: top_k must be a positive int or None, got {top_k!r}")
        squeeze = input_ids.dim() == 1
        ids = input_ids[None] if squeeze else input_ids
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"GPT.generate: input_ids must be a non-empty (batch, seq) or (seq,) tensor, got "
                             f"{tuple(input_ids.shape)}")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                h = self.hidden_states(ids[:, -self.config.max_seq_len:])
                logits = self.lm_head(h[:, -1]).float()
                if temperature == 0:
                    nxt = logits.argmax(-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.shape[-1]:
                        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
                ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
        finally:
            self.train(was_training)
        return ids[0] if squeeze else ids

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (shared tensors once). non_embedding=True leaves out the lookup tables
        (token and position embeddings), which cost no FLOPs, but keeps the output head (with tied
        embeddings the shared matrix is counted once, as the head), as nanoGPT does."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            if self.wpe is not None:
                total -= self.wpe.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.wte.weight.numel()
        return total

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs per token, forward + backward: 6 N + 12 L d T (N = num_params(), the
        PaLM / nanoGPT rule; the attention term counts the full T x T score matrix)."""
        cfg = self.config
        seq_len = cfg.max_seq_len if seq_len is None else seq_len
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.d_model * seq_len


def shift_labels(labels: Tensor, cu_seqlens: Optional[Tensor] = None) -> Tensor:
    """Targets for next-token prediction, flattened: position t gets labels[t + 1]; the last
    position of every row (or, with cu_seqlens, of every document) gets -100."""
    B, T = labels.shape
    flat = labels.reshape(-1)
    nxt = torch.cat([flat[1:], flat.new_full((1,), IGNORE_INDEX)])
    if cu_seqlens is None:
        return nxt.view(B, T).index_fill(1, torch.tensor([T - 1], device=labels.device), IGNORE_INDEX).view(-1)
    boundary = torch.zeros(B * T + 1, dtype=torch.bool, device=labels.device)
    boundary[cu_seqlens.long()] = True  # position i is a document's last token when i + 1 starts one
    return nxt.masked_fill(boundary[1:], IGNORE_INDEX)

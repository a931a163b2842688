"""GPT: a decoder-only Transformer (pre-norm, GPT-2 style) built from tforge's
ops and plain torch.nn.Linear projections.

Speed choices: one fused qkv Linear whose output is viewed as
(batch, seq, heads, head_dim), tforge's native attention layout, so no
transpose or copy happens before or after attention (rotary rotates q and k in
one go); each residual add is fused with the following norm
(tforge.add_layer_norm / add_rms_norm); packed batches (cu_seqlens marking
document boundaries) run tforge.attention_varlen so attention never crosses a
document and nothing is padded.

CPU training fast paths (eager mode; torch.compile and other devices take the
plain path), chosen from profiles of a training step against a nanoGPT-style
model (benchmarks/bench_train.py):
- fp32 Linear layers run PyTorch's oneDNN matmul (torch.ops.mkldnn._linear_pointwise)
  for the forward and the input gradient: 10-20 % faster than the default
  MKL sgemm at these shapes on the development machine (AVX-512 EPYC); the
  weight gradient stays on mm, which is faster there;
- attention takes the fused qkv tensor and its backward writes dq, dk and dv
  straight into one gradient of qkv's layout (no cat of three gradients);
- the LM loss is a chunked cross-entropy on the logits: one softmax per chunk of
  rows gives the loss and, finished while the chunk is in cache, the logits'
  gradient, so no log-probability tensor, fp32 copy of bf16 logits or
  zero-filled one-hot gradient of the logits' size is materialised (on every
  device; under torch.compile the plain F.cross_entropy form).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from tforge import _native
from tforge.models.config import GPTConfig
from tforge.models.output import ModelOutput
from tforge.nn.norm import LayerNorm, RMSNorm
from tforge.nn.rotary import positions_from_cu_seqlens
from tforge.ops import attention as _attn_ops
from tforge.ops.attention import attention, attention_varlen
from tforge.ops.layer_norm import add_layer_norm
from tforge.ops.rms_norm import add_rms_norm

IGNORE_INDEX = -100


# ---------------------------------------------------------------- shared helpers (BERT uses them too)

def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> torch.nn.Module:
    return LayerNorm(dim, eps=eps, bias=bias) if kind == "layer" else RMSNorm(dim, eps=eps)


def add_norm(branch: Tensor, residual: Tensor, norm: torch.nn.Module) -> Tuple[Tensor, Tensor]:
    """(norm(branch + residual), branch + residual) in one fused kernel. The branch is cast to
    the residual's dtype first (under autocast the branch is bf16, the residual stream fp32)."""
    if branch.dtype != residual.dtype:
        branch = branch.to(residual.dtype)
    if isinstance(norm, RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(residual.dtype).eps
        return add_rms_norm(branch, residual, norm.weight, eps, backend=norm.backend)
    return add_layer_norm(branch, residual, norm.weight, norm.bias, norm.eps, backend=norm.backend)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, out: Optional[Tensor] = None) -> Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if torch.compiler.is_compiling():  # dynamo rejects out= views; inductor fuses this form anyway
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)
    return out


class _Rope(torch.autograd.Function):
    """Rotation is orthogonal: the gradient is the same rotation with -sin, so nothing of x is
    saved and the backward is four fused elementwise passes, not autograd's chain of them."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding in the rotate-half convention (GPT-NeoX / Llama: x * cos + rotate_half(x) * sin
    with cos/sin repeated over both halves), on x (..., heads, head_dim) with cos/sin
    (..., 1, head_dim // 2) in x's dtype. Returns a new contiguous tensor."""
    return _Rope.apply(x, cos, sin)


def resolve_max_seqlen(cu_seqlens: Tensor, max_seqlen) -> int:
    if max_seqlen is None:
        return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
    return int(max_seqlen)


def check_cu_seqlens(model: str, cu_seqlens: Tensor, total: int) -> Tensor:
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{model}: cu_seqlens must be a 1-D tensor of (documents + 1) offsets, got "
                         f"{getattr(cu_seqlens, 'shape', cu_seqlens)!r}")
    if cu_seqlens.dtype != torch.int32:
        cu_seqlens = cu_seqlens.to(torch.int32)
    if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
        if first != 0 or last != total:
            raise ValueError(f"{model}: cu_seqlens must start at 0 and end at the token count {total}, "
                             f"got {first} .. {last}")
    return cu_seqlens


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over targets != -100 (0 when there are none, never NaN), in fp32
    whatever the logits' dtype. Eager mode runs the chunked _ChunkedCrossEntropy; under
    torch.compile the plain form (inductor fuses it)."""
    flat = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    count = (targets != IGNORE_INDEX).sum().clamp_min(1)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _get_current_dispatch_mode() is not None \
            or type(flat) is not torch.Tensor or flat.shape[0] == 0:
        total = F.cross_entropy(flat.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / count
    return _ChunkedCrossEntropy.apply(flat, targets, count, torch.is_grad_enabled() and flat.requires_grad)


def _ce_rows(logits: Tensor) -> int:
    """Rows per chunk: about 1 Mi elements on CPU (the chunk and its fp32 temporaries stay in
    cache), 64 Mi on GPUs (few launches)."""
    elems = 1 << 20 if logits.device.type == "cpu" else 1 << 26
    return max(1, elems // max(1, logits.shape[1]))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """sum over rows with target != -100 of -log softmax(row)[target], divided by count.

    One softmax pass per chunk of rows (ATen's fused kernel, written into the gradient
    buffer) gives both the loss (-log p[target]; rows whose p[target] underflows below 1e-30
    are recomputed exactly with logsumexp) and, when a gradient is needed, the logits'
    gradient (p - one-hot) * valid / count, finished in the forward while the chunk is in
    cache; the backward only scales it by the incoming gradient when that is not 1.
    F.cross_entropy instead writes log-probabilities, zero-fills a one-hot gradient of the
    logits' size and reads both again (and under autocast first copies bf16 logits to fp32)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, count: Tensor, need_grad: bool) -> Tensor:
        n = logits.shape[0]
        rows = _ce_rows(logits)
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        scale = valid.float() / count  # (N,): 0 on ignored rows
        fp32 = logits.dtype == torch.float32
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device) if need_grad else None
        work = None if fp32 and need_grad else torch.empty(min(rows, n), logits.shape[1], dtype=torch.float32,
                                                           device=logits.device)
        p_target = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, rows):
            chunk = logits[s:s + rows]
            probs = grad[s:s + rows] if work is None else work[:chunk.shape[0]]
            torch.ops.aten._softmax.out(chunk if fp32 else chunk.float(), 1, False, out=probs)
            torch.gather(probs, 1, safe[s:s + rows, None], out=p_target[s:s + rows, None])
            if need_grad:  # (p - one-hot) * scale, in fp32 while the chunk is in cache
                sc = scale[s:s + rows, None]
                probs.mul_(sc).scatter_add_(1, safe[s:s + rows, None], -sc)
                if work is not None:
                    grad[s:s + rows].copy_(probs)
        row_loss = -p_target.log()
        tiny = (p_target < 1e-30) & valid
        if bool(tiny.any()):  # underflow: the exact value from logsumexp for those rows
            idx = tiny.nonzero().squeeze(1)
            exact = torch.logsumexp(logits[idx].float(), -1) - logits[idx, safe[idx]].float()
            row_loss = row_loss.index_copy(0, idx, exact)
        if need_grad:
            ctx.save_for_backward(grad)
        return torch.where(valid, row_loss, 0.0).sum() / count

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        (grad,) = ctx.saved_tensors
        if g.device.type == "cpu" and float(g) == 1.0:
            return grad, None, None, None
        return grad * g.to(grad.dtype), None, None, None


# ---------------------------------------------------------------- CPU Linear through oneDNN

CPU_ONEDNN_LINEAR = True  # module switch (benchmarks flip it to measure the difference)
_onednn_state: Optional[bool] = None


def _onednn_available() -> bool:
    """Does this PyTorch have a working oneDNN linear (probed once)?"""
    global _onednn_state
    if _onednn_state is None:
        try:
            ok = bool(torch.backends.mkldnn.is_available())
            if ok:
                got = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
                ok = got.shape == (2, 4) and bool((got == 3).all())
        except (AttributeError, RuntimeError, TypeError):
            ok = False
        _onednn_state = ok
    return _onednn_state


def _no_module_hooks(mod: torch.nn.Module) -> bool:
    from torch.nn.modules import module as _m
    return not (mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks or mod._backward_pre_hooks
                or getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None)
                or getattr(_m, "_global_backward_hooks", None) or getattr(_m, "_global_backward_pre_hooks", None))


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with oneDNN for y and dx, mm for dW (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.ops.mkldnn._linear_pointwise(x2, weight, bias, "none", [], "")
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        x2, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.mkldnn._linear_pointwise(dy2, weight.t(), None, "none", [], "")
            dx = dx.view(*dy.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            dw = dy2.t().mm(x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def linear(mod: torch.nn.Module, x: Tensor) -> Tensor:
    """mod(x). A plain torch.nn.Linear (no subclass, wrapper or hook: LoRA, quantised or
    hooked modules run their own forward) on fp32 CPU tensors in eager mode without autocast
    runs _OneDnnLinear instead, with the same result up to fp32 rounding."""
    if (CPU_ONEDNN_LINEAR and type(mod) is torch.nn.Linear and type(x) is torch.Tensor
            and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2 and x.numel() > 0
            and mod.weight.dtype == torch.float32 and type(mod.weight) is torch.nn.Parameter
            and (mod.bias is None or type(mod.bias) is torch.nn.Parameter) and "forward" not in mod.__dict__
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and _get_current_dispatch_mode() is None and _no_module_hooks(mod)
            and _onednn_available()):
        return _OneDnnLinear.apply(x, mod.weight, mod.bias)
    return mod(x)


# ---------------------------------------------------------------- attention from the fused qkv (CPU)

def _attention_bwd_into(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        cu: Optional[Tensor], max_seqlen: int, scale: float, causal: bool, dq: Tensor, dk: Tensor,
                        dv: Tensor) -> None:
    """tforge's CPU attention backward, writing into the given (strided) dq, dk, dv."""
    varlen = cu is not None
    desc = _attn_ops._desc
    params, _ = _attn_ops._params(q, k, None, cu, cu, max_seqlen, max_seqlen, scale, causal, (-1, -1))
    _native.call(
        _native.require().attention_bwd_cpu,
        q=desc(q, varlen), k=desc(k, varlen), v=desc(v, varlen), out=desc(out, varlen), dout=desc(dout, varlen),
        lse=lse, dq=desc(dq, varlen), dk=desc(dk, varlen), dv=desc(dv, varlen), params=params,
        deterministic=False, threads=torch.get_num_threads())


class _QKVAttention(torch.autograd.Function):
    """Attention (rotary optional) from the fused qkv (..., nq + 2 nk, D) tensor (padded
    (B, T, ...) or packed (N, ...) with cu_seqlens); its backward writes dq, dk, dv into one
    gradient of qkv's layout. With rotary, dq and dk are rotated back (-sin) straight into
    that gradient. BERT uses it too (causal=False)."""

    @staticmethod
    def forward(ctx, qkv: Tensor, cos: Optional[Tensor], sin: Optional[Tensor], cu: Optional[Tensor],
                max_seqlen: int, nq: int, nk: int, causal: bool) -> Tensor:
        if cos is not None:
            qk = _rotate(qkv[..., :nq + nk, :], cos, sin)
            q, k = qk[..., :nq, :], qk[..., nq:, :]
        else:
            qk = None
            q, k = qkv[..., :nq, :], qkv[..., nq:nq + nk, :]
        v = qkv[..., nq + nk:, :]
        scale = 1.0 / math.sqrt(qkv.shape[-1])
        out, lse = _attn_ops._fwd_native(q, k, v, None, cu, cu, max_seqlen, max_seqlen, scale, causal, (-1, -1),
                                         "cpu")
        ctx.save_for_backward(qkv, qk, out, lse, cu, cos, sin)
        ctx.dims = (nq, nk, max_seqlen, scale, causal)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        qkv, qk, out, lse, cu, cos, sin = ctx.saved_tensors
        nq, nk, max_seqlen, scale, causal = ctx.dims
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
        src = qk if qk is not None else qkv
        q, k, v = src[..., :nq, :], src[..., nq:nq + nk, :], qkv[..., nq + nk:, :]
        dqk = torch.empty(qk.shape, dtype=qk.dtype, device=qk.device) if qk is not None else dqkv
        _attention_bwd_into(dout, q, k, v, out, lse, cu, max_seqlen, scale, causal, dqk[..., :nq, :],
                            dqk[..., nq:nq + nk, :], dqkv[..., nq + nk:, :])
        if qk is not None:
            _rotate(dqk, cos, -sin, out=dqkv[..., :nq + nk, :])
        return dqkv, None, None, None, None, None, None, None


def _qkv_attention_ok(qkv: Tensor) -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _get_current_dispatch_mode() is not None:
        return False
    if type(qkv) is not torch.Tensor or qkv.device.type != "cpu" or qkv.numel() == 0:
        return False
    try:
        return _attn_ops._resolve("attention", qkv, None) == "cpu"
    except ValueError:
        return False


# ---------------------------------------------------------------- modules

class CausalSelfAttention(torch.nn.Module):
    """Fused qkv -> (B, T, H, D) views -> rotary on q and k together -> tforge attention -> o."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = torch.nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.bias)
        self.o = torch.nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        # What tforge.models.lora.apply_lora may target inside the fused projection.
        self.qkv.lora_segments = (("q", cfg.n_head * cfg.head_dim), ("k", cfg.n_kv_head * cfg.head_dim),
                                  ("v", cfg.n_kv_head * cfg.head_dim))
        self.o.lora_role = "o"

    def forward(self, h: Tensor, rot: Optional[Tuple[Tensor, Tensor]], cu_seqlens: Optional[Tensor],
                max_seqlen: int) -> Tensor:
        lead = h.shape[:-1]  # (B, T) padded, (total,) packed
        nq, nk = self.n_head, self.n_kv_head
        qkv = linear(self.qkv, h).view(*lead, nq + 2 * nk, self.head_dim)
        if _qkv_attention_ok(qkv):  # CPU eager: straight from qkv; dq, dk, dv land in one gradient
            cos = sin = None
            if rot is not None:
                cos, sin = (t.to(qkv.dtype) for t in rot)
            longest = max_seqlen if cu_seqlens is not None else qkv.shape[1]
            out = _QKVAttention.apply(qkv, cos, sin, cu_seqlens, longest, nq, nk, True)
            return linear(self.o, out.view(*lead, nq * self.head_dim))
        # split (not slicing): its backward is one cat of dq, dk, dv instead of a zero fill plus an add per slice
        if rot is not None:
            cos, sin = rot
            if cos.dtype != qkv.dtype:  # autocast: rotate in the activations' dtype
                cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
            qk, v = qkv.split([nq + nk, nk], dim=-2)
            q, k = rope(qk, cos, sin).split([nq, nk], dim=-2)
        else:
            q, k, v = qkv.split([nq, nk, nk], dim=-2)
        if cu_seqlens is None:
            out = attention(q, k, v, causal=True)
        else:
            out = attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True)
        return linear(self.o, out.reshape(*lead, nq * self.head_dim))


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
            gate, up = linear(self.fc, x).chunk(2, dim=-1)
            return linear(self.proj, F.silu(gate) * up)
        return linear(self.proj, F.gelu(linear(self.fc, x), approximate="tanh"))


class Block(torch.nn.Module):
    """Pre-norm block. forward takes the already normalised input h and the residual stream x and
    returns the MLP branch and the updated stream; the caller fuses the last add with the next norm."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = torch.nn.Dropout(cfg.dropout) if cfg.dropout > 0 else torch.nn.Identity()

    def forward(self, h: Tensor, x: Tensor, rot, cu_seqlens, max_seqlen) -> Tuple[Tensor, Tensor]:
        a = self.drop(self.attn(h, rot, cu_seqlens, max_seqlen))
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
        if cfg.pos == "rotary":
            inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32)
                                                 / cfg.head_dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
        else:
            self.inv_freq = None
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
                std = resid_std if name.endswith(("attn.o", "mlp.proj")) else 0.02
                torch.nn.init.normal_(m.weight, 0.0, std)
                if getattr(m, "bias", None) is not None:
                    torch.nn.init.zeros_(m.bias)
            elif isinstance(m, (LayerNorm, RMSNorm)):
                m.reset_parameters()
        if self.inv_freq is not None and self.inv_freq.device.type != "meta":
            cfg = self.config
            self.inv_freq.copy_(1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32,
                                                                       device=self.inv_freq.device) / cfg.head_dim)))

    # ------------------------------------------------------------ forward

    def _positions(self, shape, cu_seqlens: Optional[Tensor], device) -> Tensor:
        if cu_seqlens is not None:
            return positions_from_cu_seqlens(cu_seqlens, shape[0])
        return torch.arange(shape[1], device=device)

    def hidden_states(self, input_ids: Tensor, cu_seqlens: Optional[Tensor] = None,
                      max_seqlen=None) -> Tensor:
        """Final-norm hidden states (B, T, d_model) (the LM head's input)."""
        cfg = self.config
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError(f"GPT: input_ids must be a 2-D (batch, seq) tensor, got "
                             f"{tuple(getattr(input_ids, 'shape', ()))}")
        B, T = input_ids.shape
        if cu_seqlens is not None:
            cu_seqlens = check_cu_seqlens("GPT", cu_seqlens, B * T)
            max_seqlen = resolve_max_seqlen(cu_seqlens, max_seqlen)
            lead = (B * T,)
            ids = input_ids.reshape(B * T)
            longest = max_seqlen
        else:
            lead, ids, longest = (B, T), input_ids, T
        if cfg.pos == "learned" and longest > cfg.max_seq_len:
            raise ValueError(f"GPT: sequence of {longest} tokens exceeds max_seq_len {cfg.max_seq_len} "
                             "(learned positions)")
        x = self.wte(ids)
        rot = None
        if cfg.pos == "learned":
            x = x + self.wpe(self._positions(lead, cu_seqlens, ids.device))
        else:
            freqs = self._positions(lead, cu_seqlens, ids.device).float()[:, None] * self.inv_freq
            rot = (freqs.cos()[:, None, :], freqs.sin()[:, None, :])  # (S, 1, D/2) fp32
        x = self.drop(x)
        h = self.blocks[0].ln_1(x)
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            m, x = block(h, x, rot, cu_seqlens, max_seqlen)
            h, x = add_norm(m, x, self.blocks[i + 1].ln_1 if i + 1 < n else self.ln_f)
        return h.view(B, T, -1)

    def forward(self, input_ids: Tensor, labels: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                max_seqlen=None) -> ModelOutput:
        h = self.hidden_states(input_ids, cu_seqlens, max_seqlen)
        logits = linear(self.lm_head, h)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"GPT: labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(labels.shape)}")
            loss = lm_loss(logits, shift_labels(labels, cu_seqlens))
        return ModelOutput(loss=loss, logits=logits)

    # ------------------------------------------------------------ generation

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

    # ------------------------------------------------------------ accounting

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (shared tensors once). non_embedding=True leaves out the lookup tables
        (token and position embeddings), which cost no FLOPs, but keeps the output head (with tied
        embeddings the shared matrix is counted once, as the head), as nanoGPT does."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
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

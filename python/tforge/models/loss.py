"""The language-model loss (temporary home, until the public tforge.cross_entropy op replaces it):
lm_loss(logits, targets), a chunked cross-entropy on the logits, moved unchanged from models/gpt.py.

One softmax pass per chunk of rows gives the loss and, finished while the chunk is in cache, the
logits' gradient, so no log-probability tensor, fp32 copy of bf16 logits or zero-filled one-hot
gradient of the logits' size is materialised (on every device; under torch.compile the plain
F.cross_entropy form).
"""
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from tforge.models.parts import IGNORE_INDEX


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

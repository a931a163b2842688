"""Linear layer: ``y = x @ weight^T + bias``.

``linear_ref`` is the pure-PyTorch reference (fp32 upcast) that tests compare
against. ``tforge::linear`` is a torch.library custom op (fake impl and
autograd registered; the backward is ``tforge::linear_backward``) so it traces
under torch.compile(fullgraph=True); ``linear`` below picks the backend.

Backends: ``cpu`` runs fp32 CPU GEMMs for y and dx through PyTorch's oneDNN
matmul, ``torch.ops.mkldnn._linear_pointwise`` -- a private op, so it is used
only after a one-time probe shows it exists and computes x W^T (else F.linear,
silently); dW stays on mm. Other dtypes on ``cpu``, and every other backend
(no tforge GEMM kernel: cuBLAS is the GPU one), run F.linear. Whether the
oneDNN path pays is measured by benchmarks/bench_linear.py
(benchmarks/results/linear.md); this file is the only place tforge touches
that private op.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tforge import _backend
from tforge.ops import _dispatch


def linear_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Reference linear: fp32 math (fp64 stays fp64), result in x.dtype."""
    acc = torch.promote_types(x.dtype, torch.float32)
    return F.linear(x.to(acc), weight.to(acc), None if bias is None else bias.to(acc)).to(x.dtype)


# ---------------------------------------------------------------- the private oneDNN op, behind a probe

_onednn_state: Optional[bool] = None


def _probe_onednn() -> bool:
    """Does this torch have torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "") computing
    a @ w^T, for a contiguous w (forward) and a transposed one (input gradient)? The op is private: its
    name or signature may change in any release, so behaviour is checked, not the version string."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        op = torch.ops.mkldnn._linear_pointwise
        a = torch.arange(6, dtype=torch.float32).view(2, 3)
        w = torch.arange(12, dtype=torch.float32).view(4, 3) - 5  # small integers: exact in fp32
        dy = torch.arange(8, dtype=torch.float32).view(2, 4) - 3
        y = op(a, w, None, "none", [], "")
        dx = op(dy, w.t(), None, "none", [], "")
        return (tuple(y.shape) == (2, 4) and torch.equal(y, a @ w.t())
                and tuple(dx.shape) == (2, 3) and torch.equal(dx, dy @ w))
    except Exception:  # missing op, changed schema, no oneDNN in this build: all mean "do not use it"
        return False


def onednn_available() -> bool:
    """Whether the cpu backend's oneDNN path is usable in this process (probed once)."""
    global _onednn_state
    if _onednn_state is None:
        _onednn_state = _probe_onednn()
    return _onednn_state


def _onednn_mm(a2: Tensor, w: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """a2 @ w^T (+ bias) for 2-D fp32 CPU a2."""
    return torch.ops.mkldnn._linear_pointwise(a2, w, bias, "none", [], "")


def _use_onednn(backend: str, x: Tensor) -> bool:
    return (backend == "cpu" and x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() > 0
            and onednn_available())


# ---------------------------------------------------------------- checks

def _dt(t: Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def check_args(x, weight, bias) -> None:
    """ValueError saying what is wrong, before any kernel runs."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"linear: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"linear: {name} must be floating point, got {_dt(t)}")
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"linear: x's last dimension must be in_features = {k} (weight is {n} x {k}), "
                         f"got x of shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"linear: bias must have shape ({n},) (out_features), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise ValueError(f"linear: {name} is {_dt(t)} but x is {_dt(x)}; cast one of them "
                             "(or run under torch.autocast)")
        if t.device != x.device:
            raise ValueError(f"linear: {name} is on {t.device} but x is on {x.device}")


# ---------------------------------------------------------------- custom ops

@_dispatch.custom_op("tforge::linear")
def _linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str) -> Tensor:
    check_args(x, weight, bias)
    if _use_onednn(backend, x):
        y = _onednn_mm(x.reshape(-1, x.shape[-1]), weight, bias)
        return y.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


@_linear_op.register_fake
def _(x, weight, bias, backend):
    check_args(x, weight, bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_EMPTY = (0,)


@_dispatch.custom_op("tforge::linear_backward")
def _linear_backward_op(dy: Tensor, x: Tensor, weight: Tensor, need_dx: bool, need_dweight: bool,
                        need_dbias: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); unrequested gradients come back empty (custom ops cannot return None)."""
    n, k = weight.shape
    dy2, x2 = dy.reshape(-1, n), x.reshape(-1, k)
    dx, dw, db = (x.new_empty(_EMPTY) for _ in range(3))  # three tensors: outputs may not alias
    if need_dx:
        if _use_onednn(backend, x):
            dx = _onednn_mm(dy2, weight.t()).view(x.shape)
        else:
            dx = dy2.mm(weight).view(x.shape)
    if need_dweight:
        dw = dy2.t().mm(x2)  # mm was as fast as oneDNN for dW (benchmarks/results/train_throughput.md)
    if need_dbias:
        db = dy2.sum(0)
    return dx, dw, db


@_linear_backward_op.register_fake
def _(dy, x, weight, need_dx, need_dweight, need_dbias, backend):
    return (x.new_empty(x.shape) if need_dx else x.new_empty(_EMPTY),
            weight.new_empty(weight.shape) if need_dweight else x.new_empty(_EMPTY),
            weight.new_empty((weight.shape[0],)) if need_dbias else x.new_empty(_EMPTY))


def _setup_context(ctx, inputs, output):
    x, weight, bias, backend = inputs
    ctx.has_bias = bias is not None
    ctx.backend = backend
    ctx.save_for_backward(x, weight)


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dw, db = _linear_backward_op(dy, x, weight, need_dx, need_dw, need_db, ctx.backend)
    return dx if need_dx else None, dw if need_dw else None, db if need_db else None, None


_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- public function

def _autocast(x: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """What torch.autocast does to F.linear (a lower-precision op): floating inputs other than fp64
    are cast to the autocast dtype. A custom op is not covered by autocast, so it is done here."""
    dev = x.device.type if isinstance(x, Tensor) else None
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return x, weight, bias
    dt = torch.get_autocast_dtype(dev)

    def cast(t):
        ok = isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
        return t.to(dt) if ok else t
    return cast(x), cast(weight), cast(bias)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: Optional[str] = None) -> Tensor:
    """``x @ weight^T + bias``, as F.linear.

    x: (..., in_features); weight: (out_features, in_features); bias: (out_features,) or None; all of one
    floating dtype and device (under torch.autocast they are cast as F.linear's would be). backend:
    "cpu" (fp32 on CPU: oneDNN for y and dx, mm for dW, when this torch has the private op; else
    F.linear), "torch", "cuda", "triton" (F.linear) or None (see tforge.backends()).
    Differentiable in x, weight and bias.
    """
    x, weight, bias = _autocast(x, weight, bias)
    check_args(x, weight, bias)
    name = _backend.resolve(x.device, x.dtype, backend)
    return _dispatch.call(_linear_op, x, weight, bias, name)

"""tforge.cross_entropy: every backend on this machine (cuda under the emulator, triton under its
interpreter, both at small sizes) against cross_entropy_ref, loss and logits' gradient, each reduction,
awkward shapes and values; the custom-op registration (opcheck, torch.compile fullgraph); errors."""
import contextlib
import math

import pytest
import torch

import tforge
from tforge import _backend, _native
from tforge.ops import cross_entropy as ce_ops
from tforge.ops.cross_entropy import cross_entropy_ref
from tforge.testing import emulated_cuda

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
REDUCTIONS = ["mean", "sum", "none"]
BACKENDS = list(_backend.BACKENDS)  # cuda runs under the emulator, triton under its interpreter
# Rows x classes the emulator / interpreter run in a few seconds; "big" ones only for torch and cpu.
SMALL = [(1, 1), (3, 1), (1, 7), (4, 17), (5, 127), (3, 257), (6, 1000), (3, 1536), (2, 4099)]
BIG = [(300, 4099), (2, 70001)]


@contextlib.contextmanager
def on(backend):
    """The context a backend runs in here: the emulator for cuda; skips what this machine lacks."""
    if backend == "cuda":
        try:
            _native.load_emulator()
        except RuntimeError as exc:
            pytest.skip(str(exc))
        with emulated_cuda():
            yield
        return
    reason = _backend.why_unavailable(backend, torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    yield


def _tols(dtype):
    """(loss rtol, gradient rtol): the loss is fp32 math on the same rounded logits; the gradient is rounded
    to the logits' dtype (2 ulp of it)."""
    return 2e-5, {F32: 2e-5, BF16: 2 ** -6, F16: 2 ** -9}[dtype]


def check(backend, logits, target, reduction="mean", ignore_index=-100, dloss=None):
    """Loss and gradient of backend vs the reference (grad through F.cross_entropy on fp32 logits)."""
    x = logits.detach().clone().requires_grad_()
    with on(backend):
        loss = tforge.cross_entropy(x, target, ignore_index, reduction, backend=backend)
        g = torch.randn(loss.shape) if dloss is None else dloss
        (gx,) = torch.autograd.grad(loss, x, g)
    xr = logits.detach().float().requires_grad_()
    ref = cross_entropy_ref(xr, target, ignore_index, reduction)
    (gr,) = torch.autograd.grad(ref, xr, g)
    loss_rtol, grad_rtol = _tols(logits.dtype)
    assert loss.dtype == F32 and loss.shape == ref.shape
    scale = ref.detach().abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(loss, ref.detach(), rtol=loss_rtol, atol=1e-6 * max(scale, 1.0), equal_nan=True)
    assert gx.dtype == logits.dtype and gx.shape == logits.shape
    gmax = gr.abs().max().item() if gr.numel() else 0.0
    tiny = torch.finfo(logits.dtype).smallest_normal * torch.finfo(logits.dtype).eps  # a subnormal step
    torch.testing.assert_close(gx.float(), gr, rtol=grad_rtol, atol=max(2e-6 * gmax, tiny), equal_nan=True)
    return loss, gx


def _inputs(rows, v, dtype, scale=3.0, ignore_every=0):
    x = (torch.randn(rows, v) * scale).to(dtype)
    t = torch.randint(0, v, (rows,))
    if ignore_every:
        t[::ignore_every] = -100
    return x, t


def _dtypes(backend):
    return [F32, BF16] + ([F16] if backend in ("torch", "triton", "cuda") else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows,v", SMALL)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(backend, rows, v, reduction):
    for dtype in _dtypes(backend):
        x, t = _inputs(rows, v, dtype, ignore_every=3 if rows > 2 else 0)
        check(backend, x, t, reduction)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("torch", "cpu")])
@pytest.mark.parametrize("rows,v", BIG)
def test_large_rows_and_chunks(backend, rows, v):
    for dtype in (F32, BF16):
        x, t = _inputs(rows, v, dtype, ignore_every=7)
        check(backend, x, t, "mean")
    check(backend, *_inputs(rows, v, F32), "none")


@pytest.mark.parametrize("backend", BACKENDS)
def test_3d_noncontiguous_and_int32(backend):
    x = torch.randn(2, 3, 45)
    t = torch.randint(0, 45, (2, 3))
    check(backend, x, t, "mean")
    check(backend, x, t, "none")
    wide = torch.randn(5, 50).to(BF16)
    check(backend, wide[:, 3:40], torch.randint(0, 37, (5,)), "sum")   # rows of a wider tensor, offset start
    check(backend, x.transpose(0, 1), t.t().contiguous().to(torch.int32), "mean")  # copied rows, int32 targets


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_rows(backend):
    x, t = _inputs(6, 33, F32)
    none = torch.full((6,), -100)
    for reduction in REDUCTIONS:
        loss, gx = check(backend, x, none, reduction, dloss=torch.ones(() if reduction != "none" else (6,)))
        loss = loss.detach()
        assert not torch.isnan(loss).any() and float(loss.abs().sum()) == 0.0 and float(gx.abs().sum()) == 0.0
    check(backend, x, torch.where(t % 2 == 0, 3, t), "mean", ignore_index=3)  # an in-range class ignored
    t2 = t.clone()
    t2[[0, 4]] = 7
    check(backend, x, t2, "none", ignore_index=7)
    check(backend, x.to(BF16), torch.where(t > 10, t, -5), "sum", ignore_index=-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_extreme_logits(backend, dtype):
    x = torch.randn(5, 300)
    x[0, :] = -1e4
    x[0, 5] = 1e4          # the row is one spike
    x[1, :] = 1e4          # every logit equal and huge
    x[2, 9] = -1e4         # the target's probability underflows to 0: loss = 1e4 + ...
    x[3, :] = torch.linspace(-1e4, 1e4, 300)
    t = torch.tensor([5, 17, 9, 0, 299])
    for reduction in REDUCTIONS:
        loss, _ = check(backend, x.to(dtype), t, reduction)
    assert torch.isfinite(loss).all() and loss[2] > 9000  # (bf16 rounds 1e4 to 9984)
    few = torch.full((3, 40), 1e4)  # lse = 1e4 + log(40): m + ls rounds by 5e-4 in fp32, (x - m) - ls does not
    few[1, 7] = 1e4 + 2
    check(backend, few.to(dtype), torch.tensor([0, 7, 39]), "none")
    check(backend, few.to(dtype), torch.tensor([0, 7, 39]), "mean")


@pytest.mark.parametrize("backend", BACKENDS)
def test_incoming_gradient(backend):
    x, t = _inputs(7, 129, F32, ignore_every=4)
    check(backend, x, t, "mean", dloss=torch.tensor(2.5))
    check(backend, x, t, "sum", dloss=torch.tensor(-0.75))
    check(backend, x.to(BF16), t, "none", dloss=torch.randn(7))
    check(backend, x, t, "mean", dloss=torch.tensor(1.0))  # the saved gradient as is


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_logits_give_nan(backend):
    x, t = _inputs(4, 20, F32)
    x[2, 6] = float("nan")
    with on(backend):
        rows = tforge.cross_entropy(x, t, reduction="none", backend=backend)
        mean = tforge.cross_entropy(x, t, backend=backend)
    assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3]]).all() and torch.isnan(mean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_out_of_range(backend):
    x, _ = _inputs(3, 10, F32)
    with on(backend):
        for bad in (10, -1, 1 << 40):
            with pytest.raises(ValueError, match=r"\[0, 10\)"):
                tforge.cross_entropy(x, torch.tensor([1, bad, 2]), backend=backend)
        tforge.cross_entropy(x, torch.tensor([1, -1, 2]), ignore_index=-1, backend=backend)  # ignored: fine


def test_argument_errors():
    x, t = _inputs(3, 10, F32)
    cases = [
        ((x, t.float()), "int64"),
        ((x.long(), t), "floating-point"),
        ((x, t[:2]), "shape"),
        ((x, t[:, None]), "shape"),
        ((torch.randn(3, 0), t), "size >= 1"),
        ((torch.tensor(1.0), torch.tensor(0)), "class"),
        ((x, t, -100, "avg"), "reduction"),
        ((x, t, 1.5), "ignore_index"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            tforge.cross_entropy(*args)
    with pytest.raises(ValueError, match="backend"):
        tforge.cross_entropy(x, t, backend="tpu")


def test_empty_batch():
    x = torch.randn(0, 9, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    for backend in BACKENDS:
        with on(backend):
            loss = tforge.cross_entropy(x, t, backend=backend)
            loss.backward()
            assert tforge.cross_entropy(x, t, reduction="none", backend=backend).shape == (0,)
        assert loss.item() == 0.0 and x.grad.shape == x.shape


def test_no_gradient_buffer_without_grad():
    """The fused gradient is written only when autograd will need it."""
    x, t = _inputs(4, 11, F32)
    _, grad, stats = torch.ops.tforge.cross_entropy(x, t, -100, "mean", False, "torch")
    assert grad.numel() == 0 and stats.numel() == 0
    _, grad, _ = torch.ops.tforge.cross_entropy(x, t, -100, "mean", True, "torch")
    assert grad.shape == x.shape
    _, grad, stats = torch.ops.tforge.cross_entropy(x, t, -100, "none", True, "torch")
    assert grad.numel() == 0 and stats.shape == (2, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    with on(backend):
        x = torch.randn(2, 3, 19, requires_grad=True)
        t = torch.randint(0, 19, (2, 3))
        t[0, 1] = -100
        for reduction in REDUCTIONS:
            for need_grad in (True, False):
                torch.library.opcheck(torch.ops.tforge.cross_entropy.default,
                                      (x, t, -100, reduction, need_grad, backend))
        stats = torch.ops.tforge.cross_entropy(x.detach(), t, -100, "none", True, backend)[2]
        torch.library.opcheck(torch.ops.tforge.cross_entropy_backward.default,
                              (torch.randn(2, 3), x.detach(), t, stats, -100, backend))


@pytest.mark.parametrize("backend", [None] + BACKENDS)
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    lin = torch.nn.Linear(16, 40)
    h = torch.randn(2, 5, 16)
    t = torch.randint(0, 40, (2, 5))
    t[1, 2] = -100

    def f(h, t):
        return tforge.cross_entropy(lin(h), t, backend=backend) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with on(backend or "torch"):
        loss = compiled(h, t)
        (gw,) = torch.autograd.grad(loss, lin.weight)
        loss_e = f(h, t)
        (gw_e,) = torch.autograd.grad(loss_e, lin.weight)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(gw, gw_e)


def test_mean_matches_f_cross_entropy_where_it_is_defined():
    x, t = _inputs(9, 50, F32, ignore_every=4)
    got = tforge.cross_entropy(x, t)
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(x, t), rtol=2e-5, atol=1e-6)
    assert math.isnan(torch.nn.functional.cross_entropy(x, torch.full((9,), -100)).item())
    assert tforge.cross_entropy(x, torch.full((9,), -100)).item() == 0.0


def test_scalar_cpu_kernels(monkeypatch):
    """The fallback kernel set (CPUs without AVX2) gives the same results."""
    monkeypatch.setenv("TFORGE_CPU_ISA", "scalar")
    for rows, v in ((3, 1), (4, 17), (5, 300), (2, 4099)):
        for dtype in (F32, BF16):
            for reduction in REDUCTIONS:
                check("cpu", *_inputs(rows, v, dtype, ignore_every=3), reduction)
    x = torch.randn(2, 40)
    x[0, 3], x[1, :] = -1e4, 1e4
    check("cpu", x, torch.tensor([3, 39]), "none")
    check("cpu", x, torch.tensor([3, 39]), "mean")


def _native_args(C, x, t, **fields):
    return _native.Args(C.CrossEntropyArgs, logits=_native.Strided(x), logits_stride=x.stride(0), rows=x.shape[0],
                        cols=x.shape[1], dtype=_native.dtype_code(x), target=t, ignore_index=-100, **fields)


def test_native_entries_check_their_arguments():
    """The native layer refuses what the Python layer would have caught (and raises, never crashes)."""
    C = _native.require()
    x, t = _inputs(3, 10, F32)
    loss, grad = torch.empty(3), torch.empty(3, 10)
    fwd = dict(loss=_native.Out(loss), grad=_native.Out(grad))
    _native.call(C.cross_entropy_fwd_cpu, _native_args(C, x, t, **fwd), threads=1)
    torch.testing.assert_close(loss, cross_entropy_ref(x, t, reduction="none"))
    bad = [
        (_native_args(C, x, torch.tensor([1, 10, 2]), **fwd), r"target\[1\] = 10 is outside \[0, 10\)"),
        (_native_args(C, x, torch.tensor([1, -7, 2]), **fwd), "outside"),
        (_native_args(C, x, t, loss=None), "loss is a null pointer"),
        (_native_args(C, x, t, **fwd) , None),
    ]
    bad[-1][0].fields.update(logits_stride=5)
    bad[-1] = (bad[-1][0], "row stride 5")
    for args, msg in bad:
        with pytest.raises(ValueError, match=msg):
            _native.call(C.cross_entropy_fwd_cpu, args, threads=1)
    with pytest.raises(ValueError, match="float16"):
        _native.call(C.cross_entropy_fwd_cpu, _native_args(C, x.half(), t, **fwd), threads=1)
    with pytest.raises(ValueError, match="row_max or row_logsum is a null pointer"):
        _native.call(C.cross_entropy_bwd_cpu, _native_args(C, x, t, row_scale=torch.ones(3), grad=_native.Out(grad)),
                     threads=1)
    with pytest.raises(ValueError, match="threads"):
        _native.call(C.cross_entropy_fwd_cpu, _native_args(C, x, t, **fwd), threads=0)


def test_cuda_entries_check_their_arguments():
    """Emulated: the CUDA host code refuses bad arguments; a target it cannot check (it lives on the GPU)
    gives a NaN loss for its row and reads nothing out of bounds."""
    with on("cuda"):
        C = _native.require()
        x, _ = _inputs(3, 10, F32)
        loss = torch.empty(3)
        args = _native_args(C, x, torch.tensor([1, 10, 2]), loss=_native.Out(loss))
        _native.call(C.cross_entropy_fwd_cuda, args, device=0, stream=0)
        assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
        args.fields.update(logits_stride=4)
        with pytest.raises(ValueError, match="row stride 4"):
            _native.call(C.cross_entropy_fwd_cuda, args, device=0, stream=0)
        with pytest.raises(ValueError, match="row_max or row_logsum"):
            _native.call(C.cross_entropy_bwd_cuda, _native_args(C, x, torch.tensor([1, 2, 3]), grad=_native.Out(
                torch.empty(3, 10)), row_scale=torch.ones(3)), device=0, stream=0)

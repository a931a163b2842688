"""LayerNorm/RMSNorm beyond numerics: custom-op registration (opcheck,
torch.compile fullgraph), nn modules vs torch's, backend selection, errors from
Python and from the native layer, NaN propagation, both CPU kernel sets."""
import os
import shutil
from pathlib import Path

import pytest
import torch

import tforge
from tforge import _backend, _native
from tforge.ops.layer_norm import layer_norm_ref
from tforge.ops.rms_norm import rms_norm_ref
from tforge.testing import assert_close, assert_error_within, backend_names

CPU_BACKENDS = backend_names("cpu")


# ---------------------------------------------------------------- registration

@pytest.mark.parametrize("backend", backend_names())
def test_opcheck(backend):
    if _backend.why_unavailable(backend, torch.device("cpu"), torch.float32):
        pytest.skip(_backend.why_unavailable(backend, torch.device("cpu"), torch.float32))
    x = torch.randn(3, 5, 19, requires_grad=True)
    r = torch.randn(3, 5, 19, requires_grad=True)
    w = torch.randn(19, requires_grad=True)
    b = torch.randn(19, requires_grad=True)
    ops = torch.ops.tforge
    torch.library.opcheck(ops.layer_norm.default, (x, w, b, 1e-5, backend))
    torch.library.opcheck(ops.add_layer_norm.default, (x, r, w, None, 1e-5, backend))
    torch.library.opcheck(ops.rms_norm.default, (x, w, 1e-6, backend))
    torch.library.opcheck(ops.add_rms_norm.default, (x, r, None, 1e-6, backend))


class _Block(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.ln = tforge.nn.LayerNorm(n)
        self.rms_w = torch.nn.Parameter(torch.ones(n))
        self.lin = torch.nn.Linear(n, n)

    def forward(self, x):
        h = self.lin(self.ln(x))
        y, s = tforge.add_rms_norm(h, x, self.rms_w)
        return y + s


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    m = _Block(24)
    x = torch.randn(4, 24, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    y_eager = m(x)
    y_eager.sum().backward()
    assert_close(y, y_eager, name="compiled forward")
    assert_close(gx, x.grad, backward=True, name="compiled dx")


# ---------------------------------------------------------------- modules

def test_layer_norm_module_matches_torch_and_loads_its_state_dict():
    ref = torch.nn.LayerNorm((6, 10), eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = tforge.nn.LayerNorm((6, 10), eps=1e-6)
    ours.load_state_dict(ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 3, 6, 10)
    assert_close(ours(x), ref(x), name="LayerNorm module")
    back = torch.nn.LayerNorm((6, 10), eps=1e-6)
    back.load_state_dict(ours.state_dict())  # and back again
    assert isinstance(ours, torch.nn.LayerNorm)
    assert set(dict(tforge.nn.LayerNorm(8, bias=False).named_parameters())) == {"weight"}
    assert tforge.nn.LayerNorm(8, elementwise_affine=False).weight is None


@pytest.mark.parametrize("eps", [None, 1e-5])
def test_rms_norm_module_matches_torch(eps):
    ref = torch.nn.RMSNorm(32, eps=eps)
    with torch.no_grad():
        ref.weight.normal_()
    ours = tforge.nn.RMSNorm(32, eps=eps)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 32)
    assert_close(ours(x), ref(x), name="RMSNorm module")
    xb = x.bfloat16()
    assert_close(ours.bfloat16()(xb), ref.bfloat16()(xb), torch.bfloat16, name="RMSNorm module bf16")


def test_module_rejects_wrong_trailing_shape():
    with pytest.raises(ValueError, match="trailing shape"):
        tforge.nn.LayerNorm(8)(torch.randn(2, 9))


def test_fp32_params_with_bf16_input_are_cast():
    x = torch.randn(4, 40).bfloat16().requires_grad_()
    w = torch.randn(40, requires_grad=True)
    y = tforge.layer_norm(x, w, None)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert_close(y, layer_norm_ref(x, w.bfloat16()), torch.bfloat16)


# ---------------------------------------------------------------- backends

def test_backends_report():
    info = tforge.backends()
    assert set(info) >= {"cpu", "cuda", "triton", "torch"}
    assert info["torch"]["available"]
    assert info["cpu"]["available"] and info["cpu"]["isa"] in ("avx2", "scalar")
    for name, entry in info.items():
        assert entry["available"] or entry["reason"], name


def test_automatic_choice_and_use_backend():
    x = torch.randn(2, 8)
    assert _backend.resolve(x.device, torch.float32) == "cpu"
    assert _backend.resolve(x.device, torch.float16) == "torch"  # the C++ kernels take fp32/bf16
    with tforge.use_backend("torch"):
        assert _backend.resolve(x.device, torch.float32) == "torch"
        with tforge.use_backend(None):
            assert _backend.resolve(x.device, torch.float32) == "cpu"
        assert _backend.resolve(x.device, torch.float32, "cpu") == "cpu"  # the argument wins
    assert _backend.resolve(x.device, torch.float32) == "cpu"
    with pytest.raises(ValueError, match="unknown backend"):
        with tforge.use_backend("fast"):
            pass


def test_cuda_objects_compiled_when_nvcc_exists():
    """CI has nvcc: the CUDA kernels must keep compiling there."""
    nvcc = shutil.which("nvcc") or next(iter(sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))), None)
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    if os.environ.get("TFORGE_CUDA", "").upper() == "OFF":
        pytest.skip("TFORGE_CUDA=OFF: CUDA kernels deliberately not built")
    assert _native.cuda_compiled(), "nvcc exists but tforge._C was built without the CUDA kernels"
    assert "90a" in _native.require().cuda_archs


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("call,match", [
    (lambda: tforge.layer_norm(torch.randint(0, 5, (2, 4))), "floating-point"),
    (lambda: tforge.layer_norm(torch.randn(2, 4), torch.randn(5)), r"weight must have shape \(4,\)"),
    (lambda: tforge.layer_norm(torch.randn(2, 4), None, torch.randn(4, 1)), "bias must have shape"),
    (lambda: tforge.layer_norm(torch.randn(2, 4), eps=0.0), "eps must be a positive"),
    (lambda: tforge.rms_norm(torch.randn(2, 4), eps=float("nan")), "eps must be a positive"),
    (lambda: tforge.layer_norm(torch.randn(2, 4), torch.randn(4, device="meta")), "weight is on meta"),
    (lambda: tforge.add_layer_norm(torch.randn(2, 4), torch.randn(2, 5)), "residual must have the shape"),
    (lambda: tforge.add_rms_norm(torch.randn(2, 4), torch.randn(2, 4).double()), "residual must match"),
    (lambda: tforge.layer_norm(torch.randn(2, 4), backend="fast"), "unknown backend"),
    (lambda: tforge.layer_norm(torch.randn(2, 4), backend="cuda"), "cuda"),
    (lambda: tforge.layer_norm(torch.randn(2, 4).half(), backend="cpu"), "does not take float16"),
    (lambda: tforge.layer_norm(torch.randn(2, 0)), "must be >= 1"),
    (lambda: tforge.layer_norm(torch.tensor(1.0)), "at least one dimension"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_native_layer_rechecks_arguments():
    C = _native.require()
    x = torch.randn(4, 8)
    y = torch.empty_like(x)
    mean, rstd = torch.empty(4), torch.empty(4)
    good = dict(x=x.data_ptr(), x_stride=8, y=y.data_ptr(), mean=mean.data_ptr(), rstd=rstd.data_ptr(), rows=4,
                cols=8, eps=1e-5, dtype=0)
    C.layer_norm_fwd_cpu(C.NormFwdArgs(**good), threads=1)
    assert_close(y, layer_norm_ref(x))
    for bad, match in [(dict(cols=0), "must be >= 1"), (dict(dtype=2), "float32 or bfloat16"),
                       (dict(dtype=7), "float32 or bfloat16"), (dict(x=0), "x is a null pointer"),
                       (dict(x_stride=4), "row stride 4 is smaller"), (dict(eps=-1.0), "eps must be"),
                       (dict(rstd=0), "rstd is a null"), (dict(rows=-1), "rows must be")]:
        with pytest.raises(ValueError, match=match):
            C.layer_norm_fwd_cpu(C.NormFwdArgs(**{**good, **bad}), threads=1)
    with pytest.raises(ValueError, match="threads must be"):
        C.layer_norm_fwd_cpu(C.NormFwdArgs(**good), threads=0)
    with pytest.raises(ValueError, match="RMSNorm takes no bias"):
        C.rms_norm_fwd_cpu(C.NormFwdArgs(**good, bias=x.data_ptr()), threads=1)


def test_native_argument_struct_names_its_fields():
    C = _native.require()
    a = C.NormFwdArgs(rows=3, eps=0.5, x=1234)
    assert (a.rows, a.eps, a.x, a.cols) == (3, 0.5, 1234, 0)  # unnamed fields keep the C++ defaults
    with pytest.raises(TypeError, match="NormFwdArgs has no field 'row'"):
        C.NormFwdArgs(row=3)
    with pytest.raises(TypeError, match="NormFwdArgs.rows: cannot take a str"):
        C.NormFwdArgs(rows="3")
    with pytest.raises(TypeError):  # an entry takes its own struct only
        C.layer_norm_fwd_cpu(C.NormBwdArgs(rows=1, cols=1), threads=1)


# ---------------------------------------------------------------- special values

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_stays_in_its_row(backend):
    x = torch.randn(3, 16)
    x[1, 5] = float("nan")
    y = tforge.layer_norm(x, backend=backend)
    assert torch.isnan(y[1]).all()
    assert torch.isfinite(y[[0, 2]]).all()
    assert_close(y[[0, 2]], layer_norm_ref(x[[0, 2]]))
    yb = tforge.rms_norm(x.bfloat16(), backend=backend)
    assert torch.isnan(yb[1]).all() and torch.isfinite(yb[[0, 2]]).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_constant_rows_and_large_offsets(backend):
    x = torch.full((2, 100), 3.0)
    assert_close(tforge.layer_norm(x, backend=backend), torch.zeros(2, 100))
    # A large mean: the two-pass variance keeps the error within 2x PyTorch's own.
    big = torch.randn(4, 512) + 1e4
    exact = layer_norm_ref(big.double())
    assert_error_within(tforge.layer_norm(big, backend=backend), exact,
                        torch.nn.functional.layer_norm(big, (512,)), factor=2.0, slack=1e-4)


def test_scalar_cpu_kernels(monkeypatch):
    """The fallback kernel set (CPUs without AVX2) gives the same results."""
    monkeypatch.setenv("TFORGE_CPU_ISA", "scalar")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(7, 77).to(dtype).requires_grad_()
        w = torch.randn(77).to(dtype).requires_grad_()
        y = tforge.rms_norm(x, w, backend="cpu")
        assert_close(y, rms_norm_ref(x, w), dtype)
        y.float().sum().backward()
        assert torch.isfinite(x.grad.float()).all()


def test_eager_fast_path_matches_the_custom_op():
    """Without autograd, tracing or dispatch modes the public functions call the op's
    implementation directly; the result is identical to going through torch.ops."""
    from tforge.ops import _dispatch
    x, w = torch.randn(3, 40), torch.randn(40)
    assert _dispatch._direct_ok((x, w, None, 1e-5, "cpu"))
    assert not _dispatch._direct_ok((x.clone().requires_grad_(),))
    with torch.no_grad():
        assert _dispatch._direct_ok((x.clone().requires_grad_(),))
    direct = tforge.layer_norm(x, w, backend="cpu")
    via_op = torch.ops.tforge.layer_norm(x, w, None, 1e-5, "cpu")[0]
    assert torch.equal(direct, via_op)

"""Op-level checks that once let wrong results or unclear errors through (issue 10):
float64 norms (gradcheck, computed in float64), use_backend per thread, add_* without
a residual, eps rules, torch.compile(dynamic=True) of the norms, quantize col_scale,
2:4 float values with a scale."""
import threading

import pytest
import torch

import tforge
from tforge import _backend
from tforge.ops.layer_norm import add_layer_norm_ref, layer_norm_ref
from tforge.ops.rms_norm import add_rms_norm_ref, rms_norm_ref
from tforge.testing import assert_close, backend_names

BACKENDS = backend_names("cpu")


# ---------------------------------------------------------------- float64 norms

NORMS = {
    "layer_norm": lambda x, r, w, b: tforge.layer_norm(x, w, b),
    "rms_norm": lambda x, r, w, b: tforge.rms_norm(x, w),
    "add_layer_norm": lambda x, r, w, b: tforge.add_layer_norm(x, r, w, b),
    "add_rms_norm": lambda x, r, w, b: tforge.add_rms_norm(x, r, w),
}


@pytest.mark.parametrize("name", list(NORMS))
def test_float64_norms_gradcheck(name):
    x, r = (torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w, b = (torch.randn(7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    fn = NORMS[name]
    assert torch.autograd.gradcheck(lambda *a: fn(*a), (x, r, w, b))


@pytest.mark.parametrize("name", list(NORMS))
def test_float64_norms_are_computed_in_float64(name):
    x = 1 + 1e-9 * torch.randn(4, 16, dtype=torch.float64)  # the spread vanishes in fp32
    r = torch.zeros_like(x)
    w, b = torch.ones(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    out = NORMS[name](x, r, w, b)
    y = out[0] if isinstance(out, tuple) else out
    ref = {"layer_norm": lambda: layer_norm_ref(x, w, b), "rms_norm": lambda: rms_norm_ref(x, w),
           "add_layer_norm": lambda: add_layer_norm_ref(x, r, w, b)[0],
           "add_rms_norm": lambda: add_rms_norm_ref(x, r, w)[0]}[name]()
    xm = x - x.mean(-1, keepdim=True)  # plain float64 math, independent of the references
    exact = xm / (xm.square().mean(-1, keepdim=True) + 1e-5).sqrt() if "layer" in name else \
        x / (x.square().mean(-1, keepdim=True) + 1e-6).sqrt()
    assert y.dtype == torch.float64
    assert (y - exact).abs().max() < 1e-9 and (ref - exact).abs().max() < 1e-9


def test_float64_rejected_by_cpu_kernels_with_a_reason():
    with pytest.raises(ValueError, match="does not take float64"):
        tforge.layer_norm(torch.randn(2, 4, dtype=torch.float64), backend="cpu")


# ---------------------------------------------------------------- use_backend is per thread

def test_use_backend_is_thread_local():
    dev = torch.device("cpu")
    inside, ready, done = [], threading.Event(), threading.Event()
    seen = {}

    def holder():
        with tforge.use_backend("torch"):
            inside.append(_backend.resolve(dev, torch.float32))
            ready.set()
            done.wait(10)  # keep the block open while the other thread resolves

    def other():
        ready.wait(10)
        seen["other"] = _backend.resolve(dev, torch.float32)
        x = torch.randn(3, 8)
        seen["matches_cpu"] = torch.equal(tforge.layer_norm(x), tforge.layer_norm(x, backend="cpu"))
        done.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert inside == ["torch"] and seen == {"other": "cpu", "matches_cpu": True}
    assert _backend.resolve(dev, torch.float32) == "cpu"



# ---------------------------------------------------------------- backend tables

def test_backend_tables_are_what_the_dispatcher_chooses_from():
    from tforge.ops import _norm, _sparse24_masks, attention, attention_qkvpacked, cross_entropy, int8_gemm, sparse24
    tables = [_norm.FORWARD, _norm.BACKWARD, int8_gemm.QUANTIZE_ROWS, int8_gemm.INT8_MATMUL, int8_gemm.INT8_LINEAR,
              _sparse24_masks.NM_MASK, sparse24.SPARSE24_LINEAR, attention.FORWARD, attention.BACKWARD,
              attention_qkvpacked.BACKWARD, cross_entropy.FORWARD, cross_entropy.BACKWARD]
    for table in tables:  # keys are backend names tforge knows (a typo would make a backend unreachable)
        assert "torch" in table and set(table) <= set(tforge.backends()), table
    cpu, only_torch = torch.device("cpu"), {"torch": _norm.FORWARD["torch"]}
    assert _backend.resolve(cpu, torch.float32, None, impls=only_torch) == "torch"
    with pytest.raises(ValueError, match="this op has no 'cpu' implementation"):
        _backend.resolve(cpu, torch.float32, "cpu", impls=only_torch)
    with tforge.use_backend("cpu"), pytest.raises(ValueError, match="no 'cpu' implementation"):
        _backend.resolve(cpu, torch.float32, None, impls=only_torch)


def test_backend_names_follow_tforge_backends():
    from tforge.testing import backend_names
    assert backend_names() == list(tforge.backends())
    assert backend_names("cpu") == ["cpu", "torch"]  # the automatic order on CPU tensors (triton only interpreted)
    assert backend_names("cuda") == ["cuda", "triton", "torch"]


# ---------------------------------------------------------------- argument errors: clear, one rule

@pytest.mark.parametrize("backend", BACKENDS)
def test_add_norms_need_a_residual(backend):
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="add_layer_norm: residual must be a tensor"):
        tforge.add_layer_norm(x, None, backend=backend)
    with pytest.raises(ValueError, match="add_rms_norm: residual must be a tensor"):
        tforge.add_rms_norm(x, [1.0, 2.0], backend=backend)
    with pytest.raises(ValueError, match="weight must be a tensor"):
        tforge.layer_norm(x, [1.0] * 4, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_one_rule_everywhere(backend):
    x = torch.randn(3, 8)
    for eps in (1e-50, 0.0, -1e-5, float("inf"), float("nan"), 1e39, True):
        for fn in (lambda: tforge.layer_norm(x, eps=eps, backend=backend),
                   lambda: tforge.add_rms_norm(x, x, eps=eps, backend=backend)):
            with pytest.raises(ValueError, match=r"eps must be a positive finite number representable in float32"):
                fn()
    # the smallest float32 eps is accepted by every backend alike
    assert_close(tforge.rms_norm(x, eps=2.0 ** -149, backend=backend), rms_norm_ref(x, eps=2.0 ** -149))


def test_norms_compile_dynamic_fullgraph():
    def f(x, r, w, b, eps):
        y1 = tforge.layer_norm(x, w, b, eps)
        y2 = tforge.rms_norm(x, w, eps)
        y3, h3 = tforge.add_layer_norm(x, r, w, b, eps)
        y4, h4 = tforge.add_rms_norm(x, r, w, eps)
        return y1 + y2 + y3 + y4 + h3 + h4

    torch._dynamo.reset()
    compiled = torch.compile(f, dynamic=True, fullgraph=True)
    for rows, eps in ((5, 1e-5), (7, 1e-3)):
        x, r = torch.randn(rows, 16), torch.randn(rows, 16)
        w, b = torch.randn(16), torch.randn(16)
        assert_close(compiled(x, r, w, b, eps), f(x, r, w, b, eps))


def test_quantize_col_scale_must_be_a_tensor():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="col_scale must be a floating-point tensor"):
        tforge.quantize_per_token(x, col_scale=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="col_scale must be a floating-point tensor"):
        tforge.quantize_per_token(x, col_scale=torch.ones(4, dtype=torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse24_float_values_with_scale_rejected(backend):
    w = torch.randn(8, 16) * tforge.nm_mask(torch.randn(8, 16).abs())
    packed = tforge.pack_2to4(w)
    packed.scale = torch.ones(8)
    with pytest.raises(ValueError, match="scale is only for int8 values"):
        tforge.sparse24_linear(torch.randn(2, 16), packed, backend=backend)

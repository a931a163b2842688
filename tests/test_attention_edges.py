"""Attention edge cases that once gave silently wrong results (issue 10): strided
cu_seqlens, window / max_seqlen overflow, seqlen_k = 0, float64, a lone key in
bf16, finfo.min-masked bias rows. CPU backends (cpu: C++, torch: the reference
math); each test compares against ops/attention.py's references or exact values."""
import ctypes
import math

import pytest
import torch

import tforge
from tforge import _native
from tforge.ops.attention import attention_ref, attention_varlen_ref
from tforge.testing import assert_close, backend_names

BACKENDS = backend_names("cpu")  # the backends that run CPU tensors
INT64_MAX = 2 ** 63 - 1


def _qkv(b, sq, sk, hq, hk, d, dtype=torch.float32, grad=False):
    q, k, v = (torch.randn(b, s, h, d).to(dtype) for s, h in ((sq, hq), (sk, hk), (sk, hk)))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


# ---------------------------------------------------------------- tensors cross into C++ densely

def test_native_call_passes_views_densely():
    t = torch.tensor([0, 2, 4, 10, 7, 0, 10], dtype=torch.int32)[::2]
    read = _native.call(lambda p: list((ctypes.c_int32 * 4).from_address(p)), t)
    assert read == [0, 4, 7, 10]  # the view's values, not the raw memory [0, 2, 4, 10]
    e = torch.tensor([5], dtype=torch.int32).expand(3)
    assert _native.call(lambda p: list((ctypes.c_int32 * 3).from_address(p)), e) == [5, 5, 5]
    with pytest.raises(RuntimeError, match="must be contiguous"):
        _native.call(lambda p: p, _native.Out(torch.zeros(4, 4).t()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_strided_cu_seqlens(backend):
    q, k, v = (torch.randn(10, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 2, 4, 10, 7, 0, 10], dtype=torch.int32)[::2]  # [0, 4, 7, 10], stride 2
    out = tforge.attention_varlen(q, k, v, cu, cu, 6, 6, causal=True, backend=backend)
    ref = attention_varlen_ref(q, k, v, cu.contiguous(), cu.contiguous(), causal=True)
    assert_close(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_stride0_cu_seqlens(backend):
    q = torch.randn(0, 2, 8, requires_grad=True)
    k, v = torch.randn(0, 2, 8), torch.randn(0, 2, 8)
    cu = torch.zeros(1, dtype=torch.int32).expand(3)  # two empty sequences; one int32 of storage
    out = tforge.attention_varlen(q, k, v, cu, cu, 0, 0, backend=backend)
    assert out.shape == (0, 2, 8)


# ---------------------------------------------------------------- windows and max_seqlen: clamp, never wrap

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sq,sk", [(7, 5), (5, 7), (6, 6)])
@pytest.mark.parametrize("window", [(INT64_MAX, -1), (-1, INT64_MAX), (INT64_MAX, INT64_MAX), (INT64_MAX - 3, 2)])
def test_huge_windows_equal_unbounded(backend, sq, sk, window):
    q, k, v = _qkv(2, sq, sk, 2, 1, 16)
    for causal in (False, True):
        out = tforge.attention(q, k, v, causal=causal, window=window, backend=backend)
        right = window[1] if window[1] < sq + sk else -1  # the same band, written with small numbers
        ref = attention_ref(q, k, v, causal, window=(-1, right))
        assert_close(out, ref, name=f"causal={causal}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_max_seqlen_is_clamped(backend):
    q, k, v = (torch.randn(9, 2, 8) for _ in range(3))
    cu = tforge.cu_seqlens_from_lengths([4, 5])
    out = tforge.attention_varlen(q, k, v, cu, cu, INT64_MAX, INT64_MAX, causal=True, window=(INT64_MAX, 0),
                                  backend=backend)
    assert_close(out, attention_varlen_ref(q, k, v, cu, cu, causal=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_beyond_int64_is_a_value_error(backend):
    q, k, v = _qkv(1, 3, 3, 1, 1, 8)
    for window in ((2 ** 63, -1), (-1, 2 ** 64), (-2, 0), (True, 0)):
        with pytest.raises(ValueError, match="window must be"):
            tforge.attention(q, k, v, window=window, backend=backend)
    cu = tforge.cu_seqlens_from_lengths([3])
    with pytest.raises(ValueError, match="max_seqlen"):
        tforge.attention_varlen(q[0], k[0], v[0], cu, cu, 2 ** 63, 3, backend=backend)


# ---------------------------------------------------------------- no keys, head_dim 0

@pytest.mark.parametrize("backend", BACKENDS)
def test_seqlen_k_zero_gives_zeros(backend):
    q = torch.randn(2, 3, 2, 8, requires_grad=True)
    k = torch.randn(2, 0, 1, 8, requires_grad=True)
    v = torch.randn(2, 0, 1, 8, requires_grad=True)
    out = tforge.attention(q, k, v, backend=backend)
    assert torch.equal(out, torch.zeros_like(q)) and torch.equal(out, attention_ref(q, k, v))
    from tforge.ops.attention import _attention_op
    _, lse = _attention_op(q.detach(), k.detach(), v.detach(), None, None, None, 3, 0, 0.5, False, -1, -1, False,
                           backend)
    assert lse.shape == (2, 2, 3) and bool((lse == float("-inf")).all())  # as a fully masked row
    (dq,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.equal(dq, torch.zeros_like(q))


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_dim_zero_names_head_dim(backend):
    q, k, v = _qkv(1, 2, 2, 2, 2, 0)
    with pytest.raises(ValueError, match="head_dim .* must be >= 1, got 0"):
        tforge.attention(q, k, v, backend=backend)


# ---------------------------------------------------------------- float64: exact on the torch backend

def test_float64_goes_to_torch_backend_and_gradchecks():
    assert tforge._backend.resolve(torch.device("cpu"), torch.float64) == "torch"
    with pytest.raises(ValueError, match="does not take float64"):
        tforge.attention(*_qkv(1, 2, 2, 1, 1, 4, torch.float64), backend="cpu")
    q, k, v = _qkv(1, 4, 5, 2, 1, 3, torch.float64, grad=True)
    bias = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    for causal, window in ((False, None), (True, (2, 0))):
        fn = lambda q, k, v: tforge.attention(q, k, v, causal=causal, window=window, attn_bias=bias)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v))
    cu = tforge.cu_seqlens_from_lengths([2, 0, 3])
    qv, kv, vv = (torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: tforge.attention_varlen(q, k, v, cu, cu, 3, 3, causal=True),
                                    (qv, kv, vv))


def test_float64_is_not_computed_in_float32():
    q, k, v = _qkv(1, 3, 4, 1, 1, 8, torch.float64)
    q = q * 1e-9 + 1  # differences at 1e-9 vanish in fp32 scores
    out = tforge.attention(q, k, v)
    s = (q[0, :, 0] @ k[0, :, 0].T) / math.sqrt(8)
    exact = torch.softmax(s, -1) @ v[0, :, 0]
    assert (out[0, :, 0] - exact).abs().max() < 1e-12


# ---------------------------------------------------------------- bf16: a lone visible key gets probability 1

@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_single_key_is_exact(backend):
    for seed in range(8):
        torch.manual_seed(seed)
        q = (3 * torch.randn(2, 37, 4, 64)).bfloat16().requires_grad_()
        k = (3 * torch.randn(2, 1, 2, 64)).bfloat16().requires_grad_()
        v = torch.randn(2, 1, 2, 64, dtype=torch.bfloat16, requires_grad=True)
        dout = torch.randn(2, 37, 4, 64, dtype=torch.bfloat16)
        out = tforge.attention(q, k, v, backend=backend)
        assert torch.equal(out, v.detach().repeat_interleave(2, 2).expand_as(out))
        (dv,) = torch.autograd.grad(out, (v,), dout)
        # PyTorch's answer: P = 1, so dV is the fp32 sum of dout over queries and the group's heads, rounded once
        exact = dout.double().view(2, 37, 2, 2, 64).sum((1, 3))[:, None].bfloat16()
        assert torch.equal(dv, exact), f"seed {seed}"


# ---------------------------------------------------------------- finfo.min bias rows: uniform, as fp32 PyTorch

def _plain_fp32(q, k, v, bias):
    s = (q.float().transpose(1, 2) @ k.float().transpose(1, 2).transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
    dead = torch.isinf(s).all(-1, keepdim=True) & (s < 0).all(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(dead, 0), -1).masked_fill(dead, 0)
    return (p @ v.float().transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("bias_layout", ["full", "keys", "strided"])
def test_finfo_min_bias_rows_are_uniform(backend, dtype, bias_layout):
    q, k, v = _qkv(2, 70, 67, 2, 2, 16, dtype, grad=True)
    bias = torch.randn(2, 2, 70, 67) * 0.1
    bias[:, :, 5] = torch.finfo(torch.float32).min      # masked with the fp32 minimum: uniform softmax
    bias[:, :, 6] = float("-inf")                          # masked with -inf: zeros
    bias[:, :, 7, :30] = torch.finfo(torch.float32).min    # partly masked: the other keys only
    bias[:, 1, 8] = -1e9                                   # masked only by -1e9: uniform too
    if bias_layout == "keys":  # row-broadcast bias (the kernels' qs == 0 path)
        bias = bias[:, :, 5:6].expand(2, 2, 70, 67)
    elif bias_layout == "strided":
        bias = bias.transpose(-1, -2).contiguous().transpose(-1, -2)
    out = tforge.attention(q, k, v, attn_bias=bias, backend=backend)
    expected = _plain_fp32(q, k, v, bias)
    assert_close(out, expected.to(dtype), dtype)
    rows = [5] if bias_layout == "keys" else [5, 6, 7]
    assert_close(out[:, 5], v.float().mean(1).to(dtype), dtype, name="uniform row")
    if 6 in rows:
        assert torch.equal(out[:, 6], torch.zeros_like(out[:, 6]))
    dout = torch.randn_like(out)  # the fp32 lse cannot hold m + log(n) at |m| ~ 1e38: rebuilt from the scores
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref_grads = torch.autograd.grad(_plain_fp32(q32, k32, v32, bias), (q32, k32, v32), dout.float())
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, r.to(dtype), dtype, backward=True, name=name)

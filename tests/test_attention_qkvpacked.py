"""tforge.attention_qkvpacked / attention_varlen_qkvpacked on every backend, against the fp64
reference, forward and the gradient of qkv: the stacked (..., 3, heads, head_dim) and the flat
grouped-query (..., heads_q + 2 * heads_k, head_dim) layouts at awkward shapes (seqlen 1, odd,
prime, just over a power of two; varlen with empty and length-1 sequences). The cuda backend runs
under the CPU emulator, triton under TRITON_INTERPRET=1 at tiny shapes."""
import math

import pytest
import torch

import tforge
from tforge import _backend, _native
from tforge.ops.attention import _head_dim_reason
from tforge.ops.attention_qkvpacked import attention_qkvpacked_ref, attention_varlen_qkvpacked_ref
from tforge.testing import assert_close, assert_error_within, emulated_cuda

from test_attention import _lowp

HAS_CUDA = torch.cuda.is_available()
F32, BF16 = torch.float32, torch.bfloat16


def _device(backend):
    return torch.device("cuda") if HAS_CUDA and backend != "cpu" else torch.device("cpu")


def _require(backend, dtype, head_dim):
    dev = _device(backend)
    reason = _backend.why_unavailable(backend, dev, dtype) or _head_dim_reason(backend, head_dim, dtype)
    if reason:
        pytest.skip(reason)
    return dev


def _marks(backend):
    return [pytest.mark.gpu] if HAS_CUDA and backend != "cpu" else []


def _make_qkv(lead, hq, hk, d, stacked, dtype, dev):
    """A leaf qkv and the num_heads_k keyword its layout needs."""
    if stacked:
        return torch.randn(*lead, 3, hq, d, device=dev).to(dtype).requires_grad_(), {}
    return torch.randn(*lead, hq + 2 * hk, d, device=dev).to(dtype).requires_grad_(), {"num_heads_k": hk}


def _views(qkv, hk, stacked):
    """q, k, v views of a packed qkv (the layout the op documents)."""
    flat = qkv.flatten(-3, -2) if stacked else qkv
    hq = flat.shape[-2] - 2 * hk
    return flat[..., :hq, :], flat[..., hq:hq + hk, :], flat[..., hq + hk:, :]


# (batch, seqlen, heads_q, heads_k, head_dim, causal, window, bias, stacked)
CASES = [
    (1, 1, 2, 2, 16, True, None, False, True),       # seqlen 1
    (2, 7, 3, 3, 24, False, None, False, True),      # odd
    (1, 31, 4, 2, 32, True, None, False, False),     # prime, grouped-query (flat)
    (2, 65, 4, 1, 16, True, (8, 0), False, False),   # just over a power of two, multi-query, window
    (2, 13, 2, 2, 40, False, None, True, True),      # padding bias with a fully masked row
]
TRITON_CASES = CASES[:3]  # the interpreter is slow


def _case_id(c):
    b, s, hq, hk, d, causal, window, bias, stacked = c
    return (f"b{b}-s{s}-h{hq}x{hk}-d{d}{'-causal' if causal else ''}{'-w' if window else ''}"
            f"{'-bias' if bias else ''}-{'stacked' if stacked else 'flat'}")


def _params():
    out = []
    for backend in ("torch", "cpu", "triton"):
        for dtype in (F32, BF16) if backend != "triton" else (F32,):
            for c in TRITON_CASES if backend == "triton" and not HAS_CUDA else CASES:
                out.append(pytest.param(backend, dtype, c, marks=_marks(backend),
                                        id=f"{backend}-{str(dtype)[6:]}-{_case_id(c)}"))
    return out


def _bias(b, hq, s, dev):
    bias = torch.zeros(b, 1, s, s, device=dev)
    bias[-1, :, :, s // 2:] = float("-inf")
    bias[0, :, 3, :] = float("-inf")  # a query row that sees no key: zeros, zero gradients
    return bias


def _check_padded(backend, dtype, case, dev):
    b, s, hq, hk, d, causal, window, with_bias, stacked = case
    qkv, kw = _make_qkv((b, s), hq, hk, d, stacked, dtype, dev)
    bias = _bias(b, hq, s, dev) if with_bias else None
    out = tforge.attention_qkvpacked(qkv, causal, None, window, bias, backend=backend, **kw)
    assert out.shape == (b, s, hq, d) and out.dtype == dtype
    g = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, qkv, g)
    assert dqkv.shape == qkv.shape and dqkv.dtype == dtype

    q64 = qkv.detach().double().requires_grad_()
    ref = attention_qkvpacked_ref(q64, causal, None, window, bias.double() if bias is not None else None, **kw)
    (ref_grad,) = torch.autograd.grad(ref, q64, g.double())
    low = qkv.detach().clone().requires_grad_()
    base = _lowp(*_views(low, hk, stacked), causal, 1 / math.sqrt(d), window, bias)
    (base_grad,) = torch.autograd.grad(base, low, g)
    assert_error_within(out, ref, base, factor=2.0, name="out")
    assert_error_within(dqkv, ref_grad, base_grad, factor=3.0, slack=1e-4, name="dqkv")
    if with_bias:
        assert out[0, 3].abs().sum() == 0


@pytest.mark.parametrize("backend,dtype,case", _params())
def test_qkvpacked_matches_reference(backend, dtype, case):
    _check_padded(backend, dtype, case, _require(backend, dtype, case[4]))


def _check_varlen(backend, dtype, lens, hq, hk, d, causal, stacked, dev, window=None):
    cu = tforge.cu_seqlens_from_lengths(lens, dev)
    qkv, kw = _make_qkv((sum(lens),), hq, hk, d, stacked, dtype, dev)
    out = tforge.attention_varlen_qkvpacked(qkv, cu, max(lens), causal, None, window, backend=backend, **kw)
    assert out.shape == (sum(lens), hq, d) and out.dtype == dtype
    g = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, qkv, g)
    q64 = qkv.detach().double().requires_grad_()
    ref = attention_varlen_qkvpacked_ref(q64, cu, causal, None, window, **kw)
    (ref_grad,) = torch.autograd.grad(ref, q64, g.double())
    assert_close(out, ref, dtype)
    assert_close(dqkv, ref_grad, dtype, backward=True, name="dqkv")


VARLEN = [  # (lengths, heads_q, heads_k, head_dim, stacked)
    ([0, 1, 5, 17, 0, 2], 2, 2, 16, True),
    ([3, 0, 33, 1], 4, 2, 32, False),
]


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_marks(b)) for b in ("torch", "cpu", "triton")])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lens,hq,hk,d,stacked", VARLEN, ids=["stacked", "gqa-flat"])
def test_varlen_qkvpacked_matches_reference(backend, dtype, causal, lens, hq, hk, d, stacked):
    if backend == "triton" and dtype != F32 and not HAS_CUDA:
        pytest.skip("the Triton interpreter is slow: fp32 only")
    dev = _require(backend, dtype, d)
    _check_varlen(backend, dtype, lens, hq, hk, d, causal, stacked, dev, window=(4, 0) if causal else None)


def test_qkvpacked_equals_split_attention():
    """Same numbers as tforge.attention on q, k, v views, forward and gradients (native cpu writes dq, dk,
    dv into one gradient; the split path concatenates three)."""
    dev = _require("cpu", F32, 32)
    qkv = torch.randn(2, 19, 8, 32, device=dev, requires_grad=True)
    out = tforge.attention_qkvpacked(qkv, causal=True, num_heads_k=2)
    (g1,) = torch.autograd.grad(out.square().sum(), qkv)
    ref = tforge.attention(*_views(qkv, 2, False), causal=True)
    (g2,) = torch.autograd.grad(ref.square().sum(), qkv)
    assert_close(out, ref)
    assert_close(g1, g2, backward=True)


def test_qkvpacked_strided_input():
    """A stacked qkv whose (3, heads) dims cannot be viewed flat (copied, gradient still in its layout)."""
    base = torch.randn(2, 9, 2, 3, 16, requires_grad=True)
    qkv = base.transpose(2, 3)  # (B, S, 3, H, D), not viewable as (B, S, 3H, D)
    out = tforge.attention_qkvpacked(qkv, causal=True)
    (g,) = torch.autograd.grad(out.sum(), base)
    b64 = base.detach().double().requires_grad_()
    ref = attention_qkvpacked_ref(b64.transpose(2, 3), causal=True)
    (rg,) = torch.autograd.grad(ref.sum(), b64)
    assert_close(out, ref)
    assert_close(g, rg, F32, backward=True)


# ---------------------------------------------------------------- cuda under the emulator

@pytest.fixture
def emu():
    try:
        _native.load_emulator()
    except RuntimeError as exc:  # built by `make install` (TFORGE_EMULATOR=ON)
        pytest.skip(str(exc))
    with emulated_cuda() as e:
        yield e


@pytest.mark.parametrize("case", [(2, 17, 2, 2, 64, False, None, False, True),
                                  (1, 33, 4, 2, 32, True, None, False, False),
                                  (2, 13, 2, 1, 32, False, (4, 4), True, False)], ids=_case_id)
def test_qkvpacked_cuda_emulated(emu, case):
    _check_padded("cuda", BF16, case, torch.device("cpu"))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_qkvpacked_cuda_emulated(emu, causal):
    _check_varlen("cuda", BF16, [0, 1, 40, 9], 4, 2, 32, causal, False, torch.device("cpu"))


# ---------------------------------------------------------------- op registration, compile, errors

def test_qkvpacked_opcheck_and_compile():
    qkv = torch.randn(2, 6, 6, 8, requires_grad=True)
    cu = tforge.cu_seqlens_from_lengths([0, 5, 1])
    backends = ("torch",) + (("cpu",) if _head_dim_reason("cpu", 8, F32) is None else ())
    for backend in backends:
        torch.library.opcheck(torch.ops.tforge.attention_qkvpacked.default,
                              (qkv, None, None, 6, 1, 0.3, True, -1, -1, False, backend))
        torch.library.opcheck(torch.ops.tforge.attention_qkvpacked.default,
                              (qkv[0], None, cu, 5, 2, 0.3, False, 2, -1, False, backend))
    torch._dynamo.reset()
    f = torch.compile(lambda t: tforge.attention_qkvpacked(t, causal=True, num_heads_k=1), fullgraph=True,
                      backend="aot_eager")
    out = f(qkv)
    (g,) = torch.autograd.grad(out.sum(), qkv)
    ref = attention_qkvpacked_ref(qkv, causal=True, num_heads_k=1)
    (rg,) = torch.autograd.grad(ref.sum(), qkv)
    assert_close(out, ref)
    assert_close(g, rg, backward=True)


_X = torch.randn(1, 4, 6, 8)
_CU = torch.tensor([0, 2, 4], dtype=torch.int32)


@pytest.mark.parametrize("call,match", [
    (lambda: tforge.attention_qkvpacked("qkv"), "qkv must be a torch.Tensor"),
    (lambda: tforge.attention_qkvpacked(torch.randn(4, 6, 8)), r"qkv must be \(batch, seqlen"),
    (lambda: tforge.attention_qkvpacked(torch.randn(1, 4, 4, 2, 8)), r"\(\.\.\., 3, heads, head_dim\)"),
    (lambda: tforge.attention_qkvpacked(torch.randn(1, 4, 3, 2, 8), num_heads_k=1), "grouped-query"),
    (lambda: tforge.attention_qkvpacked(torch.randn(1, 4, 7, 8)), "pass num_heads_k"),
    (lambda: tforge.attention_qkvpacked(_X, num_heads_k=3), "leave no q head"),
    (lambda: tforge.attention_qkvpacked(torch.randn(1, 4, 7, 8), num_heads_k=2), "multiple of heads"),
    (lambda: tforge.attention_qkvpacked(_X, num_heads_k=True), "num_heads_k must be a positive int"),
    (lambda: tforge.attention_qkvpacked(_X, window=(1,)), "window must be"),
    (lambda: tforge.attention_qkvpacked(_X.long()), "floating point"),
    (lambda: tforge.attention_qkvpacked(_X, attn_bias=torch.randn(3, 5)), "does not broadcast"),
    (lambda: tforge.attention_varlen_qkvpacked(_X[0], _CU.long(), 2), "int32"),
    (lambda: tforge.attention_varlen_qkvpacked(_X[0], torch.tensor([0, 1, 3], dtype=torch.int32), 2),
     "end at the token count"),
    (lambda: tforge.attention_varlen_qkvpacked(_X[0], _CU, 1), "exceeds max_seqlen"),
    (lambda: tforge.attention_varlen_qkvpacked(_X, _CU, 2), r"\(\.\.\., 3, heads, head_dim\)"),
])
def test_qkvpacked_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- rotary on a packed qkv, tforge.nn.Attention

def _rope_textbook(x, positions, base=10000.0):
    """x * cos + rotate_half(x) * sin in fp64, x (..., S, heads, D)."""
    d = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = positions.double()[:, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_rope_qkvpacked_matches_textbook(dtype):
    """q and k heads rotated, v heads copied; the gradient is the inverse rotation (and identity on v)."""
    hq, hk, d, s = 4, 2, 16, 11
    positions = torch.arange(s) + 3
    rot = tforge.nn.RotaryEmbedding(d)
    qkv = torch.randn(2, s, hq + 2 * hk, d).to(dtype).requires_grad_()
    cos, sin = rot.tables(positions, dtype)
    out = tforge.nn.rope_qkvpacked(qkv, cos, sin, hq + hk)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, g)
    q64 = qkv.detach().double().requires_grad_()
    ref = torch.cat([_rope_textbook(q64[..., :hq + hk, :], positions), q64[..., hq + hk:, :]], dim=-2)
    (ref_grad,) = torch.autograd.grad(ref, q64, g.double())
    assert_close(out, ref, dtype)
    assert_close(grad, ref_grad, dtype, backward=True)
    assert torch.equal(out[..., hq + hk:, :], qkv[..., hq + hk:, :])
    # apply_rotary (full-width tables, fp32 math) is the same rotation
    full_cos, full_sin = rot(positions)
    assert_close(tforge.nn.apply_rotary(qkv[..., :hq, :], full_cos, full_sin), ref[..., :hq, :], dtype)


def test_rope_gradcheck_and_compile():
    x = torch.randn(5, 3, 8, dtype=torch.float64, requires_grad=True)
    rot = tforge.nn.RotaryEmbedding(8)
    cos, sin = rot.tables(torch.arange(5), torch.float64)
    assert torch.autograd.gradcheck(lambda t: tforge.nn.rope_qkvpacked(t, cos, sin, 2), (x,))
    torch._dynamo.reset()
    f = torch.compile(lambda t: tforge.nn.rope_qkvpacked(t, cos, sin, 2), fullgraph=True, backend="aot_eager")
    assert_close(f(x), tforge.nn.rope_qkvpacked(x, cos, sin, 2))
    with pytest.raises(ValueError, match="heads_qk"):
        tforge.nn.rope_qkvpacked(x, cos, sin, 4)


def _attention_module_reference(m, x, positions, bias):
    """m's function from its weights, in fp64 with textbook ops (padded form)."""
    hq, hk, d = m.num_heads, m.num_kv_heads, m.head_dim
    w = {k: v.double() for k, v in m.state_dict().items()}
    qkv = torch.nn.functional.linear(x.double(), w["qkv.weight"], w.get("qkv.bias"))
    q, k, v = qkv.view(*x.shape[:2], hq + 2 * hk, d).split([hq, hk, hk], dim=-2)
    if m.rotary is not None:
        q, k = _rope_textbook(q, positions), _rope_textbook(k, positions)
    from tforge.ops.attention import attention_ref
    out = attention_ref(q, k, v, m.causal, None, m.window, bias)
    return torch.nn.functional.linear(out.flatten(-2), w["o.weight"], w.get("o.bias"))


@pytest.mark.parametrize("rotary,causal,window,bias", [(True, True, None, False), (False, False, (3, 2), True)],
                         ids=["rotary-causal", "window-bias"])
def test_nn_attention_matches_reference(rotary, causal, window, bias):
    m = tforge.nn.Attention(48, 6, num_kv_heads=2, bias=True, causal=causal, rotary=rotary, window=window)
    x = torch.randn(2, 13, 48)
    attn_bias = torch.randn(2, 1, 13, 13) if bias else None
    out = m(x, attn_bias=attn_bias)
    assert_close(out, _attention_module_reference(m, x, torch.arange(13), attn_bias))
    assert type(m.qkv) is torch.nn.Linear and type(m.o) is torch.nn.Linear
    assert m.qkv.lora_segments[1] == ("k", 16) and m.o.lora_role == "o"
    # packed form: two sequences, positions restart
    cu = tforge.cu_seqlens_from_lengths([13, 13])
    assert_close(m(x.reshape(26, 48), cu_seqlens=cu).view(2, 13, 48), m(x) if not bias else
                 _attention_module_reference(m, x, torch.arange(13), None))


def test_nn_attention_loads_out_proj_state_dict():
    """The output projection was called out_proj: such state dicts load into o."""
    m = tforge.nn.Attention(16, 2)
    old = {k.replace("o.", "out_proj.", 1) if k.startswith("o.") else k: v for k, v in m.state_dict().items()}
    assert "out_proj.weight" in old
    fresh = tforge.nn.Attention(16, 2)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.o.weight, m.o.weight) and torch.equal(fresh.o.bias, m.o.bias)

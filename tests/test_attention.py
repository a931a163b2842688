"""tforge.attention / attention_varlen on every backend present, against the
reference. FlashAttention's rule: our max error against the fp64 reference is
at most 2x (+1e-5) that of the same computation done by PyTorch at the input
dtype, 3x for gradients."""
import math

import pytest
import torch

import tforge
from tforge import _backend
from tforge.ops.attention import _head_dim_reason, _visible, attention_ref, attention_varlen_ref
from tforge.testing import assert_error_within, backend_names

HAS_CUDA = torch.cuda.is_available()
BACKENDS = backend_names()  # every backend tforge has; unavailable ones skip, saying why


def _device(backend):
    return torch.device("cuda") if HAS_CUDA and backend != "cpu" else torch.device("cpu")


def _require(backend, dtype, head_dim):
    dev = _device(backend)
    reason = _backend.why_unavailable(backend, dev, dtype) or _head_dim_reason(backend, head_dim, dtype)
    if reason:
        pytest.skip(reason)
    return dev


def _marks(backend):
    return [pytest.mark.gpu] if backend == "cuda" or (HAS_CUDA and backend != "cpu") else []


def _lowp(q, k, v, causal, scale, window, bias):
    """The same attention done by PyTorch in the input dtype (the error baseline)."""
    hq, hk = q.shape[2], k.shape[2]
    qt = q.transpose(1, 2)
    kt = k.transpose(1, 2).repeat_interleave(hq // hk, 1)
    vt = v.transpose(1, 2).repeat_interleave(hq // hk, 1)
    s = torch.matmul(qt, kt.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.to(q.dtype)
    s = s.masked_fill(~_visible(q.shape[1], k.shape[1], causal, window, q.device), float("-inf"))
    dead = ~torch.isfinite(s).any(-1, keepdim=True)  # rows with no visible key -> zeros
    p = torch.softmax(s.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    return torch.matmul(p, vt).transpose(1, 2)


# (batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, causal, window, bias)
CONFIGS = [
    (1, 1, 1, 1, 1, 64, False, None, None),
    (2, 97, 97, 4, 4, 64, True, None, None),
    (1, 128, 97, 4, 2, 59, True, None, None),
    (1, 97, 128, 2, 1, 111, False, None, None),
    (2, 128, 128, 2, 2, 128, False, None, "broadcast"),
    (2, 65, 80, 4, 2, 32, False, None, "padding"),
    (1, 96, 96, 2, 1, 64, True, (16, 0), None),
    (1, 70, 90, 2, 2, 64, False, (8, 8), "full"),
    (1, 33, 33, 3, 1, 256, True, None, None),
    (1, 1025, 1025, 2, 1, 64, True, None, None),
]


def _config_id(c):
    b, sq, sk, hq, hk, d, causal, window, bias = c
    return f"b{b}-q{sq}-k{sk}-h{hq}x{hk}-d{d}{'-causal' if causal else ''}{'-w' if window else ''}" + (
        f"-{bias}" if bias else "")


def _params():
    out = []
    for backend in BACKENDS:
        dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if HAS_CUDA and backend != "cpu" else [])
        for dtype in dtypes:
            for c in CONFIGS:
                if backend == "triton" and not HAS_CUDA and c[1] > 512:
                    continue  # the Triton interpreter is too slow for long sequences
                out.append(pytest.param(backend, dtype, c, marks=_marks(backend),
                                        id=f"{backend}-{str(dtype)[6:]}-{_config_id(c)}"))
    return out


def _make_bias(kind, b, hq, sq, sk, device):
    if kind is None:
        return None
    if kind == "broadcast":
        return torch.randn(1, 1, sq, sk, device=device)
    if kind == "full":
        return torch.randn(b, hq, sq, sk, device=device)
    # padding mask: the last keys of batch 1 are masked; one query row sees no key at all
    bias = torch.zeros(b, 1, sq, sk, device=device)
    bias[-1, :, :, sk // 2:] = float("-inf")
    bias[0, :, 3, :] = float("-inf")
    return bias


@pytest.mark.parametrize("backend,dtype,config", _params())
def test_attention_matches_reference(backend, dtype, config):
    b, sq, sk, hq, hk, d, causal, window, bias_kind = config
    dev = _require(backend, dtype, d)
    q = torch.randn(b, sq, hq, d, device=dev).to(dtype).requires_grad_()
    k = torch.randn(b, sk, hk, d, device=dev).to(dtype).requires_grad_()
    v = torch.randn(b, sk, hk, d, device=dev).to(dtype).requires_grad_()
    bias = _make_bias(bias_kind, b, hq, sq, sk, dev)
    scale = 1.0 / math.sqrt(d)

    out = tforge.attention(q, k, v, causal=causal, window=window, attn_bias=bias, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_ref(q64, k64, v64, causal, scale, window, bias.double() if bias is not None else None)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    ql, kl, vl = (t.detach().clone().requires_grad_() for t in (q, k, v))
    base = _lowp(ql, kl, vl, causal, scale, window, bias)
    base_grads = torch.autograd.grad(base, (ql, kl, vl), dout)

    assert_error_within(out, ref, base, factor=2.0, name="out")
    for name, g, r, bg in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads):
        assert g.shape == r.shape and g.dtype == dtype, name
        assert_error_within(g, r, bg, factor=3.0, name=name)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_marks(b)) for b in BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_varlen_matches_reference(backend, dtype, causal):
    d = 64
    dev = _require(backend, dtype, d)
    lens_q, lens_k = [1, 37, 0, 64, 5], [1, 40, 3, 64, 0]
    cu_q = tforge.cu_seqlens_from_lengths(lens_q, dev)
    cu_k = tforge.cu_seqlens_from_lengths(lens_k, dev)
    q = torch.randn(sum(lens_q), 4, d, device=dev).to(dtype).requires_grad_()
    k = torch.randn(sum(lens_k), 2, d, device=dev).to(dtype).requires_grad_()
    v = torch.randn(sum(lens_k), 2, d, device=dev).to(dtype).requires_grad_()
    out = tforge.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, backend=backend)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_varlen_ref(q64, k64, v64, cu_q, cu_k, causal)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    tol = 1e-4 if dtype == torch.float32 else 4e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=3 * tol, rtol=3 * tol)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=_marks(b)) for b in BACKENDS])
def test_attention_noncontiguous_large_logits_and_empty_rows(backend):
    dev = _require(backend, torch.float32, 64)
    qkv = torch.randn(2, 50, 3, 4, 64, device=dev)
    q, k, v = (qkv[:, :, i] * (30.0 if i == 0 else 1.0) for i in range(3))  # strided views, huge logits
    bias = torch.zeros(2, 4, 50, 50, device=dev)
    bias[1, 2, 7] = float("-inf")  # one fully masked query row
    out = tforge.attention(q, k, v, attn_bias=bias, backend=backend)
    ref = attention_ref(q.double(), k.double(), v.double(), attn_bias=bias.double())
    assert torch.isfinite(out).all()
    assert torch.equal(out[1, 7, 2], torch.zeros(64, device=dev))
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4)


def test_backends_agree_on_automatic_choice():
    q = torch.randn(1, 8, 2, 16)
    name = _backend.resolve(q.device, q.dtype, None, supports=lambda n: _head_dim_reason(n, 16, q.dtype))
    assert name in ("cpu", "torch")
    assert _backend.resolve(q.device, torch.float16, None,
                            supports=lambda n: _head_dim_reason(n, 16, torch.float16)) == "torch"


@pytest.mark.parametrize("call,match", [
    (lambda: tforge.attention(torch.randn(1, 4, 3, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)),
     "multiple of heads"),
    (lambda: tforge.attention(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 9), torch.randn(1, 4, 2, 9)),
     "same head_dim"),
    (lambda: tforge.attention(torch.randn(4, 2, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8)), "4-D"),
    (lambda: tforge.attention(torch.randn(1, 4, 2, 8), torch.randn(2, 4, 2, 8), torch.randn(2, 4, 2, 8)),
     "same batch"),
    (lambda: tforge.attention(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8).double()),
     "one dtype"),
    (lambda: tforge.attention(*[torch.randn(1, 4, 2, 8)] * 3, attn_bias=torch.randn(3, 4)), "does not broadcast"),
    (lambda: tforge.attention(*[torch.randn(1, 4, 2, 8)] * 3, attn_bias=torch.randn(4, 4, requires_grad=True)),
     "no gradient flows"),
    (lambda: tforge.attention(*[torch.randn(1, 4, 2, 8)] * 3, window=(3,)), "window must be"),
    (lambda: tforge.attention(*[torch.randn(1, 4, 2, 300)] * 3, backend="cpu"), "head_dim up to 256|no attention"),
    (lambda: tforge.attention(*[torch.randn(1, 4, 2, 8)] * 3, backend="cuda"), "cuda"),
    (lambda: tforge.attention_varlen(*[torch.randn(5, 2, 8)] * 3, torch.tensor([0, 2, 5]),
                                     torch.tensor([0, 2, 5], dtype=torch.int32), 3, 3), "int32"),
    (lambda: tforge.attention_varlen(*[torch.randn(5, 2, 8)] * 3, torch.tensor([0, 2, 4], dtype=torch.int32),
                                     torch.tensor([0, 2, 5], dtype=torch.int32), 3, 3), "end at the token count"),
    (lambda: tforge.attention_varlen(*[torch.randn(5, 2, 8)] * 3, torch.tensor([0, 3, 2, 5], dtype=torch.int32),
                                     torch.tensor([0, 2, 3, 5], dtype=torch.int32), 3, 3), "not decrease"),
    (lambda: tforge.attention_varlen(*[torch.randn(5, 2, 8)] * 3, torch.tensor([0, 1, 5], dtype=torch.int32),
                                     torch.tensor([0, 1, 5], dtype=torch.int32), 3, 3), "exceeds max_seqlen"),
])
def test_attention_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_attention_opcheck_and_compile():
    q, k, v = (torch.randn(1, 6, 2, 8, requires_grad=True) for _ in range(3))
    for backend in ("torch",) + (("cpu",) if _head_dim_reason("cpu", 8, torch.float32) is None else ()):
        torch.library.opcheck(torch.ops.tforge.attention.default,
                              (q, k, v, None, None, None, 6, 6, 0.3, True, -1, -1, False, backend))
    torch._dynamo.reset()
    f = torch.compile(lambda a, b, c: tforge.attention(a, b, c, causal=True), fullgraph=True, backend="aot_eager")
    out = f(q, k, v)
    out.sum().backward()
    torch.testing.assert_close(out, attention_ref(q, k, v, causal=True), atol=1e-5, rtol=1e-5)


def test_nn_attention_packed_equals_padded():
    """Two sequences run packed (varlen, rotary positions restart) == run one by one."""
    torch.manual_seed(0)
    m = tforge.nn.Attention(32, 4, num_kv_heads=2, causal=True, rotary=True)
    a, b = torch.randn(1, 5, 32), torch.randn(1, 9, 32)
    packed = m(torch.cat([a[0], b[0]]), cu_seqlens=tforge.cu_seqlens_from_lengths([5, 9]))
    torch.testing.assert_close(packed[:5], m(a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[5:], m(b)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        tforge.nn.Attention(32, 4, num_kv_heads=3)


def test_attention_scalar_cpu_kernels(monkeypatch):
    """The fallback kernel set (CPUs without AVX2) gives the same results."""
    if _head_dim_reason("cpu", 40, torch.float32):
        pytest.skip(_head_dim_reason("cpu", 40, torch.float32))
    monkeypatch.setenv("TFORGE_CPU_ISA", "scalar")
    q, k, v = (torch.randn(2, 37, 4, 40, requires_grad=True) for _ in range(3))
    out = tforge.attention(q, k, v, causal=True, backend="cpu")
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = attention_ref(q, k, v, causal=True)
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)

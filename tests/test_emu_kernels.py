"""tforge's CUDA kernels, executed on the CPU by the warp-level emulator (tforge._emu: the unmodified
csrc/cuda sources and host code compiled as host C++, see docs/emulator.md), through the public ops
with backend="cuda", against the references, forward and backward, at small odd shapes. Any data
race, unretired cp.async, out-of-bounds access or deadlock the emulator finds fails the test with a
RuntimeError. Every one of the 14 kernels is launched (test_every_kernel_launched)."""
import math

import pytest
import torch

import tforge
from tforge.ops.attention import attention_ref, attention_varlen_ref
from tforge.ops.int8_gemm import int8_linear_ref, int8_matmul_ref, quantize_per_token_ref
from tforge.ops.layer_norm import add_layer_norm_ref, layer_norm_ref
from tforge.ops.rms_norm import add_rms_norm_ref, rms_norm_ref
from tforge.ops.sparse24 import nm_mask_ref, sparse24_ref
from tforge import _native
from tforge.testing import assert_close, assert_error_within, emulated_cuda

from test_attention import _lowp

try:
    _native.load_emulator()
except RuntimeError as exc:  # built by `make install` (TFORGE_EMULATOR=ON), as in CI
    pytest.skip(str(exc), allow_module_level=True)

KERNELS = {"norm_fwd_kernel", "norm_bwd_dx_kernel", "norm_bwd_partials_kernel", "norm_bwd_final_kernel",
           "attn_fwd_kernel", "attn_bwd_pre_kernel", "attn_bwd_dq_kernel", "attn_bwd_dkdv_kernel",
           "int8_gemm_kernel", "int8_gemm_fallback_kernel", "quantize_rows_kernel",
           "sparse24_linear_kernel", "nm_mask_kernel", "cross_entropy_kernel"}


@pytest.fixture
def emu():
    """The emulated H100 (132 SMs) for the duration of one test."""
    with emulated_cuda() as e:
        yield e


@pytest.fixture
def emu_one_sm():
    """An emulated GPU with one SM: the host code then picks its large-tile configurations at small shapes."""
    with emulated_cuda(sms=1) as e:
        yield e


# ---------------------------------------------------------------- norms

NORM_CASES = [  # (rows, hidden, dtype, strided rows)
    (3, 1, torch.bfloat16, False),
    (5, 33, torch.float16, False),
    (7, 1000, torch.bfloat16, False),   # 16-byte vector path
    (4, 1000, torch.float16, True),     # rows of a wider tensor
    (2, 4104, torch.bfloat16, False),   # one row per block: shared-memory reductions
    (3, 257, torch.float32, False),
]


def _norm_inputs(rows, hidden, dtype, strided):
    x = torch.randn(rows, hidden + (24 if strided else 0), dtype=dtype)[:, :hidden]
    return x


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "add"])
@pytest.mark.parametrize("rows,hidden,dtype,strided", NORM_CASES)
def test_norm(emu, rms, fused, rows, hidden, dtype, strided):
    x = _norm_inputs(rows, hidden, dtype, strided).requires_grad_()
    res = torch.randn(rows, hidden, dtype=dtype, requires_grad=True) if fused else None
    w = torch.randn(hidden, dtype=dtype, requires_grad=True)
    b = None if rms else torch.randn(hidden, dtype=dtype, requires_grad=True)
    leaves = [t for t in (x, res, w, b) if t is not None]
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    rx, rres, rw = ref_leaves[0], ref_leaves[1] if fused else None, ref_leaves[2 if fused else 1]
    rb = None if rms else ref_leaves[-1]
    if fused:
        y, s = (tforge.add_rms_norm(x, res, w, backend="cuda") if rms
                else tforge.add_layer_norm(x, res, w, b, backend="cuda"))
        ry, rs = add_rms_norm_ref(rx, rres, rw) if rms else add_layer_norm_ref(rx, rres, rw, rb)
        outs, refs = (y, s), (ry, rs)
    else:
        y = tforge.rms_norm(x, w, backend="cuda") if rms else tforge.layer_norm(x, w, b, backend="cuda")
        outs, refs = (y,), (rms_norm_ref(rx, rw) if rms else layer_norm_ref(rx, rw, rb),)
    for o, r in zip(outs, refs):
        assert_close(o, r, dtype)
    gs = [torch.randn_like(o) for o in outs]
    torch.autograd.backward(outs, gs)
    torch.autograd.backward(refs, [g.float() for g in gs])
    for t, r, name in zip(leaves, ref_leaves, ["x", "residual", "weight", "bias"] if fused else ["x", "weight", "bias"]):
        # dweight / dbias sum over rows: scale the tolerance with the row count
        tol = 1.0 if name in ("x", "residual") else math.sqrt(rows)
        err = (t.grad.float() - r.grad).abs().max().item()
        bound = tol * (3e-2 if dtype != torch.float32 else 1e-4) * (1 + r.grad.abs().max().item())
        assert err <= bound, f"d{name}: max error {err:.3g} > {bound:.3g}"


def test_norm_empty_and_single_row(emu):
    x = torch.randn(0, 40, dtype=torch.bfloat16)
    assert tforge.layer_norm(x, backend="cuda").shape == (0, 40)
    x = torch.randn(1, 40, dtype=torch.bfloat16)
    assert_close(tforge.rms_norm(x, backend="cuda"), rms_norm_ref(x.float()), torch.bfloat16)


# ---------------------------------------------------------------- attention

# (batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, causal, window, bias, dtype)
ATTN_CASES = [
    (1, 1, 1, 1, 1, 64, False, None, None, torch.bfloat16),
    (2, 63, 63, 2, 2, 32, True, None, None, torch.float16),
    (1, 65, 130, 4, 2, 64, False, None, None, torch.bfloat16),     # GQA, seqlen_q != seqlen_k
    (1, 130, 65, 2, 1, 128, True, None, None, torch.float16),      # causal rows with no visible key
    (1, 65, 65, 2, 2, 64, False, (8, 4), None, torch.bfloat16),    # sliding window
    (2, 63, 65, 2, 2, 32, False, None, "masked", torch.bfloat16),  # bias, fully masked rows
    (1, 1, 130, 2, 2, 128, False, None, "full", torch.float16),    # decode-like single query
]


def _bias(kind, b, h, sq, sk):
    if kind is None:
        return None
    bias = torch.randn(b, h, sq, sk)
    if kind == "masked":
        bias[:, :, ::3, :] = float("-inf")  # every third query sees nothing: zeros, zero grads
        bias[:, :, 1, sk // 2:] = float("-inf")
    return bias


@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "b{}_q{}_k{}_h{}/{}_d{}_{}{}{}_{}".format(
    c[0], c[1], c[2], c[3], c[4], c[5], "causal" if c[6] else "full", f"_win{c[7]}" if c[7] else "",
    f"_bias-{c[8]}" if c[8] else "", str(c[9])[6:]))
def test_attention(emu, case):
    b, sq, sk, hq, hk, d, causal, window, bias_kind, dtype = case
    q = torch.randn(b, sq, hq, d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, sk, hk, d, dtype=dtype, requires_grad=True)
    v = torch.randn(b, sk, hk, d, dtype=dtype, requires_grad=True)
    bias = _bias(bias_kind, b, hq, sq, sk)
    out = tforge.attention(q, k, v, causal=causal, window=window, attn_bias=bias, backend="cuda")
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_ref(q64, k64, v64, causal, None, window, bias.double() if bias is not None else None)
    base = _lowp(q.detach(), k.detach(), v.detach(), causal, 1 / math.sqrt(d), window, bias)
    assert_error_within(out, ref, base, name="out")
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.double())
    qb, kb, vb = (t.detach().requires_grad_() for t in (q, k, v))
    _lowp(qb, kb, vb, causal, 1 / math.sqrt(d), window, bias).backward(g)
    for name, t, r, lo in (("dq", q, q64, qb), ("dk", k, k64, kb), ("dv", v, v64, vb)):
        assert_error_within(t.grad, r.grad, lo.grad, factor=3.0, slack=1e-4, name=name)


def test_attention_finfo_min_rows_match_the_other_backends(emu):
    """A row masked only by finfo(float32).min keeps a uniform softmax on every backend (plain fp32
    PyTorch's answer) and a -inf row gives zeros; the CUDA kernel clamps finite biases to -1e38."""
    q = torch.randn(1, 9, 2, 32, dtype=torch.bfloat16)
    k = torch.randn(1, 70, 2, 32, dtype=torch.bfloat16)
    v = torch.randn(1, 70, 2, 32, dtype=torch.bfloat16)
    bias = torch.randn(1, 2, 9, 70)
    bias[:, :, 2] = torch.finfo(torch.float32).min
    bias[:, :, 5] = float("-inf")
    out = tforge.attention(q, k, v, attn_bias=bias, backend="cuda")
    assert_close(out, attention_ref(q.float(), k.float(), v.float(), attn_bias=bias), torch.bfloat16)
    assert_close(out[0, 2], v[0].float().mean(0), torch.bfloat16)  # uniform over the 70 keys
    assert out[0, 5].abs().sum() == 0
    assert_close(out, tforge.attention(q, k, v, attn_bias=bias, backend="cpu"), torch.bfloat16)


def test_attention_finfo_min_rows_backward(emu):
    """Found by the emulator: for a row masked only by finfo.min, lse * log2(e) has lost log2 of the
    row's sum, and P = exp2(S - lse2) gave every key P = 1. The pre kernel now recomputes such rows'
    max and log-sum and keeps them apart."""
    q = torch.randn(1, 9, 2, 32, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 70, 2, 32, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 70, 2, 32, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(1, 2, 9, 70)
    bias[:, :, 2] = torch.finfo(torch.float32).min
    bias[:, :, 4] = -1e9
    bias[:, :, 6, 30:] = torch.finfo(torch.float32).min  # half the keys
    g = torch.randn(1, 9, 2, 32, dtype=torch.bfloat16)
    tforge.attention(q, k, v, attn_bias=bias, backend="cuda").backward(g)
    # fp32, as plain PyTorch computes it: at |bias| ~ 1e9 the scores' differences are below fp32's
    # resolution there, so those rows are uniform too (fp64 would still tell the keys apart).
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    attention_ref(q32, k32, v32, attn_bias=bias).backward(g.float())
    for name, t, r in (("dq", q, q32), ("dk", k, k32), ("dv", v, v32)):
        assert_close(t.grad, r.grad, torch.bfloat16, backward=True, name=name)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_varlen(emu, causal):
    lens_q, lens_k = [1, 63, 66], [5, 63, 40]
    cu_q = tforge.cu_seqlens_from_lengths(lens_q)
    cu_k = tforge.cu_seqlens_from_lengths(lens_k)
    q = torch.randn(sum(lens_q), 4, 64, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(sum(lens_k), 2, 64, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(sum(lens_k), 2, 64, dtype=torch.bfloat16, requires_grad=True)
    out = tforge.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, backend="cuda")
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_varlen_ref(q64, k64, v64, cu_q, cu_k, causal)
    assert_close(out, ref, torch.bfloat16)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.double())
    for name, t, r in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(t.grad, r.grad, torch.bfloat16, backward=True, name=name)


def test_attention_varlen_bad_offsets_stay_in_bounds(emu):
    """The GPU cannot validate cu_seqlens without a sync (the CPU path rejects bad ones before any
    kernel): the CUDA kernels clamp every sequence to the tensors and to max_seqlen, so nothing is
    read or written out of bounds (the emulator would report it), and rows no sequence covers are
    zero, as on the Triton backend."""
    from tforge.ops.attention import _fwd_native
    q = torch.randn(20, 2, 32, dtype=torch.bfloat16)
    k, v = torch.randn(12, 2, 32, dtype=torch.bfloat16), torch.randn(12, 2, 32, dtype=torch.bfloat16)
    cu_q = torch.tensor([0, 9, 15], dtype=torch.int32)  # sequence 0 longer than max_seqlen_q = 6; 15.. uncovered
    cu_k = torch.tensor([0, 5, 40], dtype=torch.int32)  # sequence 1 runs past the 12 keys
    out, _ = _fwd_native(q, k, v, None, cu_q, cu_k, 6, 8, 1 / math.sqrt(32), False, (-1, -1), "cuda")
    assert out[6:9].abs().sum() == 0 and out[15:].abs().sum() == 0
    assert_close(out[:6], attention_ref(q[None, :6].float(), k[None, :5].float(), v[None, :5].float())[0],
                 torch.bfloat16)
    assert_close(out[9:15], attention_ref(q[None, 9:15].float(), k[None, 5:].float(), v[None, 5:].float())[0],
                 torch.bfloat16)


# ---------------------------------------------------------------- int8

@pytest.mark.parametrize("m,k,n", [(1, 100, 9), (7, 4096, 9), (64, 100, 9), (64, 4096, 9), (13, 64, 33)])
def test_int8_matmul(emu, m, k, n):
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    torch.testing.assert_close(tforge.int8_matmul(a, b, backend="cuda"), int8_matmul_ref(a, b), rtol=0, atol=0)


def test_int8_large_tiles(emu_one_sm):
    """With one SM the host code picks the 128 x 256 tiles (8 warps, 4 stages) at M = 129."""
    a = torch.randint(-127, 128, (129, 192), dtype=torch.int8)
    b = torch.randint(-127, 128, (300, 192), dtype=torch.int8)
    torch.testing.assert_close(tforge.int8_matmul(a, b, backend="cuda"), int8_matmul_ref(a, b), rtol=0, atol=0)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n", [(1, 96, 9), (7, 100, 9), (64, 256, 40)])
def test_int8_linear(emu, out_dtype, m, k, n):
    x = torch.randn(m, k)
    w = torch.randn(n, k)
    x_q, x_s = quantize_per_token_ref(x)
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    w_s = torch.rand(n) / 100 + 1e-3
    bias = torch.randn(n)
    y = tforge.int8_linear(x_q, x_s, w_q, w_s, bias, out_dtype=out_dtype, backend="cuda")
    ref = int8_linear_ref(x_q, x_s, w_q, w_s, bias, out_dtype=out_dtype)
    assert_close(y, ref, out_dtype)


@pytest.mark.parametrize("col_scale", [False, True], ids=["", "col_scale"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 100), (5, 1032), (3, 5000)])
def test_quantize_per_token(emu, dtype, rows, cols, col_scale):
    x = torch.randn(rows, cols, dtype=dtype) * 3
    x[0, 0] = 0.0
    cs = torch.rand(cols) + 0.5 if col_scale else None
    q, s = tforge.quantize_per_token(x, col_scale=cs, backend="cuda")
    rq, rs = quantize_per_token_ref(x, cs)
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    assert (q.int() - rq.int()).abs().max().item() <= 1  # ties may round either way only via fp32 x/scale
    assert (q != rq).float().mean().item() < 1e-3


# ---------------------------------------------------------------- 2:4 sparsity

def _packed(n, k, dtype):
    w = torch.randn(n, k, dtype=dtype)
    return tforge.pack_2to4(w * tforge.nm_mask(w.float().abs(), 2, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [
    (1, 128, 512),   # decode: 128 x 16 tiles, split-K over the emulated 132 SMs
    (7, 130, 96),    # N tail, few K tiles: unsplit
    (64, 64, 256),   # 128 x 64 tiles
    (5, 33, 100),    # K % 32 != 0: the synchronous element loader
])
def test_sparse24_linear(emu, dtype, m, n, k):
    packed = _packed(n, k, dtype)
    x = torch.randn(m, k, dtype=dtype, requires_grad=True)
    bias = torch.randn(n, dtype=dtype)
    y = tforge.sparse24_linear(x, packed, bias, backend="cuda")
    ref = sparse24_ref(x.detach().float(), packed, bias.float())
    assert_close(y, ref, dtype)


def test_sparse24_large_tiles(emu_one_sm):
    packed = _packed(256, 128, torch.bfloat16)
    x = torch.randn(129, 128, dtype=torch.bfloat16)
    assert_close(tforge.sparse24_linear(x, packed, backend="cuda"), sparse24_ref(x.float(), packed), torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_nm_mask(emu, dtype, n, m):
    scores = torch.randn(7, 8 * m, dtype=dtype)
    scores[0, :m] = 1.0  # ties: the lower index wins
    torch.testing.assert_close(tforge.nm_mask(scores, n, m, backend="cuda"), nm_mask_ref(scores, n, m))


# ---------------------------------------------------------------- larger shapes (slow)

@pytest.mark.slow
def test_larger_shapes(emu):
    """A few GPU-like sizes: several K tiles, pipeline wrap-around, many CTAs."""
    q = torch.randn(2, 257, 4, 128, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 300, 2, 128, dtype=torch.bfloat16, requires_grad=True)
    out = tforge.attention(q, k, k, causal=True, backend="cuda")
    assert_close(out, attention_ref(q.float(), k.float(), k.float(), causal=True), torch.bfloat16)
    out.float().sum().backward()
    x = torch.randn(64, 8192, dtype=torch.bfloat16)
    assert_close(tforge.layer_norm(x, backend="cuda"), layer_norm_ref(x.float()), torch.bfloat16)
    a = torch.randint(-127, 128, (256, 1024), dtype=torch.int8)
    b = torch.randint(-127, 128, (512, 1024), dtype=torch.int8)
    torch.testing.assert_close(tforge.int8_matmul(a, b, backend="cuda"), int8_matmul_ref(a, b), rtol=0, atol=0)
    packed = _packed(512, 1024, torch.float16)
    x = torch.randn(256, 1024, dtype=torch.float16)
    assert_close(tforge.sparse24_linear(x, packed, backend="cuda"), sparse24_ref(x.float(), packed), torch.float16)


# ---------------------------------------------------------------- coverage

def test_every_kernel_launched():
    """One tiny call of every op (forward and backward) launches each of the 14 CUDA kernels."""
    with emulated_cuda() as e:
        e.reset_launch_counts()
        x = torch.randn(3, 40, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(40, dtype=torch.bfloat16, requires_grad=True)
        tforge.layer_norm(x, w, w, backend="cuda").sum().backward()
        q = torch.randn(1, 5, 1, 32, dtype=torch.bfloat16, requires_grad=True)
        tforge.attention(q, q, q, backend="cuda").float().sum().backward()
        a = torch.randint(-127, 128, (5, 32), dtype=torch.int8)
        tforge.int8_matmul(a, a, backend="cuda")                     # tensor-core path
        a30 = torch.randint(-127, 128, (5, 30), dtype=torch.int8)
        tforge.int8_matmul(a30, a30, backend="cuda")                 # rows not 16-byte aligned: fallback
        tforge.quantize_per_token(x.detach(), backend="cuda")
        tforge.sparse24_linear(x.detach()[:, :32], _packed(8, 32, torch.bfloat16), backend="cuda")
        tforge.nm_mask(x.detach(), backend="cuda")
        tforge.cross_entropy(x, torch.tensor([0, 5, 39]), backend="cuda").backward()  # (cross_entropy.py tests it)
        missing = KERNELS - set(e.launch_counts())
    assert not missing, f"kernels never launched: {sorted(missing)}"

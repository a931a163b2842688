"""Every Triton kernel with the configuration the GPU launches (tile sizes, num_warps, num_stages, the
dtype's code path), at small odd shapes, against the references: forward and backward. Without a GPU
this runs under TRITON_INTERPRET=1, where the launchers pick the GPU's configurations too; the only
differences there are the workarounds listed in docs/triton-interpreter.md. Each test records the
launch parameters (a spy around the kernel) and checks them against the launcher's GPU table, so a
launcher that went back to interpreter-only tiles would fail here. TFORGE_TRITON_GPU_CONFIGS=1 is set
so that the launch-size exceptions are off as well. Also: attention biases of finfo(float32).min
(uniform softmax, as plain fp32 PyTorch gives) and varlen tokens after cu_seqlens[-1] (zero-filled)."""
import math

import pytest
import torch

import tforge
from tforge import _backend
from tforge.ops.attention import attention_ref
from tforge.ops.int8_gemm import int8_linear_ref
from tforge.ops.sparse24 import nm_mask_ref, pack_2to4, sparse24_ref
from tforge.testing import assert_close

HAS_CUDA = torch.cuda.is_available()
DEV = torch.device("cuda") if HAS_CUDA else torch.device("cpu")
pytestmark = [pytest.mark.gpu] if HAS_CUDA else []

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def _need(dtype=F32):
    reason = _backend.why_unavailable("triton", DEV, dtype)
    if reason:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _gpu_configs(monkeypatch):
    monkeypatch.setenv("TFORGE_TRITON_GPU_CONFIGS", "1")


class _Spy:
    """Stands in for a @triton.jit kernel in its module; records grid and keyword (meta) arguments."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches = []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.launches.append(dict(kwargs, grid=tuple(grid)))
            return launch(*args, **kwargs)
        return run


def _spy(monkeypatch, module, *names):
    spies = {}
    for name in names:
        spies[name] = _Spy(getattr(module, name))
        monkeypatch.setattr(module, name, spies[name])
    return spies


def _cfg(launch, *keys):
    return tuple(launch[k] for k in keys)


def _interp_bf16(dtype):
    return dtype == BF16 and not HAS_CUDA


# ---------------------------------------------------------------- attention

# (dtype, batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, causal, window, bias)
ATTN = [
    (F32, 1, 37, 45, 4, 2, 59, True, None, "padding"),
    (F32, 1, 21, 19, 2, 1, 111, False, (5, 2), None),
    (F32, 1, 13, 17, 1, 1, 200, True, None, "full"),
    (BF16, 2, 67, 67, 2, 2, 64, True, None, None),
    (BF16, 1, 33, 70, 2, 1, 100, False, None, "full"),
    (BF16, 1, 19, 23, 1, 1, 256, False, (7, -1), None),
    (F16, 1, 70, 65, 3, 1, 32, False, (20, 3), "padding"),
    (F16, 1, 29, 35, 2, 2, 128, True, None, None),
    (F16, 1, 17, 21, 1, 1, 200, False, None, "full"),
]


def _bias(kind, b, hq, sq, sk):
    if kind is None:
        return None
    if kind == "full":
        return torch.randn(b, hq, sq, sk, device=DEV)
    bias = torch.zeros(b, 1, sq, sk, device=DEV)  # padding: the last keys masked, one row sees no key
    bias[:, :, :, sk - 5:] = float("-inf")
    bias[0, :, 3, :] = float("-inf")
    return bias


def _attn_id(c):
    dtype, b, sq, sk, hq, hk, d, causal, window, bias = c
    return (f"{str(dtype)[6:]}-b{b}-q{sq}-k{sk}-h{hq}x{hk}-d{d}" + ("-causal" if causal else "")
            + (f"-w{window[0]}_{window[1]}" if window else "") + (f"-{bias}" if bias else ""))


@pytest.mark.parametrize("config", ATTN, ids=[_attn_id(c) for c in ATTN])
def test_attention_gpu_config(monkeypatch, config):
    from tforge.triton import attention as tattn
    dtype, b, sq, sk, hq, hk, d, causal, window, bias_kind = config
    _need(dtype)
    spies = _spy(monkeypatch, tattn, "_attention_fwd_kernel", "_attention_bwd_preprocess_kernel",
                 "_attention_bwd_stats_kernel", "_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel")
    q = torch.randn(b, sq, hq, d, device=DEV).to(dtype).requires_grad_()
    k = torch.randn(b, sk, hk, d, device=DEV).to(dtype).requires_grad_()
    v = torch.randn(b, sk, hk, d, device=DEV).to(dtype).requires_grad_()
    bias = _bias(bias_kind, b, hq, sq, sk)
    out = tforge.attention(q, k, v, causal=causal, window=window, attn_bias=bias, backend="triton")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    # The launches: the GPU table's tiles, warps and stages; fp32 (IEEE) dots only for fp32 inputs
    # (and bf16 under the interpreter, docs/triton-interpreter.md).
    fp32 = dtype == F32
    fwd, dq = spies["_attention_fwd_kernel"].launches[0], spies["_attention_bwd_dq_kernel"].launches[0]
    dkdv, pre = spies["_attention_bwd_dkdv_kernel"].launches[0], spies["_attention_bwd_preprocess_kernel"].launches[0]
    stats = spies["_attention_bwd_stats_kernel"].launches[0]
    keys = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
    assert _cfg(fwd, *keys) == tattn._fwd_config(d, fp32) == _cfg(dq, *keys) == _cfg(stats, *keys)
    assert _cfg(dkdv, *keys) == tattn._bwd_config(d, fp32)
    assert pre["BLOCK_M"] == tattn._pre_block_m(tattn._block_d(d))
    for launch in (fwd, dkdv, dq, stats):
        assert launch["BLOCK_D"] == max(16, 1 << (d - 1).bit_length())
        assert launch["DOT_F32"] == (fp32 or _interp_bf16(dtype))
        assert launch.get("SOFT_BF16", _interp_bf16(dtype)) == _interp_bf16(dtype)
    assert fwd["grid"] == (math.ceil(sq / fwd["BLOCK_M"]), b, hq)
    assert dkdv["grid"] == (math.ceil(sk / dkdv["BLOCK_N"]), b, hk)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_ref(q64, k64, v64, causal, 1.0 / math.sqrt(d), window,
                        bias.double() if bias is not None else None)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    tol = {F32: 2e-5, BF16: 3e-2, F16: 4e-3}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=4 * tol, rtol=4 * tol)


def _plain_fp32(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v in plain fp32 PyTorch (no masking rules), (B, S, H, D) layout."""
    g = q.shape[2] // k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.repeat_interleave(g, 2).transpose(1, 2), v.repeat_interleave(g, 2).transpose(1, 2)
    p = torch.softmax(qt @ kt.transpose(-1, -2) * scale + bias, -1)
    return (p @ vt).transpose(1, 2)


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=["float32", "bfloat16", "float16"])
def test_attention_finfo_min_bias_is_uniform(dtype):
    """Rows masked only by finfo(float32).min (or -1e9) keep the uniform softmax of plain fp32 PyTorch,
    forward and backward (the bias is clamped to -1e38 as in the CUDA kernel); -inf rows stay empty."""
    _need(dtype)
    b, s, hq, hk, d = 1, 37, 2, 1, 40
    q = torch.randn(b, s, hq, d, device=DEV).to(dtype).requires_grad_()
    k = torch.randn(b, s + 6, hk, d, device=DEV).to(dtype).requires_grad_()
    v = torch.randn(b, s + 6, hk, d, device=DEV).to(dtype).requires_grad_()
    bias = torch.randn(b, hq, s, s + 6, device=DEV)
    lo = torch.finfo(torch.float32).min
    bias[0, :, 2, :] = lo  # a row masked only by finfo.min
    bias[0, 1, 5, :] = -1e9  # ... only by -1e9
    bias[0, 0, 9, ::2] = lo  # half masked
    bias[0, :, 30, :] = float("-inf")  # no key: zeros
    scale = 1.0 / math.sqrt(d)
    out = tforge.attention(q, k, v, attn_bias=bias, backend="triton")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    live = bias.clone()
    live[0, :, 30, :] = 0.0  # plain softmax would give NaN there; the kernels give 0
    ref = _plain_fp32(qf, kf, vf, live, scale)
    ref[:, 30] = 0.0
    ref_grads = torch.autograd.grad(ref, (qf, kf, vf), dout.float())
    tol = {F32: 2e-5, BF16: 3e-2, F16: 4e-3}[dtype]
    assert torch.equal(out[0, 30].float(), torch.zeros_like(out[0, 30].float()))
    uniform = vf.detach().mean(1)[0, 0]  # row 2 of head 0: the mean of v
    torch.testing.assert_close(out[0, 2, 0].float(), uniform, atol=tol, rtol=tol)
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g.float()).all()
        torch.testing.assert_close(g.float(), r, atol=4 * tol, rtol=4 * tol)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_attention_varlen_gpu_config_and_trailing_tokens(monkeypatch, dtype):
    """Packed sequences (one empty, keys longer than queries), causal, with tokens after cu_seqlens[-1]:
    those belong to no sequence and stay zero-filled (out 0, lse -inf, gradients 0)."""
    from tforge.triton import attention as tattn
    _need(dtype)
    spies = _spy(monkeypatch, tattn, "_attention_fwd_kernel", "_attention_bwd_dkdv_kernel")
    d, hq, hk = 48, 4, 2
    lens_q, lens_k = [5, 0, 35, 21], [7, 3, 35, 30]
    extra_q, extra_k = 3, 4  # trailing tokens outside every sequence
    cu_q = tforge.cu_seqlens_from_lengths(lens_q, DEV)
    cu_k = tforge.cu_seqlens_from_lengths(lens_k, DEV)
    q = torch.randn(sum(lens_q) + extra_q, hq, d, device=DEV).to(dtype)
    k = torch.randn(sum(lens_k) + extra_k, hk, d, device=DEV).to(dtype)
    v = torch.randn(sum(lens_k) + extra_k, hk, d, device=DEV).to(dtype)
    scale = 1.0 / math.sqrt(d)
    kw = dict(softmax_scale=scale, causal=True, window_left=-1, window_right=-1, cu_seqlens_q=cu_q,
              cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    out, lse = tattn.attention_fwd(q, k, v, **kw)
    dout = torch.randn_like(out)
    dq, dk, dv = tattn.attention_bwd(dout, q, k, v, out, lse, **kw)
    assert _cfg(spies["_attention_fwd_kernel"].launches[0], "BLOCK_M", "BLOCK_N", "num_warps", "num_stages") \
        == tattn._fwd_config(d, dtype == F32)
    assert _cfg(spies["_attention_bwd_dkdv_kernel"].launches[0], "BLOCK_M", "BLOCK_N", "num_warps",
                "num_stages") == tattn._bwd_config(d, dtype == F32)
    nq, nk = sum(lens_q), sum(lens_k)
    assert not out[nq:].any() and not dq[nq:].any() and not dk[nk:].any() and not dv[nk:].any()
    assert torch.isneginf(lse[:, nq:]).all()
    tol = 2e-5 if dtype == F32 else 3e-2
    for i in range(len(lens_q)):
        if lens_q[i] == 0:
            continue
        sl_q, sl_k = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        qs, ks, vs = (t[None, s].double().requires_grad_() for t, s in ((q, sl_q), (k, sl_k), (v, sl_k)))
        ref = attention_ref(qs, ks, vs, True, scale)
        ref_grads = torch.autograd.grad(ref, (qs, ks, vs), dout[None, sl_q].double())
        torch.testing.assert_close(out[sl_q].double(), ref[0], atol=tol, rtol=tol)
        for g, r in zip((dq[sl_q], dk[sl_k], dv[sl_k]), ref_grads):
            torch.testing.assert_close(g.double(), r[0], atol=4 * tol, rtol=4 * tol)


# ---------------------------------------------------------------- norms

NORMS = [(19, 77, F32), (19, 77, BF16), (19, 77, F16), (3, 8195, F32), (3, 8195, BF16)]


@pytest.mark.parametrize("rows,cols,dtype", NORMS, ids=[f"{r}x{c}-{str(d)[6:]}" for r, c, d in NORMS])
def test_norms_gpu_config(monkeypatch, rows, cols, dtype):
    """Rows held in registers (N <= 8192) and walked in chunks, forward and backward."""
    from tforge.triton import norm as tnorm
    _need(dtype)
    spies = _spy(monkeypatch, tnorm, "_norm_fwd_kernel", "_norm_bwd_dx_kernel", "_norm_bwd_reduce_kernel")
    x = torch.randn(rows, cols + 3, device=DEV).to(dtype)[:, :cols].requires_grad_()  # strided rows
    r = torch.randn(rows, cols, device=DEV).to(dtype).requires_grad_()
    w = torch.randn(cols, device=DEV).to(dtype).requires_grad_()
    b = torch.randn(cols, device=DEV).to(dtype).requires_grad_()
    cases = [
        ("layer_norm", lambda be: (tforge.layer_norm(x, w, b, backend=be),), (x, w, b)),
        ("add_rms_norm", lambda be: tforge.add_rms_norm(x, r, w, backend=be), (x, r, w)),
    ]
    for name, fn, inputs in cases:
        outs = fn("triton")
        refs = fn("torch")
        douts = [torch.randn_like(o) for o in outs]
        grads = torch.autograd.grad(outs, inputs, douts)
        ref_grads = torch.autograd.grad(refs, inputs, douts)
        for o, ro in zip(outs, refs):
            assert_close(o, ro, name=f"{name} out")
        for g, rg in zip(grads, ref_grads):
            assert_close(g, rg, backward=True, name=f"{name} grad")

    single, block_m, block_n, warps = tnorm._tile(cols, rows, tnorm._MAX_FUSED_FWD)
    assert single == (cols <= 8192)
    for launch in spies["_norm_fwd_kernel"].launches:
        assert _cfg(launch, "SINGLE_BLOCK", "BLOCK_M", "BLOCK_N", "num_warps") == (single, block_m, block_n, warps)
        assert launch["SOFT_BF16"] == _interp_bf16(dtype)
    single, block_m, block_n, warps = tnorm._tile(cols, rows, tnorm._MAX_FUSED_BWD)
    programs = tnorm.sm_count(x) * max(1, min(8, 32 // warps))  # as the launcher computes it on the GPU
    tiles = math.ceil(rows / block_m)
    rows_per_prog = math.ceil(tiles / min(programs, tiles)) * block_m
    for launch in spies["_norm_bwd_dx_kernel"].launches:
        assert _cfg(launch, "SINGLE_BLOCK", "BLOCK_M", "BLOCK_N", "num_warps") == (single, block_m, block_n, warps)
        assert launch["grid"] == (math.ceil(rows / rows_per_prog),)
    for launch in spies["_norm_bwd_reduce_kernel"].launches:
        assert _cfg(launch, "BLOCK_P", "BLOCK_N") == (tnorm._REDUCE_BLOCK_P, tnorm._REDUCE_BLOCK_N)
        assert launch["grid"] == (math.ceil(cols / tnorm._REDUCE_BLOCK_N),)


# ---------------------------------------------------------------- int8

# (M, N, K, a is a strided view, SM count or None for the GPU's): every row of _gemm_config's table:
# decode-like M <= 64 (K >= 1024: BLOCK_K 256), M > 64 with fewer tiles than SMs, unaligned (M <= 16 and
# larger), and the 128x256 / 128x128 tiles, reached at these sizes by a GPU with fewer SMs.
INT8 = [(5, 37, 96, False, None), (1, 19, 1024, False, None), (130, 40, 64, False, None), (13, 21, 75, True, None),
        (40, 21, 75, True, None), (70, 9, 40, False, None), (130, 40, 64, False, 1), (130, 200, 80, False, 3)]


@pytest.mark.parametrize("M,N,K,strided,sms", INT8, ids=[f"{m}x{n}x{k}" + ("-strided" if s else "")
                                                         + (f"-{sm}sm" if sm else "") for m, n, k, s, sm in INT8])
def test_int8_gemm_gpu_config(monkeypatch, M, N, K, strided, sms):
    from tforge.triton import int8 as tint8
    _need()
    if sms is not None:
        monkeypatch.setattr(tint8, "sm_count", lambda t: sms)
    spies = _spy(monkeypatch, tint8, "_int8_matmul_kernel", "_quantize_rows_kernel")
    a = torch.randint(-127, 128, (M, K + (5 if strided else 0)), dtype=torch.int8, device=DEV)[:, :K]
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=DEV)
    a_s = (torch.rand(M, device=DEV) + 0.01) / 128  # outputs within fp16's range
    w_s = (torch.rand(N, device=DEV) + 0.01) / 128
    bias = torch.randn(N, device=DEV)
    acc = tforge.int8_matmul(a, w, backend="triton")
    assert torch.equal(acc, a.int() @ w.int().T)
    for dtype in (F32, BF16, F16):
        y = tforge.int8_linear(a, a_s, w, w_s, bias, out_dtype=dtype, backend="triton")
        assert torch.equal(y, int8_linear_ref(a, a_s, w, w_s, bias, dtype)), dtype
    aligned = tint8._aligned16(a, w, a.stride(0) if M > 1 else 0, w.stride(0) if N > 1 else 0)
    assert aligned == (K % 16 == 0 and not strided)
    want = tint8._gemm_config(M, N, K, tint8.sm_count(a), aligned)
    for launch in spies["_int8_matmul_kernel"].launches:
        assert _cfg(launch, "BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages") == want
        assert launch["EVEN_K"] == (K % want[2] == 0)
    assert [bool(x["SOFT_BF16"]) for x in spies["_int8_matmul_kernel"].launches] == \
        [False, False, _interp_bf16(BF16), False]


QUANT = [(19, 77, F32), (19, 77, BF16), (19, 77, F16), (3, 8200, BF16)]


@pytest.mark.parametrize("rows,cols,dtype", QUANT, ids=[f"{r}x{c}-{str(d)[6:]}" for r, c, d in QUANT])
def test_quantize_rows_gpu_config(monkeypatch, rows, cols, dtype):
    from tforge.ops.int8_gemm import quantize_per_token_ref
    from tforge.triton import int8 as tint8
    _need(dtype)
    spies = _spy(monkeypatch, tint8, "_quantize_rows_kernel")
    x = (torch.randn(rows, cols, device=DEV) * 3).to(dtype)
    x[1, :] = 0  # scale 0
    q, s = tint8.quantize_rows(x)
    rq, rs = quantize_per_token_ref(x)
    assert torch.equal(q, rq) and torch.equal(s, rs.reshape(s.shape))
    launch = spies["_quantize_rows_kernel"].launches[0]
    assert launch["SINGLE_BLOCK"] == (cols <= tint8._MAX_FUSED_Q)


# ---------------------------------------------------------------- 2:4 sparse

# (M, N, K, x dtype, int8 values): every row of the launcher's table.
SPARSE = [(19, 37, 72, F32, False), (3, 37, 72, F32, False), (5, 33, 136, BF16, False), (70, 20, 64, F16, False),
          (260, 9, 40, BF16, False), (7, 21, 72, BF16, True), (66, 13, 48, F16, True)]


@pytest.mark.parametrize("M,N,K,dtype,int8", SPARSE,
                         ids=[f"{m}x{n}x{k}-{str(d)[6:]}" + ("-int8" if i else "") for m, n, k, d, i in SPARSE])
def test_sparse24_gpu_config(monkeypatch, M, N, K, dtype, int8):
    from tforge.triton import sparse24 as tsp
    _need(dtype)
    spies = _spy(monkeypatch, tsp, "_sparse24_linear_kernel", "_nm_mask_kernel")
    w = torch.randn(N, K, device=DEV)
    mask = tforge.nm_mask(w.abs(), backend="triton")
    assert torch.equal(mask, nm_mask_ref(w.abs()))
    w = (w * mask).to(dtype)
    if int8:
        wq, ws = tforge.quantize_per_channel(w.float(), backend="torch")
        packed = pack_2to4(wq, ws)
    else:
        packed = pack_2to4(w)
    x = torch.randn(M, K + 3, device=DEV).to(dtype)[:, :K]
    bias = torch.randn(N, device=DEV)
    y = tforge.sparse24_linear(x, packed, bias, backend="triton")
    assert_close(y, sparse24_ref(x, packed, bias))
    launch = spies["_sparse24_linear_kernel"].launches[0]
    assert _cfg(launch, "BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages") == \
        tsp._linear_config(M, N, K, dtype == F32)
    assert launch["DOT_F32"] == (dtype == F32 or _interp_bf16(dtype))
    assert launch["SOFT_BF16"] == _interp_bf16(dtype)

"""Property-based fuzzing of the norm and attention ops on the CPU backends (cpu: C++,
torch: the reference math, None: automatic): random shapes (0, 1, primes), dtypes,
layouts (transposed, sliced, expanded, overlapping), NaN / inf and backends. Every
case ends in a clear ValueError/TypeError or a result (and gradients) within tolerance
of the float64 reference from ops/<op>.py. Int8 and 2:4 ops: test_fuzz_int8_sparse.py."""
import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import tforge
from tforge.ops.attention import _visible, attention_ref, attention_varlen_ref
from tforge.ops.layer_norm import add_layer_norm_ref, layer_norm_ref
from tforge.ops.rms_norm import add_rms_norm_ref, rms_norm_ref
from tforge.testing import assert_error_within, tolerances

from fuzz_cases import (BACKENDS, LAYOUTS, SIZES, SMALL, backend_ok, expect, finite_ref_close, generator,
                        make, pick, profiles, rare, run)

EPS, BAD_EPS = [1e-5, 1e-6, 0.1, 2.0 ** -149], [0.0, -1e-5, 1e-50, float("nan"), float("inf"), 1e39]
DTYPES, ODD_DTYPES = [torch.float32, torch.bfloat16], [torch.float16, torch.float64]


def _eps_ok(eps) -> bool:
    return 2.0 ** -149 <= eps <= 3.4e38


def _grads(out, inputs, dout):
    """d(sum(out * dout)) / d(inputs), None for inputs that do not require grad."""
    needs = [t for t in inputs if t is not None and t.requires_grad]
    got = torch.autograd.grad(out, needs, dout, allow_unused=True) if needs else ()
    it = iter(got)
    return [next(it) if t is not None and t.requires_grad else None for t in inputs]


# ---------------------------------------------------------------- norms

@profiles
def test_fuzz_norms(profile):
    @given(st.data())
    def case(data):
        draw = data.draw
        kind = draw(st.sampled_from(["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]))
        backend, dtype = draw(st.sampled_from(BACKENDS)), pick(draw, DTYPES, ODD_DTYPES)
        lead = draw(st.lists(st.sampled_from(SMALL), max_size=2))
        n = pick(draw, SIZES[1:], [0])
        eps = pick(draw, EPS, BAD_EPS)
        # (not a 1-D expand: a constant row is ill-conditioned, fp32's x - mean error grows by 1/sqrt(eps))
        layouts = [lay for lay in LAYOUTS if lead or lay != "expanded"]
        x = make(draw, (*lead, n), dtype, layout=draw(st.sampled_from(layouts)))
        fused = kind.startswith("add")
        r = make(draw, x.shape, dtype, layout=draw(st.sampled_from(layouts))) if fused else None
        wdtype = draw(st.sampled_from([dtype, torch.float32]))  # fp32 weights with bf16 x are cast
        w = make(draw, (n,), wdtype, layout="contiguous", specials=False) if draw(st.booleans()) else None
        b = make(draw, (n,), wdtype, layout="contiguous", specials=False) \
            if "layer" in kind and draw(st.booleans()) else None
        grad = dtype in (torch.float32, torch.bfloat16, torch.float64) and draw(st.booleans())
        leaves = [t.requires_grad_() if t is not None and grad else t for t in (x, r, w, b)]
        x, r, w, b = leaves
        valid = n >= 1 and _eps_ok(eps) and backend_ok(backend, dtype)
        fn = {"layer_norm": lambda: tforge.layer_norm(x, w, b, eps, backend=backend),
              "rms_norm": lambda: tforge.rms_norm(x, w, eps, backend=backend),
              "add_layer_norm": lambda: tforge.add_layer_norm(x, r, w, b, eps, backend=backend),
              "add_rms_norm": lambda: tforge.add_rms_norm(x, r, w, eps, backend=backend)}[kind]
        out = expect(valid, fn)
        if out is None:
            return
        d = [t.detach().to(dtype).double().requires_grad_() if t is not None else None for t in leaves]
        ref = {"layer_norm": lambda: layer_norm_ref(d[0], d[2], d[3], eps),
               "rms_norm": lambda: rms_norm_ref(d[0], d[2], eps),
               "add_layer_norm": lambda: add_layer_norm_ref(d[0], d[1], d[2], d[3], eps),
               "add_rms_norm": lambda: add_rms_norm_ref(d[0], d[1], d[2], eps)}[kind]()
        outs, refs = (out, ref) if fused else ((out,), (ref,))
        for i, (o, rf) in enumerate(zip(outs, refs)):
            assert o.dtype == dtype
            finite_ref_close(o, rf, dtype, name=f"{kind} output {i}")
        if not grad or x.numel() == 0:
            return
        douts = [torch.randn(o.shape, dtype=torch.float64, generator=generator(draw)).to(dtype) for o in outs]
        got = _grads(outs, leaves, douts)
        want = _grads(refs, d, [g.double() for g in douts])
        if not torch.isfinite(torch.stack([t.detach().double().abs().sum() for t in d if t is not None])).all():
            return  # a NaN / inf input spreads through the weight gradients' sums: nothing finite to compare
        for name, g, wnt in zip(("dx", "dresidual", "dweight", "dbias"), got, want):
            if g is not None:
                finite_ref_close(g, wnt, dtype, backward=True, name=f"{kind} {name}")

    run(profile, case)


# ---------------------------------------------------------------- attention

def _attn_inputs(draw, varlen):
    dtype = pick(draw, DTYPES, ODD_DTYPES)
    hk = draw(st.sampled_from([1, 2, 3]))
    hq = hk * draw(st.sampled_from([1, 2]))
    d = pick(draw, [1, 3, 8, 16, 33], [0, 257])
    layout = draw(st.sampled_from(LAYOUTS + ["heads_first"]))
    specials = rare(draw)  # mostly finite: a NaN spreads to whole rows
    if varlen:
        lens_q = draw(st.lists(st.sampled_from(SMALL + [13, 17]), min_size=0, max_size=4))
        lens_k = [draw(st.sampled_from(SMALL + [13])) for _ in lens_q]
        shapes = ((sum(lens_q), hq, d), (sum(lens_k), hk, d))
    else:
        b, sq, sk = draw(st.sampled_from([0, 1, 2, 3])), draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES))
        shapes = ((b, sq, hq, d), (b, sk, hk, d))
        lens_q = lens_k = None

    amp = max(d, 1) ** -0.25  # q.k / sqrt(d) ~ N(0, 1), as trained models see (not scores of hundreds)

    def one(shape):
        if layout == "heads_first" and not varlen:  # (B, H, S, D) memory seen as (B, S, H, D): the usual view
            return make(draw, (shape[0], shape[2], shape[1], shape[3]), dtype, layout="contiguous",
                        specials=specials, scale=amp).transpose(1, 2)
        return make(draw, shape, dtype, layout=layout if layout != "heads_first" else None, specials=specials,
                    scale=amp)

    q, k, v = one(shapes[0]), one(shapes[1]), one(shapes[1])
    return dtype, q, k, v, lens_q, lens_k


def _window(draw):
    if draw(st.booleans()):
        return None
    side = lambda: pick(draw, [-1, 0, 1, 3, 2 ** 63 - 1], [2 ** 63, -2])  # noqa: E731
    return (side(), side())


def _window_ok(window) -> bool:
    return window is None or all(-1 <= w <= 2 ** 63 - 1 for w in window)


@profiles
def test_fuzz_attention(profile):
    @given(st.data())
    def case(data):
        draw = data.draw
        backend = draw(st.sampled_from(BACKENDS))
        dtype, q, k, v, _, _ = _attn_inputs(draw, varlen=False)
        causal, window = draw(st.booleans()), _window(draw)
        scale = draw(st.sampled_from([None, 0.5, 2.0])) if draw(st.booleans()) else None
        scale = scale / math.sqrt(max(q.shape[-1], 1)) if scale is not None else None
        bias = None
        if draw(st.booleans()):  # broadcast bias with some -inf masks
            shape = draw(st.sampled_from([(1, 1, q.shape[1], k.shape[1]), (q.shape[0], q.shape[2], q.shape[1],
                                                                             k.shape[1]), (k.shape[1],)]))
            bias = make(draw, shape, torch.float32, layout=draw(st.sampled_from(["contiguous", "transposed",
                                                                                 "expanded"])), specials=False)
            if bias.numel():
                bias = bias.masked_fill(torch.rand(bias.shape, generator=generator(draw)) < 0.3, float("-inf"))
        d = q.shape[-1]
        valid = d >= 1 and _window_ok(window) and backend_ok(backend, dtype) and (backend != "cpu" or d <= 256)
        grad = dtype in (torch.float32, torch.bfloat16, torch.float64) and draw(st.booleans())
        for t in (q, k, v):
            t.requires_grad_(grad)
        out = expect(valid, lambda: tforge.attention(q, k, v, causal, scale, window, bias, backend=backend))
        if out is None:
            return
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = attention_ref(qd, kd, vd, causal, scale, window, bias.double() if bias is not None else None)
        assert out.dtype == dtype
        finite_ref_close(out, ref, dtype, name="attention out")
        if grad and out.numel() and torch.isfinite(ref).all():
            dout = torch.randn(out.shape, dtype=torch.float64, generator=generator(draw)).to(dtype)
            got = torch.autograd.grad(out, (q, k, v), dout)
            want = torch.autograd.grad(ref, (qd, kd, vd), dout.double()) if ref.requires_grad else \
                [torch.zeros_like(t) for t in (qd, kd, vd)]  # seqlen_k = 0: the reference is constant zeros
            _close_grads(got, want, (q, k, v), dout, (causal, scale, window, bias), dtype)

    run(profile, case)


def _lowp(q, k, v, causal, scale, window, bias):
    """The same attention by plain PyTorch at the input dtype: the error baseline of FlashAttention's rule."""
    hq, hk = q.shape[2], k.shape[2]
    qt, kt, vt = q.transpose(1, 2), *(t.transpose(1, 2).repeat_interleave(hq // hk, 1) for t in (k, v))
    s = torch.matmul(qt, kt.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    s = s + bias.to(q.dtype) if bias is not None else s
    s = s.masked_fill(~_visible(q.shape[1], k.shape[1], causal, window, q.device), float("-inf"))
    dead = ~torch.isfinite(s).any(-1, keepdim=True)  # rows with no visible key -> zeros
    p = torch.softmax(s.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    return torch.matmul(p, vt).transpose(1, 2)


def _close_grads(got, want, inputs, dout, args, dtype):
    """Gradients sum many products of rounded scores: FlashAttention's rule, error against the fp64
    reference at most 3x that of plain PyTorch at the input dtype (+ the dtype's absolute tolerance)."""
    low = [t.detach().clone().requires_grad_() for t in inputs]
    base = torch.autograd.grad(_lowp(*low, *args), low, dout, allow_unused=True)
    for name, g, w, b in zip(("dq", "dk", "dv"), got, want, base):
        b = b if b is not None else torch.zeros_like(g)
        assert_error_within(g, w, b, factor=3.0, slack=tolerances(dtype, backward=True)[0], name=name)


@profiles
def test_fuzz_attention_varlen(profile):
    @given(st.data())
    def case(data):
        draw = data.draw
        backend = draw(st.sampled_from(BACKENDS))
        dtype, q, k, v, lens_q, lens_k = _attn_inputs(draw, varlen=True)
        cu_q, cu_k = tforge.cu_seqlens_from_lengths(lens_q), tforge.cu_seqlens_from_lengths(lens_k)
        if draw(st.booleans()):  # a strided view of the same offsets
            cu_q = torch.stack([cu_q, cu_q * 0 - 7], 1).reshape(-1)[::2]
        extra = pick(draw, [0, 1, 2 ** 62], [2 ** 63 - 1])
        max_q, max_k = max(lens_q, default=0) + extra, max(lens_k, default=0)
        causal, window = draw(st.booleans()), _window(draw)
        d = q.shape[-1]
        valid = d >= 1 and _window_ok(window) and backend_ok(backend, dtype) and max_q <= 2 ** 63 - 1 \
            and (backend != "cpu" or d <= 256)
        out = expect(valid, lambda: tforge.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal,
                                                            window=window, backend=backend))
        if out is None:
            return
        ref = attention_varlen_ref(q.double(), k.double(), v.double(), cu_q.contiguous(), cu_k, causal,
                                   window=window)
        finite_ref_close(out, ref, dtype, name="attention_varlen out")

    run(profile, case)


def test_fuzz_profiles_are_seeded():
    """derandomize: the short profile runs the same examples every time (CI cannot flake)."""
    from fuzz_cases import FAST, LONG
    assert FAST.derandomize and LONG.derandomize and FAST.max_examples < LONG.max_examples

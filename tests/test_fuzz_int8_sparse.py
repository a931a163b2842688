"""Property-based fuzzing of the int8 and 2:4 ops on the CPU backends (cpu, torch,
automatic), as tests/test_fuzz.py does for norms and attention: random shapes, dtypes,
layouts and NaN / inf; a clear ValueError/TypeError or a result matching the reference
(integer GEMMs exactly, float results within testing.py's tolerance of float64)."""
import torch
from hypothesis import given
from hypothesis import strategies as st

import tforge
from tforge.ops.int8_gemm import int8_linear_ref, int8_matmul_ref, quantize_per_token_ref
from tforge.ops.sparse24 import nm_mask_ref

from fuzz_cases import (BACKENDS, FLOATS, SIZES, SMALL, backend_ok, expect, finite_ref_close, make, pick, profiles,
                        rare, run)

QDTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _i8(draw, shape):
    return make(draw, shape, torch.int8, low=-127, high=128)


@profiles
def test_fuzz_quantize(profile):
    @given(st.data())
    def case(data):
        draw = data.draw
        backend, dtype = draw(st.sampled_from(BACKENDS)), pick(draw, QDTYPES, [torch.float64, torch.int32])
        per_channel = draw(st.booleans())
        lead = [draw(st.sampled_from(SIZES))] if per_channel else draw(st.lists(st.sampled_from(SMALL), max_size=2))
        n = pick(draw, SIZES[1:], [0])
        x = make(draw, (*lead, n), dtype if dtype.is_floating_point else torch.float32, scale=3.0)
        x = x if dtype.is_floating_point else x.nan_to_num(0).to(dtype)
        cs = None
        if not per_channel and draw(st.booleans()):
            cs = pick(draw, [make(draw, (n,), torch.float32, layout="sliced", specials=False).abs() + 0.5],
                      [[1.0] * n, torch.ones(n + 1), torch.ones(n, dtype=torch.int32)])
        ok_cs = cs is None or (isinstance(cs, torch.Tensor) and cs.is_floating_point() and cs.shape == (n,))
        valid = n >= 1 and dtype in QDTYPES and ok_cs and (backend != "cpu" or dtype in (torch.float32,
                                                                                         torch.bfloat16))
        fn = (lambda: tforge.quantize_per_channel(x, backend=backend)) if per_channel else \
            (lambda: tforge.quantize_per_token(x, col_scale=cs, backend=backend))
        out = expect(valid, fn)
        if out is None:
            return
        q, scale = out
        q_ref, s_ref = quantize_per_token_ref(x, cs)
        rows = torch.isfinite(x.float() * (cs if cs is not None else 1)).all(-1)  # rows with inf / NaN: no scale
        assert q.dtype == torch.int8 and q.shape == x.shape and scale.shape == x.shape[:-1]
        finite_ref_close(scale[rows], s_ref.double()[rows], torch.float32, name="scale")
        # x / scale may land a hair either side of .5 depending on how the division is done: one step
        assert (q[rows].int() - q_ref[rows].int()).abs().max().item() <= 1 if rows.any() else True

    run(profile, case)


@profiles
def test_fuzz_int8_gemm(profile):
    @given(st.data())
    def case(data):
        draw = data.draw
        backend = draw(st.sampled_from(BACKENDS))
        m, n, k = draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES)), pick(draw, SIZES[1:], [0])
        a, b = _i8(draw, (m, k)), _i8(draw, (n, k))
        if rare(draw):  # wrong dtype or mismatched K
            a = pick(draw, [a.float()], [a[:, :-1] if k > 1 else a.float()])
        valid = a.dtype == torch.int8 and a.shape[1] == b.shape[1] and k >= 1
        linear = draw(st.booleans())
        if not linear:
            out = expect(valid, lambda: tforge.int8_matmul(a, b, backend=backend))
            if out is not None:
                assert out.dtype == torch.int32 and torch.equal(out, int8_matmul_ref(a, b))
            return
        out_dtype = pick(draw, QDTYPES, [torch.float64, torch.int32])
        xs = make(draw, (m,), torch.float32, specials=False).abs() if draw(st.booleans()) else None
        ws = make(draw, (n,), torch.float32, specials=False).abs()
        bias = make(draw, (n,), draw(st.sampled_from(QDTYPES)), specials=False) if draw(st.booleans()) else None
        valid = valid and out_dtype in QDTYPES and backend_ok(backend, out_dtype)
        out = expect(valid, lambda: tforge.int8_linear(a, xs, b, ws, bias, out_dtype, backend=backend))
        if out is None:
            return
        ref = int8_matmul_ref(a, b).double() * (xs.double()[:, None] if xs is not None else 1) * ws.double()
        ref = ref + (bias.double() if bias is not None else 0)
        assert out.dtype == out_dtype
        finite_ref_close(out, ref, out_dtype, name="int8_linear")
        finite_ref_close(out, int8_linear_ref(a, xs, b, ws, bias, out_dtype).double(), out_dtype, name="vs ref")

    run(profile, case)


@profiles
def test_fuzz_nm_mask_and_pack(profile):
    @given(st.data())
    def case(data):
        draw = data.draw
        backend = draw(st.sampled_from(BACKENDS))
        dtype = pick(draw, [torch.float32, torch.bfloat16], [torch.float16, torch.float64])
        n_, m_ = pick(draw, [(2, 4), (1, 4), (4, 8), (3, 5)], [(0, 4), (5, 4), (2, 17)])
        rows, groups = draw(st.sampled_from(SMALL)), draw(st.sampled_from([0, 1, 2, 3, 7]))
        scores = make(draw, (rows, groups * m_), dtype)
        has_nan = bool(torch.isnan(scores).any())
        valid = 1 <= n_ <= m_ <= 16 and not has_nan and backend_ok(backend, dtype)
        mask = expect(valid, lambda: tforge.nm_mask(scores, n_, m_, backend=backend))
        if mask is None:
            return
        assert torch.equal(mask, nm_mask_ref(scores, n_, m_))
        if (n_, m_) != (2, 4) or groups == 0:
            return
        wdtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int8]))
        w = (scores.nan_to_num(0, 0, 0).float() * 10).to(wdtype) * mask
        packed = tforge.pack_2to4(w, torch.ones(rows) if wdtype == torch.int8 else None)
        assert torch.equal(tforge.unpack_2to4(packed), w)

    run(profile, case)


@profiles
def test_fuzz_sparse24_linear(profile):
    @given(st.data())
    def case(data):
        draw = data.draw
        backend = draw(st.sampled_from(BACKENDS))
        dtype = pick(draw, [torch.float32, torch.bfloat16], [torch.float16, torch.float64])
        n, k = draw(st.sampled_from(SIZES)), 4 * draw(st.sampled_from([1, 2, 3, 8, 17]))
        lead = draw(st.lists(st.sampled_from(SMALL), max_size=2))
        int8 = draw(st.booleans())
        vdtype = torch.int8 if int8 else (dtype if dtype in FLOATS[:3] else torch.float32)
        dense = make(draw, (n, k), torch.float32, layout="contiguous", specials=False)
        w = dense * tforge.nm_mask(dense.abs()) if n else dense
        w = (w * 30).round().clamp(-127, 127).to(torch.int8) if int8 else w.to(vdtype)
        scale = make(draw, (n,), torch.float32, layout="contiguous", specials=False).abs() + 0.01 if int8 else None
        packed = tforge.pack_2to4(w, scale)
        if rare(draw):  # a float weight carrying a scale, or an int8 one without: rejected everywhere
            packed.scale = None if int8 else torch.ones(n)
        x = make(draw, (*lead, k), dtype)
        bias = make(draw, (n,), torch.float32, specials=False) if draw(st.booleans()) else None
        valid = (packed.scale is not None) == int8 and dtype in QDTYPES and (int8 or vdtype == dtype) \
            and backend_ok(backend, dtype)
        out = expect(valid, lambda: tforge.sparse24_linear(x, packed, bias, backend=backend))
        if out is None:
            return
        wd = tforge.unpack_2to4(packed, dequantize=True, dtype=torch.float64) if int8 else w.double()
        ref = x.double() @ wd.T + (bias.double() if bias is not None else 0)
        assert out.dtype == dtype and out.shape == (*lead, n)
        finite_ref_close(out, ref, dtype, name="sparse24_linear")

    run(profile, case)


@profiles
def test_fuzz_scores_and_unstructured(profile):
    """prune_scores, unstructured_mask, cu_seqlens_from_lengths: the remaining public helpers."""
    @given(st.data())
    def case(data):
        draw = data.draw
        rows, cols = draw(st.sampled_from(SMALL)), draw(st.sampled_from(SIZES))
        w = make(draw, (rows, cols), pick(draw, [torch.float32, torch.bfloat16], [torch.float64]), specials=False)
        method = pick(draw, ["magnitude", "wanda"], ["l1"])
        act = make(draw, (cols,), torch.float32, specials=False).abs() if method == "wanda" else None
        scores = expect(method != "l1", lambda: tforge.prune_scores(w, method, act))
        if scores is None:
            return
        want = w.double().abs() * (act.double() if act is not None else 1)
        finite_ref_close(scores, want, torch.float32, name="prune_scores")
        sparsity = pick(draw, [0.0, 0.3, 0.5, 0.9], [1.0, -0.1])
        per_row = draw(st.booleans())
        mask = expect(0.0 <= sparsity < 1.0, lambda: tforge.unstructured_mask(scores, sparsity, per_row))
        if mask is not None and scores.numel():
            count = cols if per_row else scores.numel()
            kept = mask.reshape(-1, count).sum(-1) if count else torch.zeros(0)
            assert bool((kept == count - int(sparsity * count + 1e-9)).all())
            flat, fm = scores.reshape(-1, count), mask.reshape(-1, count)  # every kept score >= every pruned one
            for s_row, m_row in zip(flat, fm):
                if m_row.any() and (~m_row).any():
                    assert s_row[m_row].min() >= s_row[~m_row].max()
        lens = draw(st.lists(st.sampled_from(SIZES), max_size=5))
        cu = tforge.cu_seqlens_from_lengths(lens)
        assert cu.dtype == torch.int32 and cu.tolist() == [sum(lens[:i]) for i in range(len(lens) + 1)]

    run(profile, case)

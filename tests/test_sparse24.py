"""2:4 sparsity ops and SparseLinear: n:m masks against the sort-based reference (ties included),
unstructured masks, the packed format (round trips, documented layout, errors naming the group),
sparse24_linear on every backend present against the unpack-then-matmul reference (awkward shapes,
strides, 3-D, bias, int8 values), autograd, opcheck and torch.compile, SparseLinear's masked
gradients, packing and state_dict round trips, and the benchmark end to end at a tiny size."""
import argparse
import copy
import sys
from pathlib import Path

import pytest
import torch
from backend_cases import backend_params

from tforge import _backend
from tforge.nn import SparseLinear
from tforge.ops._sparse24_masks import _mask_reason, nm_mask, nm_mask_ref, prune_scores, unstructured_mask
from tforge.ops.sparse24 import Sparse24Weight, _linear_reason, pack_2to4, sparse24_linear, sparse24_ref, unpack_2to4
from tforge.testing import assert_close, backend_names

HAS_CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[1]


def _device(backend):
    return torch.device("cuda") if HAS_CUDA and backend != "cpu" else torch.device("cpu")


def _require_linear(backend, dtype, values_dtype=None):
    dev = _device(backend)
    reason = _backend.why_unavailable(backend, dev, dtype) or _linear_reason(backend, dev, values_dtype or dtype)
    if reason:
        pytest.skip(reason)
    return dev


def _require_mask(backend, dtype=torch.float32):
    dev = _device(backend)
    reason = _backend.why_unavailable(backend, dev, dtype) or _mask_reason(backend)
    if reason:
        pytest.skip(reason)
    return dev


def _sparse_weight(n, k, dtype=torch.float32, device="cpu"):
    """A random 2:4 weight (magnitude-pruned), some groups with fewer than 2 non-zeros."""
    w = torch.randn(n, k, device=device)
    w = w * nm_mask_ref(w.abs())
    if n > 1 and k >= 8:
        w[1, 4:8] = 0  # an all-zero group
        w[0, 0:4] = torch.tensor([0.0, 0.0, 0.0, 1.5])  # a single non-zero in the last position
    return w.to(dtype)


# ---------------------------------------------------------------- masks

@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (3, 6), (4, 16)])
@pytest.mark.parametrize("shape", [(1, 16 * 3), (7, 48), (33, 96)], ids=str)
def test_nm_mask_matches_sort_reference(backend, n, m, shape):
    dev = _require_mask(backend)
    scores = torch.randn(shape, device=dev)
    ties = torch.randint(0, 3, shape, device=dev).float()  # many equal scores: lower index must win
    for s in (scores, ties, ties.to(torch.bfloat16)):
        if _backend.why_unavailable(backend, dev, s.dtype):
            continue
        mask = nm_mask(s, n, m, backend=backend)
        assert mask.dtype == torch.bool and mask.shape == s.shape
        assert torch.equal(mask.cpu(), nm_mask_ref(s.cpu(), n, m))
        assert torch.all(mask.reshape(-1, m).sum(-1) == n)


def test_nm_mask_ties_keep_lower_index_and_special_values():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, -0.0, 0.0, -1.0, float("inf"), 2.0, float("inf"), float("-inf")]])
    expected = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(nm_mask_ref(s), expected)
    for backend in backend_names():
        if _backend.why_unavailable(backend, torch.device("cpu"), torch.float32) or _mask_reason(backend):
            continue
        assert torch.equal(nm_mask(s, backend=backend), expected), backend


@pytest.mark.parametrize("backend", backend_params())
def test_nm_mask_strided_and_3d(backend):
    dev = _require_mask(backend)
    wide = torch.randn(9, 40, device=dev)
    for s in (wide[:, :32], wide[::2, 4:36], torch.randn(2, 3, 12, device=dev),
              torch.randn(12, 5, device=dev).T, torch.randn(0, 8, device=dev)):
        got = nm_mask(s, backend=backend)
        assert got.shape == s.shape
        assert torch.equal(got.cpu(), nm_mask_ref(s.cpu()))


@pytest.mark.parametrize("call,match", [
    (lambda: nm_mask(torch.randn(3, 10)), "not a multiple of m = 4"),
    (lambda: nm_mask(torch.randn(2, 8), 3, 2), "n <= m"),
    (lambda: nm_mask(torch.randn(2, 8), 0, 4), "1 <= n"),
    (lambda: nm_mask(torch.randn(2, 40), 2, 20), "m <= 16"),
    (lambda: nm_mask(torch.tensor([[1.0, float("nan"), 0.0, 2.0]])), "NaN .*row 0, column 1"),
    (lambda: nm_mask(torch.ones(2, 8, dtype=torch.int32)), "floating-point"),
    (lambda: nm_mask(torch.tensor(1.0)), "scalar"),
    (lambda: nm_mask(torch.randn(2, 8), backend="tpu"), "unknown backend"),
    (lambda: unstructured_mask(torch.randn(2, 8), 1.0), "sparsity"),
    (lambda: unstructured_mask(torch.tensor([[float("nan"), 1.0]]), 0.5), "NaN"),
    (lambda: prune_scores(torch.randn(3, 4), "wanda"), "needs act_norm"),
    (lambda: prune_scores(torch.randn(3, 4), "wanda", torch.ones(3)), r"shape \(4,\)"),
    (lambda: prune_scores(torch.randn(3, 4), "random"), "method"),
    (lambda: prune_scores(torch.randn(4), "magnitude"), "2-D"),
])
def test_mask_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("per_row", [True, False])
def test_unstructured_mask_exact_and_largest(sparsity, per_row):
    scores = torch.randn(6, 10)
    scores[0, :4] = 1.0  # ties
    mask = unstructured_mask(scores, sparsity, per_row=per_row)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    if per_row:
        pruned = int(sparsity * 10 + 1e-9)
        assert torch.all((~mask).sum(1) == pruned)
        for r in range(6):  # every kept score >= every pruned one
            if 0 < pruned < 10:
                assert scores[r][mask[r]].min() >= scores[r][~mask[r]].max()
    else:
        assert int((~mask).sum()) == int(sparsity * 60 + 1e-9)
        if 0.0 < sparsity:
            assert scores[mask].min() >= scores[~mask].max()


def test_prune_scores():
    w = torch.randn(5, 8)
    norm = torch.rand(8)
    assert torch.equal(prune_scores(w), w.abs())
    torch.testing.assert_close(prune_scores(w.bfloat16(), "wanda", norm), w.bfloat16().float().abs() * norm)
    assert prune_scores(w, "wanda", norm).dtype == torch.float32


# ---------------------------------------------------------------- pack / unpack

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8],
                         ids=["f32", "bf16", "f16", "int8"])
@pytest.mark.parametrize("n,k", [(1, 4), (5, 12), (3, 8), (33, 1028), (0, 8)])
def test_pack_unpack_round_trip_exact(dtype, n, k):
    if dtype == torch.int8:
        w = (_sparse_weight(n, k) * 40).round().clamp(-127, 127).to(torch.int8)
    else:
        w = _sparse_weight(n, k, dtype)
    p = pack_2to4(w)
    assert p.values.shape == (n, k // 2) and p.values.dtype == dtype and p.values.is_contiguous()
    assert p.meta.shape == (n, (k // 4 + 1) // 2) and p.meta.dtype == torch.uint8
    assert p.shape == (n, k) and p.scale is None
    assert p.nbytes == p.values.numel() * p.values.element_size() + p.meta.numel()
    assert torch.equal(unpack_2to4(p), w)


def test_pack_layout_is_the_documented_one():
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                      [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 8.0, 9.0]])
    p = pack_2to4(w)
    # row 0: g0 keeps (1, 3) -> 1 | 3 << 2 = 0xD; g1 (0, +1) -> 0x4; g2 all zero -> (0, 1) -> 0x4
    # row 1: g0 (0, 1) -> 0x4; g1 (0, 2) (fills the lowest free position) -> 0x8; g2 (2, 3) -> 0xE
    assert p.meta.tolist() == [[0x4D, 0x04], [0x84, 0x0E]]
    assert p.values.tolist() == [[5.0, 7.0, 3.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 4.0, 8.0, 9.0]]


def test_pack_int8_with_scale_and_to():
    wq = (_sparse_weight(6, 16) * 30).round().to(torch.int8)
    scale = torch.rand(6) + 0.1
    p = pack_2to4(wq, scale)
    assert p.scale.dtype == torch.float32 and torch.equal(unpack_2to4(p), wq)
    torch.testing.assert_close(unpack_2to4(p, dequantize=True), wq.float() * scale[:, None])
    moved = p.to("cpu")
    assert torch.equal(moved.values, p.values) and moved.shape == p.shape and moved.scale is not None
    assert p.nbytes == 6 * 8 + 6 * 2 + 6 * 4
    with pytest.raises(ValueError, match="convert float values"):
        p.to(dtype=torch.bfloat16)
    pf = pack_2to4(_sparse_weight(4, 8))
    assert pf.to(dtype=torch.bfloat16).values.dtype == torch.bfloat16


def test_pack_rejects_non_2to4_naming_the_group():
    w = _sparse_weight(5, 16)
    w[3, 8:11] = 1.0  # row 3, group 2 now has 3 (or 4) non-zeros
    w[4, 12:16] = 2.0
    with pytest.raises(ValueError, match=r"row 3, group 2 \(columns 8..11\) has [34] non-zeros.*2 such groups"):
        pack_2to4(w)


@pytest.mark.parametrize("call,match", [
    (lambda: pack_2to4(torch.zeros(3, 6)), "multiple of 4"),
    (lambda: pack_2to4(torch.zeros(3, 0)), "positive multiple of 4"),
    (lambda: pack_2to4(torch.zeros(8)), "2-D"),
    (lambda: pack_2to4(torch.zeros(2, 8, dtype=torch.float64)), "float32/bfloat16/float16/int8"),
    (lambda: pack_2to4(torch.zeros(2, 8), torch.ones(2)), "only for int8"),
    (lambda: pack_2to4(torch.zeros(2, 8, dtype=torch.int8), torch.ones(3)), r"scale must have shape \(2,\)"),
    (lambda: unpack_2to4(Sparse24Weight(torch.zeros(2, 4), torch.zeros(2, 1, dtype=torch.uint8), (2, 8))),
     "corrupt meta: row 0, group 0"),
    (lambda: unpack_2to4(Sparse24Weight(torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.uint8), (2, 8))),
     "meta must be a uint8 tensor of shape"),
    (lambda: unpack_2to4(torch.zeros(2, 4)), "Sparse24Weight"),
])
def test_pack_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- sparse24_linear

def _shapes_for(backend):
    if backend == "triton" and not HAS_CUDA:  # the interpreter: tiny
        return [(5, 4), (33, 68)]
    return [(5, 4), (33, 68), (64, 1028)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("m", [1, 7, 64, 300])
def test_sparse24_linear_vs_reference(backend, dtype, m):
    dev = _require_linear(backend, dtype)
    if backend == "triton" and not HAS_CUDA and m == 300 and dtype != torch.float32:
        pytest.skip("interpreter: one large-M case (fp32) is enough")
    for n, k in _shapes_for(backend):
        w = _sparse_weight(n, k, dtype, dev)
        packed = pack_2to4(w)
        x = (torch.randn(m, k, device=dev) * k ** -0.5).to(dtype)
        bias = torch.randn(n, device=dev)
        y = sparse24_linear(x, packed, bias, backend=backend)
        assert y.dtype == dtype and y.shape == (m, n)
        assert_close(y, sparse24_ref(x, packed, bias), dtype, name=f"{backend} {m}x{n}x{k}")
        # and the dense math on the unpacked weight, at the input dtype's tolerance
        assert_close(y, (x.float() @ unpack_2to4(packed).float().T + bias).to(dtype), dtype)


@pytest.mark.parametrize("backend", backend_params())
def test_sparse24_linear_strides_3d_and_empty(backend):
    dtype = torch.bfloat16 if backend == "cuda" else torch.float32
    dev = _require_linear(backend, dtype)
    packed = pack_2to4(_sparse_weight(9, 24, dtype, dev))
    wide = torch.randn(6, 40, device=dev).to(dtype)
    cases = [wide[:, 8:32],                                   # rows of a wider tensor (row stride 40)
             torch.randn(24, 5, device=dev).to(dtype).T,      # transposed: copied once
             torch.randn(2, 3, 24, device=dev).to(dtype),     # 3-D
             torch.randn(3, 4, 24, device=dev).to(dtype).transpose(0, 1),  # 3-D, leading dims not collapsible
             torch.randn(0, 24, device=dev).to(dtype),
             torch.randn(24, device=dev).to(dtype)]           # 1-D
    for x in cases:
        for bias in (None, torch.randn(9, device=dev).to(dtype)):
            y = sparse24_linear(x, packed, bias, backend=backend)
            assert y.shape == (*x.shape[:-1], 9)
            assert_close(y, sparse24_ref(x, packed, bias), dtype)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_sparse24_linear_int8_values(backend, dtype):
    dev = _require_linear(backend, dtype, torch.int8)
    from tforge.ops.int8_gemm import quantize_per_channel
    w = _sparse_weight(17, 36, torch.float32, dev)
    q, scale = quantize_per_channel(w, backend="torch")
    packed = pack_2to4(q, scale)
    x = torch.randn(7, 36, device=dev).to(dtype)
    bias = torch.randn(17, device=dev)
    y = sparse24_linear(x, packed, bias, backend=backend)
    assert y.dtype == dtype
    assert_close(y, sparse24_ref(x, packed, bias), dtype)
    dense = (x.float() @ w.T + bias)
    assert ((y.float() - dense).norm() / dense.norm()) < 0.02  # int8 weights: ~1% error


def _bad_linear_calls():
    p = pack_2to4(_sparse_weight(6, 8))
    pq = Sparse24Weight(p.values.round().to(torch.int8), p.meta, (6, 8))
    x = torch.randn(3, 8)
    return [
        (lambda: sparse24_linear(torch.randn(3, 12), p), r"\(\.\.\., 8\)"),
        (lambda: sparse24_linear(x.bfloat16(), p), "dtype mismatch"),
        (lambda: sparse24_linear(x.double(), p), "float32/bfloat16/float16"),
        (lambda: sparse24_linear(x, p, torch.zeros(5)), r"bias must be a float tensor of shape \(6,\)"),
        (lambda: sparse24_linear(x, p, torch.zeros(6, dtype=torch.int64)), "bias must be a float"),
        (lambda: sparse24_linear(x, pq), "need packed.scale"),
        (lambda: sparse24_linear(x, Sparse24Weight(p.values, p.meta[:, :0], (6, 8))), "packed.meta"),
        (lambda: sparse24_linear(x, Sparse24Weight(p.values, p.meta, (6, 10))), "multiple of 4"),
        (lambda: sparse24_linear(x, (p.values, p.meta)), "Sparse24Weight"),
        (lambda: sparse24_linear(x, p, backend="nope"), "unknown backend"),
        (lambda: sparse24_linear(x, p, backend="cuda"), "backend"),
        (lambda: sparse24_linear(x, p.to("meta")), "on meta"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_linear_calls())))
def test_sparse24_linear_bad_input(i):
    call, match = _bad_linear_calls()[i]
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("backend", backend_params())
def test_sparse24_linear_autograd(backend):
    dev = _require_linear(backend, torch.float32)
    packed = pack_2to4(_sparse_weight(10, 16, device=dev))
    dense = unpack_2to4(packed)
    x = torch.randn(2, 3, 16, device=dev, requires_grad=True)
    bias = torch.randn(10, device=dev, requires_grad=True)
    y = sparse24_linear(x, packed, bias, backend=backend)
    g = torch.randn_like(y)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_(True)
    b2 = bias.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, dense, b2).backward(g)
    assert_close(x.grad, x2.grad, backward=True, name="grad_x")
    assert_close(bias.grad, b2.grad, backward=True, name="grad_bias")


def test_sparse24_linear_autograd_int8_and_bf16():
    from tforge.ops.int8_gemm import quantize_per_channel
    q, s = quantize_per_channel(_sparse_weight(8, 12), backend="torch")
    packed = pack_2to4(q, s)
    x = torch.randn(5, 12, dtype=torch.bfloat16, requires_grad=True)
    sparse24_linear(x, packed, backend="torch").float().sum().backward()
    expected = unpack_2to4(packed, dequantize=True).sum(0)
    assert x.grad.dtype == torch.bfloat16
    assert_close(x.grad, expected.expand(5, 12).bfloat16(), torch.bfloat16, backward=True)


def test_opcheck():
    packed = pack_2to4(_sparse_weight(6, 12))
    x = torch.randn(2, 3, 12, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    backends = ["torch", "triton"] + (["cpu"] if _linear_reason("cpu", x.device, x.dtype) is None else [])
    for backend in backends:
        torch.library.opcheck(torch.ops.tforge.sparse24_linear.default,
                              (x, packed.values, packed.meta, None, bias, backend))
        torch.library.opcheck(torch.ops.tforge.sparse24_linear.default,
                              (x, packed.values, packed.meta, None, None, backend))
    q = pack_2to4((unpack_2to4(packed) * 20).round().to(torch.int8), torch.rand(6) + 0.5)
    torch.library.opcheck(torch.ops.tforge.sparse24_linear.default, (x, q.values, q.meta, q.scale, bias, "torch"))
    scores = torch.randn(4, 16)
    for backend in ["torch", "triton"] + (["cpu"] if _mask_reason("cpu") is None else []):
        torch.library.opcheck(torch.ops.tforge.nm_mask.default, (scores, 2, 4, backend))


class _PackedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = SparseLinear(16, 24)
        self.fc2 = SparseLinear(24, 8).pack()

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    net = _PackedNet()
    x = torch.randn(3, 5, 16, requires_grad=True)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    y_eager = net(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(gx, x.grad)


# ---------------------------------------------------------------- SparseLinear

def test_sparse_linear_gradients_zero_on_pruned_weights():
    lin = torch.nn.Linear(12, 7)
    mask = nm_mask_ref(torch.randn(7, 12).abs())
    mod = SparseLinear.from_dense(lin, mask)
    assert torch.equal(mod.mask, mask) and torch.all(mod.weight[~mask] == 0)
    torch.testing.assert_close(mod.weight[mask], lin.weight.detach()[mask])
    x = torch.randn(4, 12)
    torch.testing.assert_close(mod(x), torch.nn.functional.linear(x, lin.weight * mask, lin.bias))
    for opt in (torch.optim.AdamW(mod.parameters(), lr=0.1, weight_decay=0.1),
                torch.optim.SGD(mod.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)):
        for _ in range(3):
            opt.zero_grad()
            (mod(x) ** 2).sum().backward()
            assert torch.all(mod.weight.grad[~mask] == 0) and mod.weight.grad[mask].abs().sum() > 0
            opt.step()
            assert torch.all(mod.weight[~mask] == 0)  # exactly zero after the step too
    assert torch.equal(mod.mask, mask)


def test_sparse_linear_constructor_is_linear_drop_in():
    mod = SparseLinear(16, 5, bias=False, dtype=torch.bfloat16)
    assert mod.weight.dtype == torch.bfloat16 and mod.bias is None
    assert torch.all(mod.mask.reshape(5, 4, 4).sum(-1) == 2) and torch.all(mod.weight[~mod.mask] == 0)
    assert set(mod.state_dict()) == {"weight", "mask"}
    with pytest.raises(ValueError, match="not a multiple of m = 4"):
        SparseLinear(10, 3)
    assert SparseLinear(10, 3, mask_init="dense").pattern() == "unstructured"
    with pytest.raises(ValueError, match="expects an nn.Linear"):
        SparseLinear.from_dense(torch.nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="weight's shape"):
        SparseLinear.from_dense(torch.nn.Linear(8, 4), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        SparseLinear.from_dense(torch.nn.Linear(8, 4), torch.full((4, 8), 2.0))


@pytest.mark.parametrize("weight_dtype", [None, torch.int8], ids=["float", "int8"])
def test_sparse_linear_pack_unpack_and_state_dict(weight_dtype):
    torch.manual_seed(1)
    mod = SparseLinear.from_dense(torch.nn.Linear(20, 9))
    x = torch.randn(2, 3, 20)
    ref = mod(x).detach()
    sd_train = copy.deepcopy(mod.state_dict())
    assert set(sd_train) == {"weight", "bias", "mask"}
    assert "form=training" in repr(mod) and "pattern=2:4" in repr(mod) and "sparsity=50.0%" in repr(mod)

    mod.pack(weight_dtype)
    assert mod.is_packed and "form=packed" in repr(mod)
    y = mod(x)
    if weight_dtype is None:
        assert_close(y, ref)
        assert set(mod.state_dict()) == {"values", "meta", "bias"}
    else:
        assert ((y - ref).norm() / ref.norm()) < 0.02 and "weight_dtype=int8" in repr(mod)
        assert set(mod.state_dict()) == {"values", "meta", "scale", "bias"}
    sd_packed = copy.deepcopy(mod.state_dict())
    # a fresh module of either form takes a state_dict of either form
    for fresh in (SparseLinear(20, 9), SparseLinear(20, 9, packed=True, weight_dtype=weight_dtype),
                  SparseLinear(20, 9, packed=True)):
        fresh.load_state_dict(sd_packed)
        assert fresh.is_packed and torch.equal(fresh(x), y)
        fresh.load_state_dict(sd_train)
        assert not fresh.is_packed and torch.equal(fresh(x), ref)
    with pytest.raises(RuntimeError, match="already packed"):
        mod.pack()

    mod.unpack()
    assert not mod.is_packed and set(mod.state_dict()) == {"weight", "bias", "mask"}
    assert torch.all(mod.mask.reshape(9, 5, 4).sum(-1) == 2) and torch.all(mod.weight[~mod.mask] == 0)
    torch.testing.assert_close(mod(x), y)


def test_sparse_linear_unstructured_refuses_to_pack_and_moves():
    lin = torch.nn.Linear(8, 4)
    mask = unstructured_mask(lin.weight.detach().abs(), 0.25)  # 6 of 8 kept: some group keeps 3
    mod = SparseLinear.from_dense(lin, mask)
    assert "pattern=unstructured" in repr(mod) and "sparsity=25.0%" in repr(mod)
    with pytest.raises(ValueError, match="not 2:4.*keeps"):
        mod.pack()
    packed = SparseLinear.from_dense(torch.nn.Linear(8, 4)).pack(torch.int8)
    half = copy.deepcopy(packed).to(torch.bfloat16)  # the bias follows; int8 values and the fp32 scale stay
    assert half.values.dtype == torch.int8 and half.scale.dtype == torch.float32 and half.bias.dtype == torch.bfloat16
    assert torch.equal(half.scale, packed.scale)
    x = torch.randn(3, 8)
    assert_close(half(x.bfloat16()), packed(x).bfloat16(), torch.bfloat16)
    fp = SparseLinear.from_dense(torch.nn.Linear(8, 4)).pack().half()
    assert fp.values.dtype == torch.float16 and fp(x.half()).dtype == torch.float16


@pytest.mark.gpu
def test_sparse_linear_moves_to_cuda():
    mod = SparseLinear(64, 32, dtype=torch.bfloat16).pack()
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    ref = mod(x)
    mod.cuda()
    assert_close(mod(x.cuda()).cpu(), ref, torch.bfloat16)
    p = mod.packed_weight().cpu().to("cuda")
    assert p.device.type == "cuda"


# ---------------------------------------------------------------- the benchmark

def test_bench_sparse24_quick(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_sparse24
    assert bench_sparse24.main(["--quick", "--no-json", "--shapes", "8x16x32", "--repeats", "2",
                                "--max-seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "F.linear (dense)" in out and "sparse24_linear:auto" in out and "vs dense" in out
    recs = bench_sparse24.run(argparse.Namespace(device="cpu", quick=True, shapes=[(4, 16, 32)], backends=["torch"],
                                                 repeats=2, max_seconds=0.3, no_json=True, out=None))
    assert {r["backend"] for r in recs} >= {"F.linear (dense)", "sparse24_linear:auto", "sparse24_linear:torch"}
    assert all(r["check"] == "ok" and r["tflops"] > 0 and r["op"] == "sparse24" for r in recs)
    goals = bench_sparse24.goals([dict(r, shape=[512, 4096, 4096]) for r in recs])
    assert len(goals) == 1 and goals[0]["met"] in (True, False)

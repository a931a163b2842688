"""tforge.linear / tforge.nn.Linear: against the fp32 reference on awkward shapes (forward and
all three gradients, fp32 and bf16), torch.compile, autocast, clear errors, state_dict
compatibility with torch.nn.Linear, LoRA, hooks, and the benchmark end to end.

tforge.linear runs F.linear on every backend (ops/linear.py says why: the oneDNN path did not
pay), so there is no custom op to opcheck and no private-op fallback to test; commit 4a9c73e has
both, with their tests, should that path come back."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tforge
from tforge import testing
from tforge.ops.linear import linear_ref

REPO = Path(__file__).resolve().parents[1]
# None (the default) and every backend usable here: all run F.linear, each must accept CPU tensors.
BACKENDS = [None] + [b for b, info in tforge.backends().items() if info.get("available")
                     and b != "cuda" and not (b == "triton" and not info.get("interpreter"))]
DTYPES = [torch.float32, torch.bfloat16]

# (x shape, out_features, how x is laid out)
CASES = [
    ((1, 8), 5, "contiguous"),       # one row
    ((7, 13), 11, "contiguous"),     # odd sizes
    ((37, 61), 53, "contiguous"),    # primes
    ((0, 16), 8, "contiguous"),      # no rows
    ((2, 3, 16), 24, "contiguous"),  # 3-D input
    ((16,), 4, "contiguous"),        # 1-D input, as F.linear takes
    ((9, 20), 12, "strided"),        # every other column of a (9, 40) tensor
    ((20, 9), 12, "transposed"),     # x = (9, 20).t()
]


def make_x(shape, layout, dtype):
    if layout == "strided":
        return torch.randn(shape[0], 2 * shape[1]).to(dtype)[:, ::2]
    if layout == "transposed":
        return torch.randn(shape[1], shape[0]).to(dtype).t()
    return torch.randn(*shape).to(dtype)


def grads_of(fn, x, w, b, dy):
    leaves = [t.detach().requires_grad_(True) for t in (x, w, b) if t is not None]
    y = fn(*leaves) if b is not None else fn(*leaves, None)
    return (y, *torch.autograd.grad(y, leaves, dy))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape,n,layout", CASES, ids=[f"{'x'.join(map(str, c[0]))}-{c[1]}-{c[2]}" for c in CASES])
def test_matches_reference(backend, dtype, has_bias, shape, n, layout):
    x = make_x(shape, layout, dtype)
    k = x.shape[-1]
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = torch.randn(n).to(dtype) if has_bias else None
    dy = torch.randn(*x.shape[:-1], n).to(dtype)
    ours = grads_of(lambda a, c, d: tforge.linear(a, c, d, backend=backend), x, w, b, dy)
    ref = grads_of(lambda a, c, d: linear_ref(a, c, d), x, w, b, dy)
    names = ["y", "dx", "dweight", "dbias"]
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.dtype == dtype and o.shape == r.shape, names[i]
        testing.assert_close(o, r, backward=i > 0, name=f"{names[i]} [{backend}]")
    if x.numel() == 0:  # no rows: the parameter gradients are zeros, not garbage
        assert not ours[2].any() and (not has_bias or not ours[3].any())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_weight(backend):
    x, w_t = torch.randn(6, 10), torch.randn(10, 7)
    w = w_t.t()  # (7, 10), column-major
    y = tforge.linear(x.requires_grad_(), w.requires_grad_(), backend=backend)
    testing.assert_close(y, linear_ref(x, w))
    dx, dw = torch.autograd.grad(y, [x, w], torch.ones_like(y))
    testing.assert_close(dx, torch.ones(6, 7) @ w, backward=True)
    testing.assert_close(dw, torch.ones(7, 6) @ x, backward=True)


def test_no_grad_forward_and_partial_grads():
    x, w, b = torch.randn(5, 6), torch.randn(4, 6, requires_grad=True), torch.randn(4)
    with torch.no_grad():
        testing.assert_close(tforge.linear(x, w, b), linear_ref(x, w, b))
    y = tforge.linear(x, w, b)  # only the weight requires grad
    (dw,) = torch.autograd.grad(y.sum(), [w])
    testing.assert_close(dw, torch.ones(5, 4).t() @ x, backward=True)


# ---------------------------------------------------------------- compile and autocast

@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    mod = tforge.nn.Linear(12, 9, backend=backend)
    ref = torch.nn.Linear(12, 9)
    ref.load_state_dict(mod.state_dict())
    f = torch.compile(lambda t: mod(torch.relu(t)).square().sum(), fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 12, requires_grad=True)
    loss = f(x)
    loss.backward()
    x2 = x.detach().requires_grad_(True)
    ref_loss = ref(torch.relu(x2)).square().sum()
    ref_loss.backward()
    testing.assert_close(loss, ref_loss)
    testing.assert_close(x.grad, x2.grad, backward=True)
    testing.assert_close(mod.weight.grad, ref.weight.grad, backward=True)
    testing.assert_close(mod.bias.grad, ref.bias.grad, backward=True)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("args,match", [
    (lambda: (torch.randn(4, 5), torch.randn(3, 6), None), r"last dimension must be in_features = 6"),
    (lambda: (torch.randn(4, 5), torch.randn(15), None), r"weight must be 2-D"),
    (lambda: (torch.randn(()), torch.randn(3, 1), None), r"last dimension must be in_features"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5), torch.randn(4)), r"bias must have shape \(3,\)"),
    (lambda: (torch.randn(4, 5).bfloat16(), torch.randn(3, 5), None), r"weight is float32 but x is bfloat16"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5), torch.randn(3).double()), r"bias is float64 but x is float32"),
    (lambda: (torch.ones(4, 5, dtype=torch.int32), torch.randn(3, 5), None), r"x must be floating point"),
    (lambda: (torch.randn(4, 5), "w", None), r"weight must be a tensor"),
    (lambda: (torch.randn(4, 5, device="meta"), torch.randn(3, 5), None), r"weight is on cpu but x is on meta"),
])
def test_bad_input_raises_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        tforge.linear(*args())


def test_bad_backend_raises_value_error():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        tforge.linear(torch.randn(2, 3), torch.randn(4, 3), backend="gpu")
    with pytest.raises(ValueError, match="runs on CPU tensors|needs the compiled core"):
        tforge.linear(torch.randn(2, 3, device="meta"), torch.randn(4, 3, device="meta"), backend="cpu")
    with pytest.raises(ValueError, match="does not take float64"):
        tforge.linear(torch.randn(2, 3).double(), torch.randn(4, 3).double(), backend="cpu")
    mod = tforge.nn.Linear(3, 4)
    mod.backend = "gpu"  # set after construction: the call checks it too
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        mod(torch.randn(2, 3))
    with pytest.raises(ValueError, match="Linear: unknown backend 'fast'"):
        tforge.nn.Linear(3, 4, backend="fast")


# ---------------------------------------------------------------- the module

def test_module_matches_torch_and_state_dict_round_trips():
    ref = torch.nn.Linear(10, 6)
    ours = tforge.nn.Linear(10, 6)
    assert isinstance(ours, torch.nn.Linear)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 10)
    testing.assert_close(ours(x), ref(x))
    back = torch.nn.Linear(10, 6)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, ref.weight) and torch.equal(back.bias, ref.bias)
    nobias = tforge.nn.Linear(10, 6, bias=False, dtype=torch.bfloat16, device="meta", backend="torch")
    assert nobias.bias is None and nobias.weight.dtype == torch.bfloat16 and nobias.weight.device.type == "meta"
    assert "backend='torch'" in repr(nobias) and "bias=False" in repr(nobias)


def test_module_hooks_run():
    mod = tforge.nn.Linear(4, 3)
    seen = []
    mod.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    mod.register_forward_hook(lambda m, args, out: seen.append("post") or out * 2)
    x = torch.randn(2, 4, requires_grad=True)
    y = mod(x)
    testing.assert_close(y, 2 * linear_ref(x, mod.weight, mod.bias))
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, args, out: seen.append("global"))
    try:
        mod(x)
    finally:
        handle.remove()
    assert seen[:2] == ["pre", "post"] and sorted(seen[2:]) == ["global", "post", "pre"]


def test_lora_wraps_tforge_linear():
    from tforge.nn import LoRALinear
    base = tforge.nn.Linear(8, 6)
    plain = torch.nn.Linear(8, 6)
    plain.load_state_dict(base.state_dict())
    torch.manual_seed(1)
    lora = LoRALinear(base, rank=2, alpha=4.0)
    torch.manual_seed(1)
    lora_ref = LoRALinear(plain, rank=2, alpha=4.0)
    with torch.no_grad():
        lora.lora_B.normal_()
        lora_ref.lora_B.copy_(lora.lora_B)
    x = torch.randn(5, 8)
    y, y_ref = lora(x), lora_ref(x)
    testing.assert_close(y, y_ref)
    y.sum().backward()
    y_ref.sum().backward()
    testing.assert_close(lora.lora_A.grad, lora_ref.lora_A.grad, backward=True)
    assert base.weight.grad is None  # LoRA froze the base


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x_fp32", "x_bf16"])
def test_autocast_like_nn_linear(x_dtype):
    """Under autocast, fp32 parameters with fp32 or bf16 activations (a previous autocast op's
    output) run in bf16, as nn.Linear does; outside it the bf16/fp32 mix is an error."""
    ours, ref = tforge.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 8).to(x_dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = ours(x), ref(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert torch.equal(y, y_ref)
    y.float().sum().backward()
    assert ours.weight.grad.dtype == torch.float32
    if x_dtype == torch.bfloat16:
        with pytest.raises(ValueError, match="weight is float32 but x is bfloat16"):
            ours(x)


# ---------------------------------------------------------------- the benchmark runs

def test_bench_linear_quick(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_linear
    finally:
        sys.path.pop(0)
    assert bench_linear.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    recs = [json.loads(line) for line in (tmp_path / "linear.jsonl").read_text().splitlines()]
    names = ("nn.Linear", "tforge") + (("onednn",) if bench_linear.onednn_usable() else ())
    assert {(r["direction"], r["backend"]) for r in recs} == {(d, b) for d in ("fwd", "fwdbwd") for b in names}
    for r in recs:
        assert r["median_ms"] > 0 and r["threads"] == 1 and r["cpu_ms"] is not None
        assert r["check"] in (None, "ok")

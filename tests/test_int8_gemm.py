"""Int8 GEMM, quantisation, Int8Linear and quantize_: exact int32 results on
every backend present, fused linear against the dequantised reference by SQNR,
quantisation bounds, errors, and save/load round trips."""
import copy

import pytest
import torch

import tforge
from backend_cases import backend_params
from tforge import _backend
from tforge.compress import Int8Config, load_compressed, quantize_, save_compressed
from tforge.nn import Int8Linear
from tforge.ops.int8_gemm import (_op_reason, int8_linear, int8_linear_ref, int8_matmul, int8_matmul_ref,
                                  quantize_per_channel, quantize_per_token, quantize_per_token_ref)

HAS_CUDA = torch.cuda.is_available()


def _device(backend):
    return torch.device("cuda") if HAS_CUDA and backend != "cpu" else torch.device("cpu")


def _require(backend, dtype=torch.float32):
    dev = _device(backend)
    reason = _backend.why_unavailable(backend, dev, dtype) or _op_reason(backend, dev)
    if reason:
        pytest.skip(reason)
    return dev


def sqnr_db(x, ref):
    noise = (x.double() - ref.double()).pow(2).mean()
    return float(10 * torch.log10(ref.double().pow(2).mean() / noise.clamp_min(1e-30)))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("m", [1, 7, 33, 256])
@pytest.mark.parametrize("n,k", [(1, 1), (17, 33), (64, 48), (33, 257), (96, 1000)])
def test_int8_matmul_exact(backend, m, n, k):
    dev = _require(backend)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=dev)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev)
    a[0, : k // 2] = -128  # the extremes, where sign tricks overflow
    b[0, :] = -128
    if n > 1:
        b[1, :] = 127
    c = int8_matmul(a, b, backend=backend)
    assert c.dtype == torch.int32 and c.shape == (m, n)
    assert torch.equal(c.cpu(), (a.long() @ b.long().T).int().cpu())


@pytest.mark.parametrize("backend", backend_params())
def test_int8_matmul_worst_case_and_strides(backend):
    dev = _require(backend)
    a = torch.full((9, 4100), -128, dtype=torch.int8, device=dev)
    b = torch.full((5, 4100), -128, dtype=torch.int8, device=dev)
    assert torch.equal(int8_matmul(a, b, backend=backend).cpu(), torch.full((9, 5), 128 * 128 * 4100,
                                                                             dtype=torch.int32))
    wide = torch.randint(-128, 128, (12, 80), dtype=torch.int8, device=dev)
    a2, b2 = wide[:7, :48], wide[3:, 16:64]  # row strides 80, not contiguous
    assert torch.equal(int8_matmul(a2, b2, backend=backend).cpu(), int8_matmul_ref(a2, b2).cpu())


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("m,n,k", [(1, 64, 128), (7, 33, 100), (64, 96, 256)])
def test_int8_linear_fused_epilogue(backend, out_dtype, m, n, k):
    dev = _require(backend, out_dtype)
    x = torch.randn(m, k, device=dev)
    w = torch.randn(n, k, device=dev)
    bias = torch.randn(n, device=dev)
    xq, xs = quantize_per_token(x, backend="torch")
    wq, ws = quantize_per_channel(w, backend="torch")
    y = int8_linear(xq, xs, wq, ws, bias, out_dtype=out_dtype, backend=backend)
    ref = int8_linear_ref(xq, xs, wq, ws, bias, torch.float32)
    assert y.dtype == out_dtype and y.shape == (m, n)
    assert sqnr_db(y, ref) >= 40
    y_noscale = int8_linear(xq, None, wq, ws, None, backend=backend)
    assert sqnr_db(y_noscale, int8_linear_ref(xq, None, wq, ws)) >= 60
    # the whole W8A8 pipeline against the float product
    assert sqnr_db(y.float(), x @ w.T + bias) >= 30


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_quantize_per_token(backend, dtype):
    dev = _require(backend, dtype)
    x = (torch.randn(9, 131, device=dev) * torch.logspace(-3, 3, 9, device=dev)[:, None]).to(dtype)
    x[4] = 0  # a zero row: scale 0, q 0
    x[5, 7] = 1000.0
    q, s = quantize_per_token(x, backend=backend)
    q_ref, s_ref = quantize_per_token_ref(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (9,)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    assert (q.int() - q_ref.int()).abs().max() <= 1  # a rounding tie may go either way
    assert q.abs().max() <= 127 and torch.all(q[4] == 0) and s[4] == 0
    err = (q.float() * s[:, None] - x.float()).abs()
    assert torch.all(err <= s[:, None] * 0.5 + 1e-6)  # round-trip error at most half a step


def test_quantize_3d_and_noncontiguous():
    x = torch.randn(2, 5, 40)[:, :, :33]
    q, s = quantize_per_token(x)
    assert q.shape == x.shape and s.shape == (2, 5)
    q_ref, s_ref = quantize_per_token_ref(x)
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("call,match", [
    (lambda: int8_matmul(torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.int8)), "int8 tensor"),
    (lambda: int8_matmul(torch.zeros(2, 4, dtype=torch.int8), torch.zeros(3, 5, dtype=torch.int8)), "K mismatch"),
    (lambda: int8_matmul(torch.zeros(2, 3, 4, dtype=torch.int8), torch.zeros(3, 4, dtype=torch.int8)), "2-D"),
    (lambda: int8_linear(torch.zeros(2, 4, dtype=torch.int8), torch.ones(3), torch.zeros(3, 4, dtype=torch.int8),
                         torch.ones(3)), "x_scale must have shape"),
    (lambda: int8_linear(torch.zeros(2, 4, dtype=torch.int8), None, torch.zeros(3, 4, dtype=torch.int8),
                         torch.ones(4)), "w_scale must have shape"),
    (lambda: int8_linear(torch.zeros(2, 4, dtype=torch.int8), None, torch.zeros(3, 4, dtype=torch.int8),
                         torch.ones(3), out_dtype=torch.int32), "out_dtype"),
    (lambda: quantize_per_token(torch.zeros(3, 4, dtype=torch.int8)), "float32"),
    (lambda: quantize_per_channel(torch.zeros(3)), "2-D"),
])
def test_int8_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("activations", ["int8", "fp"])
def test_int8_linear_module(activations):
    lin = torch.nn.Linear(96, 40)
    mod = Int8Linear.from_float(lin, activations=activations)
    x = torch.randn(3, 11, 96)
    y, ref = mod(x), lin(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert sqnr_db(y.detach(), ref.detach()) >= 30
    sd = mod.state_dict()
    assert sd["weight"].dtype == torch.int8 and set(sd) == {"weight", "weight_scale", "bias"}
    mod2 = Int8Linear(96, 40, activations=activations)
    mod2.load_state_dict(sd)
    assert torch.equal(mod2(x), y)
    assert "activations" in repr(mod)
    smooth = torch.rand(96) + 0.5
    mod_s = Int8Linear.from_float(lin, smooth=smooth, activations=activations)
    assert sqnr_db(mod_s(x).detach(), ref.detach()) >= 30


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(64)
        self.q, self.k = torch.nn.Linear(64, 32), torch.nn.Linear(64, 32)
        self.out = torch.nn.Linear(32, 4)

    def forward(self, x):
        h = self.norm(x)
        return self.out(torch.relu(self.q(h) + self.k(h)))


def test_quantize_smoothquant_folds_into_norm_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = _Tiny()
    x = torch.randn(32, 64)
    x[:, 5] *= 50  # an outlier channel, SmoothQuant's case
    ref = model(x).detach()
    float_copy = copy.deepcopy(model)
    report = quantize_(model, Int8Config(smoothquant_alpha=0.5, skip=("out",)), calib_data=[x[:16], x[16:]])
    assert report["smoothed"] == {"q": "norm", "k": "norm"}
    assert report["skipped"] == ["out"] and isinstance(model.out, torch.nn.Linear)
    assert isinstance(model.q, Int8Linear) and isinstance(model.k, Int8Linear)
    y = model(x).detach()
    assert sqnr_db(y, ref) >= 25
    plain = copy.deepcopy(float_copy)
    quantize_(plain, Int8Config(smoothquant_alpha=None))
    assert all(isinstance(getattr(plain, n), Int8Linear) for n in ("q", "k", "out"))

    path = str(tmp_path / "q.safetensors")
    save_compressed(model, path)
    loaded = load_compressed(copy.deepcopy(float_copy), path)
    assert torch.equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_quantize_errors(tmp_path):
    with pytest.raises(ValueError, match="smoothquant_alpha"):
        Int8Config(smoothquant_alpha=2.0)
    with pytest.raises(ValueError, match="no batches"):
        quantize_(_Tiny(), Int8Config(), calib_data=[])
    bogus = tmp_path / "x.safetensors"
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, str(bogus))
    with pytest.raises(ValueError, match="not written by tforge"):
        load_compressed(_Tiny(), str(bogus))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):
        load_compressed(_Tiny(), str(tmp_path / "bad.safetensors"))


class _PostNorm(torch.nn.Module):
    """BERT-style post-norm: the norm output feeds a Linear *and* the residual, so
    folding SmoothQuant factors into the norm would change the model."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(48)
        self.fc = torch.nn.Linear(48, 48)

    def forward(self, x):
        h = self.norm(x)
        return h + self.fc(h)


def test_quantize_does_not_fold_into_norms_that_feed_a_residual():
    torch.manual_seed(0)
    model = _PostNorm()
    x = torch.randn(24, 48)
    x[:, 2] *= 30
    ref = model(x).detach()
    norm_weight = model.norm.weight.detach().clone()
    report = quantize_(model, Int8Config(), calib_data=[x])
    assert report["smoothed"] == {} and report["smoothed_at_runtime"] == ["fc"]
    assert torch.equal(model.norm.weight, norm_weight)
    assert model.fc.smooth is not None
    assert sqnr_db(model(x).detach(), ref) >= 30


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_int8_cpu_kernel_sets(monkeypatch, isa):
    """Each CPU kernel set (forced by TFORGE_CPU_ISA) is exact."""
    _require("cpu")
    monkeypatch.setenv("TFORGE_CPU_ISA", isa)
    a = torch.randint(-128, 128, (19, 70), dtype=torch.int8)
    b = torch.randint(-128, 128, (23, 70), dtype=torch.int8)
    assert torch.equal(int8_matmul(a, b, backend="cpu"), int8_matmul_ref(a, b))
    x = torch.randn(5, 70)
    q, s = quantize_per_token(x, backend="cpu")
    torch.testing.assert_close(s, quantize_per_token_ref(x)[1])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_quantize_with_column_scale(backend, dtype):
    """SmoothQuant's run-time 1/s, fused into the quantisation pass."""
    dev = _require(backend, dtype)
    x = (torch.randn(6, 77, device=dev) * 3).to(dtype)
    cs = torch.rand(77, device=dev) + 0.25
    q, s = quantize_per_token(x, col_scale=cs, backend=backend)
    q_ref, s_ref = quantize_per_token_ref(x, cs)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    assert (q.int() - q_ref.int()).abs().max() <= 1
    with pytest.raises(ValueError, match="col_scale must have shape"):
        quantize_per_token(x, col_scale=cs[:5], backend=backend)


def test_quantize_hf_bert_and_round_trip(tmp_path):
    """quantize_ on a (small, randomly initialised) Hugging Face BERT: every Linear
    becomes Int8Linear, outputs stay close, and save/load restores it exactly."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    float_copy = copy.deepcopy(model)
    batches = [dict(input_ids=torch.randint(0, 97, (2, 12))) for _ in range(3)]
    with torch.no_grad():
        ref = model(**batches[0]).last_hidden_state
        report = quantize_(model, Int8Config(smoothquant_alpha=0.5, skip=("pooler.*",)), calib_data=batches)
        out = model(**batches[0]).last_hidden_state
    assert len(report["quantized"]) == 12 and report["skipped"] == ["pooler.dense"]
    assert report["smoothed_at_runtime"]  # post-norm BERT: nothing folds into its norms
    assert sqnr_db(out, ref) >= 20
    path = str(tmp_path / "bert.int8.safetensors")
    save_compressed(model, path)
    loaded = load_compressed(float_copy, path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batches[0]).last_hidden_state, out)

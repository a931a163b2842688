"""sparsify_ / recover / pack_: magnitude and Wanda pruning of whole models (a Sequential, a tiny
block-list model checked against an independent layer-by-layer Wanda, tiny randomly initialised
Hugging Face Llama and BERT models), skip reasons, unstructured sparsity, fine-tuning with the masks
fixed, packing, and bad input."""
import copy

import pytest
import torch
from torch import nn

from tforge.compress import Sparse24Config, pack_, recover, sparsify_
from tforge.nn import SparseLinear
from tforge.ops.sparse24 import nm_mask_ref


def _is_nm(mask, n=2, m=4):
    return bool(torch.all(mask.reshape(mask.shape[0], -1, m).sum(-1) == n))


class _NormHooks:
    """Per-input-channel L2 norms of the inputs of the given Linears (the test's own Wanda statistics)."""

    def __init__(self, mods):
        self.sq = {}
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in mods.items()]

    def _hook(self, name):
        def hook(mod, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            self.sq[name] = self.sq.get(name, 0) + x.square().sum(0)
        return hook

    def norms(self):
        for h in self.handles:
            h.remove()
        return {k: v.sqrt() for k, v in self.sq.items()}


def _wanda_mask(lin, norm):
    return nm_mask_ref(lin.weight.detach().abs().float() * norm[None, :])


# ---------------------------------------------------------------- a Sequential, single pass

def _seq_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 6),
                         nn.ReLU(), nn.Linear(6, 3))


def test_magnitude_on_sequential_keeps_largest_and_reports_skips():
    model = _seq_model()
    dense = copy.deepcopy(model)
    report = sparsify_(model, Sparse24Config(method="magnitude", skip=("4",)))
    assert report.pruned == ["0", "2"] and report["method"] == "magnitude"
    assert report.skipped == {"4": "matches skip pattern '4'",
                              "6": "in_features % m != 0 (6 is not a multiple of 4)"}
    assert report.sparsity == pytest.approx(0.5) and report.layer_sparsity["0"] == pytest.approx(0.5)
    for name in report.pruned:
        mod = model.get_submodule(name)
        assert isinstance(mod, SparseLinear) and _is_nm(mod.mask)
        expected = nm_mask_ref(dense.get_submodule(name).weight.detach().abs())
        assert torch.equal(mod.mask, expected)
        assert torch.equal(mod.weight.detach(), dense.get_submodule(name).weight.detach() * expected)
    assert isinstance(model[4], nn.Linear) and isinstance(model[6], nn.Linear)


def test_wanda_single_pass_uses_activation_norms():
    model = _seq_model()
    dense = copy.deepcopy(model)
    x = torch.randn(40, 16)
    x[:, 3] *= 20  # an outlier input channel: Wanda keeps its weights where magnitude might not
    batches = [x[:20], x[20:]]
    hooks = _NormHooks({"0": dense[0], "2": dense[2]})
    with torch.no_grad():
        for b in batches:
            dense(b)
    norms = hooks.norms()
    report = sparsify_(model, Sparse24Config(method="wanda"), calib_data=batches)
    assert report.mode.startswith("single pass") and report.pruned == ["0", "2", "4"]
    for name in ("0", "2"):
        assert torch.equal(model.get_submodule(name).mask, _wanda_mask(dense.get_submodule(name), norms[name]))
    # the outlier channel's weights nearly all survive, far more than by magnitude alone
    assert model[0].mask[:, 3].float().mean() > 0.9
    assert nm_mask_ref(dense[0].weight.detach().abs())[:, 3].float().mean() < 0.8


# ---------------------------------------------------------------- a model with a list of blocks

class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.unused = nn.Linear(d, d)  # never called: Wanda has no statistics for it

    def forward(self, h, *, gate):
        return h + self.fc2(torch.relu(self.fc1(self.norm(h)))) * gate


class _BlockNet(nn.Module):
    def __init__(self, d=16, depth=3):
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(depth))
        self.head = nn.Linear(d, 4)

    def forward(self, x, gate):
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, gate=gate)
        return self.head(h)


def _block_batches():
    g = torch.Generator().manual_seed(1)
    return [dict(x=torch.randn(3, 5, 8, generator=g) * torch.linspace(0.1, 5, 8), gate=torch.tensor(0.7))
            for _ in range(3)]


@torch.no_grad()
def _reference_sequential_wanda(dense, batches):
    """Layer-by-layer Wanda written out directly: masks by Linear name."""
    model = copy.deepcopy(dense)
    masks = {}
    hs = [model.inp(b["x"]) for b in batches]
    for i, blk in enumerate(model.blocks):
        hooks = _NormHooks({"fc1": blk.fc1, "fc2": blk.fc2})
        for h, b in zip(hs, batches):
            blk(h, gate=b["gate"])
        norms = hooks.norms()
        for name in ("fc1", "fc2"):
            lin = getattr(blk, name)
            masks[f"blocks.{i}.{name}"] = m = _wanda_mask(lin, norms[name])
            lin.weight.mul_(m)
        hs = [blk(h, gate=b["gate"]) for h, b in zip(hs, batches)]
    hooks = _NormHooks({"inp": model.inp, "head": model.head})
    for b in batches:
        model(**b)
    norms = hooks.norms()
    for name in ("inp", "head"):
        masks[name] = _wanda_mask(getattr(model, name), norms[name])
    return masks


def test_wanda_sequential_matches_layer_by_layer_reference():
    torch.manual_seed(0)
    model = _BlockNet()
    dense = copy.deepcopy(model)
    batches = _block_batches()
    report = sparsify_(model, Sparse24Config(method="wanda", skip=()), calib_data=batches)
    assert report.mode.startswith("sequential over 3 blocks at 'blocks'")
    assert "2 Linear(s) outside the blocks" in report.mode
    expected = _reference_sequential_wanda(dense, batches)
    assert sorted(report.pruned) == sorted(expected)
    for name, mask in expected.items():
        mod = model.get_submodule(name)
        assert isinstance(mod, SparseLinear) and _is_nm(mod.mask), name
        assert torch.equal(mod.mask, mask), name
    for i in range(3):
        assert report.skipped[f"blocks.{i}.unused"].startswith("did not run on calib_data")
        assert isinstance(model.blocks[i].unused, nn.Linear)
    out = model(**batches[0])
    assert out.shape == (3, 5, 4) and torch.isfinite(out).all()


def test_sequential_and_single_pass_both_work_and_agree_on_block_0():
    torch.manual_seed(0)
    seq = _BlockNet()
    flat = copy.deepcopy(seq)
    batches = _block_batches()
    r1 = sparsify_(seq, Sparse24Config(sequential=True), calib_data=batches)
    r2 = sparsify_(flat, Sparse24Config(sequential=False), calib_data=batches)
    assert r1.mode.startswith("sequential") and r2.mode == "single pass (sequential=False)"
    assert sorted(r1.pruned) == sorted(r2.pruned)
    for name in r1.pruned:
        a, b = seq.get_submodule(name), flat.get_submodule(name)
        assert _is_nm(a.mask) and _is_nm(b.mask)
    for name in ("blocks.0.fc1", "blocks.0.fc2"):  # same inputs in both modes
        assert torch.equal(seq.get_submodule(name).mask, flat.get_submodule(name).mask)


def test_unstructured_sparsity_exact_and_pack_skips_it():
    torch.manual_seed(0)
    model = _BlockNet()
    report = sparsify_(model, Sparse24Config(method="magnitude", structured=False, sparsity=0.3))
    assert report.pattern == "unstructured 30%"
    for name in report.pruned:
        mod = model.get_submodule(name)
        k = mod.in_features
        assert torch.all((~mod.mask).sum(1) == int(0.3 * k + 1e-9)), name
    assert "blocks.0.unused" in report.pruned  # magnitude needs no data: every Linear is pruned
    res = pack_(model)
    assert res["packed"] == [] and all("not 2:4" in why for why in res["skipped"].values())


def test_pack_after_sparsify_and_int8():
    torch.manual_seed(0)
    model = _BlockNet()
    batches = _block_batches()
    sparsify_(model, Sparse24Config(), calib_data=batches)
    with torch.no_grad():
        ref = model(**batches[0])
        res = pack_(copy.deepcopy(model))  # a copy: the original stays in training form
        packed = copy.deepcopy(model)
        pack_(packed)
        q = copy.deepcopy(model)
        pack_(q, weight_dtype=torch.int8)
        assert len(res["packed"]) == 8 and res["skipped"] == {}  # inp, 3 x (fc1, fc2), head
        torch.testing.assert_close(packed(**batches[0]), ref, atol=1e-5, rtol=1e-5)
        rel = (q(**batches[0]) - ref).norm() / ref.norm()
    assert rel < 0.03
    assert all(m.is_packed for m in packed.modules() if isinstance(m, SparseLinear))
    assert pack_(packed)["skipped"]["inp"] == "already packed"


# ---------------------------------------------------------------- recover

class _Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x, y=None):
        out = self.fc2(torch.tanh(self.fc1(x)))
        return {"out": out, "loss": nn.functional.mse_loss(out, y)} if y is not None else out


def _task():
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(16, 4, generator=g)
    xs = [torch.randn(32, 16, generator=g) for _ in range(4)]
    return [dict(x=x, y=torch.tanh(x @ teacher)) for x in xs]


def test_recover_keeps_masks_and_lowers_the_loss():
    torch.manual_seed(0)
    model = _Regressor()
    data = _task()
    sparsify_(model, Sparse24Config(method="magnitude", skip=("fc2",)))
    masks = {n: m.mask.clone() for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    losses = recover(model, data, steps=60, lr=1e-2, weight_decay=0.01, progress=False)
    assert len(losses) == 60 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8
    for name, mask in masks.items():
        mod = model.get_submodule(name)
        assert torch.equal(mod.mask, mask) and torch.all(mod.weight[~mask] == 0)
    # loss_fn and the progress bar
    losses = recover(model, data, steps=3, loss_fn=lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(), log_every=1)
    assert len(losses) == 3


def test_recover_errors_and_detects_a_changed_mask():
    model = _Regressor()
    data = _task()
    with pytest.raises(ValueError, match="no SparseLinear"):
        recover(model, data, steps=2)
    sparsify_(model, Sparse24Config(method="magnitude"))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        recover(model, data, steps=0)
    with pytest.raises(ValueError, match="ran out after 2 steps"):
        recover(model, iter(data[:2]), steps=5, progress=False)
    with pytest.raises(ValueError, match="no loss"):
        recover(model, [torch.randn(4, 16)], steps=1, progress=False)

    def tamper(m, b):
        m.fc1.mask[0, :] = True
        return m(**b)["loss"]

    with pytest.raises(AssertionError, match="mask of fc1 changed"):
        recover(model, data, steps=1, loss_fn=tamper, progress=False)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("make,match", [
    (lambda: Sparse24Config(method="random"), "method"),
    (lambda: Sparse24Config(n=3, m=2), "n <= m"),
    (lambda: Sparse24Config(m=32), "m <= 16"),
    (lambda: Sparse24Config(structured=False, sparsity=1.5), "sparsity"),
    (lambda: Sparse24Config(skip="lm_head"), "tuple of patterns"),
    (lambda: Sparse24Config(max_calib_batches=0), "max_calib_batches"),
    (lambda: sparsify_(_seq_model(), Sparse24Config(method="wanda")), "needs calib_data"),
    (lambda: sparsify_(_seq_model(), calib_data=[]), "no batches"),
    (lambda: sparsify_(_seq_model(), calib_data=torch.randn(4, 16)), "iterable of batches"),
    (lambda: sparsify_(_seq_model(), {"method": "wanda"}), "Sparse24Config"),
    (lambda: sparsify_("model"), "nn.Module"),
])
def test_sparsify_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- Hugging Face models

def test_sparsify_hf_llama_sequential_and_recover():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    dense = copy.deepcopy(model)
    batches = [dict(input_ids=torch.randint(0, 64, (2, 10))) for _ in range(3)]
    blk0 = dict(dense.model.layers[0].named_modules())
    lin0 = {n: m for n, m in blk0.items() if isinstance(m, nn.Linear)}
    hooks = _NormHooks(lin0)
    with torch.no_grad():
        for b in batches:
            dense(**b)
    norms = hooks.norms()

    report = sparsify_(model, Sparse24Config(method="wanda"), calib_data=batches)
    assert report.mode == "sequential over 2 blocks at 'model.layers'"
    assert len(report.pruned) == 14 and report.skipped == {"lm_head": "matches skip pattern 'lm_head'"}
    for name in lin0:  # block 0 sees the same inputs as in the dense model
        assert torch.equal(model.model.layers[0].get_submodule(name).mask, _wanda_mask(lin0[name], norms[name]))
    with torch.no_grad():
        logits = model(**batches[0]).logits
    assert torch.isfinite(logits).all()
    train = [dict(b, labels=b["input_ids"]) for b in batches]
    losses = recover(model, train, steps=3, lr=1e-3, progress=False)
    assert len(losses) == 3 and all(l == l for l in losses)
    res = pack_(model)
    assert len(res["packed"]) == 14
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0]).logits).all()


def test_sparsify_hf_bert_blocks_and_outside_linears():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    batches = [dict(input_ids=torch.randint(0, 97, (2, 12)), attention_mask=torch.ones(2, 12, dtype=torch.long))
               for _ in range(2)]
    report = sparsify_(model, Sparse24Config(), calib_data=batches)
    assert report.mode.startswith("sequential over 2 blocks at 'encoder.layer'")
    assert len(report.pruned) == 13 and "pooler.dense" in report.pruned and report.skipped == {}
    assert all(_is_nm(model.get_submodule(n).mask) for n in report.pruned)
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0]).last_hidden_state).all()


def test_quantize_composes_with_2to4():
    """sparsify_ then quantize_: the 2:4 layers become packed int8 2:4 (weight-only) and the
    output stays close to the pruned float model's."""
    from tforge.compress import Int8Config, Sparse24Config, quantize_, sparsify_
    from tforge.nn import SparseLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    x = torch.randn(8, 32)
    sparsify_(model, Sparse24Config(method="magnitude"))
    ref = model(x)
    report = quantize_(model, Int8Config(smoothquant_alpha=None))
    assert report["sparse24_int8"] == ["0", "2"]
    for i in (0, 2):
        layer = model[i]
        assert isinstance(layer, SparseLinear) and layer.is_packed and layer.values.dtype == torch.int8
    out = model(x)
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.02, f"int8 2:4 relative error {rel:.4f}"

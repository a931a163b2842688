"""Drop-in modules built on tforge ops, with PyTorch's constructors and
state_dict keys where a PyTorch counterpart exists."""
from tforge.nn.attention import Attention
from tforge.nn.int8_linear import Int8Linear
from tforge.nn.norm import LayerNorm, RMSNorm, add_norm, make_norm
from tforge.nn.rotary import RotaryEmbedding, apply_rotary, positions_from_cu_seqlens, rope, rope_qkvpacked
from tforge.nn.lora import LoRALinear
from tforge.nn.sparse_linear import SparseLinear

__all__ = ["Attention", "Int8Linear", "LayerNorm", "LoRALinear", "RMSNorm", "RotaryEmbedding",
           "SparseLinear", "apply_rotary",
           "add_norm", "make_norm", "positions_from_cu_seqlens", "rope", "rope_qkvpacked"]

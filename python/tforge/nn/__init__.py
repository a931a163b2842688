"""Drop-in modules built on tforge ops, with PyTorch's constructors and
state_dict keys."""
from tforge.nn.norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]

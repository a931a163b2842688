"""ModelOutput: what every tforge model's forward returns (loss and logits,
plus the hidden states an encoder or a pooling head may want)."""
from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass
class ModelOutput:
    """loss: scalar mean loss when labels were given, else None.
    logits: the head's output (see each model's forward for its shape).
    hidden_states: the last layer's hidden states (encoders), pooled: [CLS] pooling."""
    loss: Optional[Tensor]
    logits: Tensor
    hidden_states: Optional[Tensor] = None
    pooled: Optional[Tensor] = None

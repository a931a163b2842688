"""Light text augmentation for fine-tuning: random word deletion and swaps.

Off by default everywhere (ClassificationBatches(augment=None)). Deterministic
for a seeded rng: ``random.Random`` or ``numpy.random.Generator`` (anything
with a .random() -> float in [0, 1)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["augment_text", "Augmenter"]


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment_text: {name} must be in [0, 1], got {p}")
    return float(p)


def augment_text(text: str, rng: Any, p_delete: float = 0.1, p_swap: float = 0.1) -> str:
    """Drop each word with probability p_delete (at least one word survives), then swap each word
    with a random other one with probability p_swap. Words are whitespace-separated and re-joined
    with single spaces; with both probabilities 0 (or fewer than 2 words) the text is returned as is."""
    p_delete, p_swap = _check_p("p_delete", p_delete), _check_p("p_swap", p_swap)
    words = text.split()
    if len(words) < 2 or (p_delete == 0.0 and p_swap == 0.0):
        return text
    kept = [w for w in words if rng.random() >= p_delete]
    if not kept:
        kept = [words[min(len(words) - 1, int(rng.random() * len(words)))]]
    n = len(kept)
    if n > 1 and p_swap > 0.0:
        for i in range(n):
            if rng.random() < p_swap:
                j = min(n - 1, int(rng.random() * n))
                kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


@dataclass(frozen=True)
class Augmenter:
    """augment_text with fixed probabilities, callable as (text, rng) -> text."""
    p_delete: float = 0.1
    p_swap: float = 0.1

    def __call__(self, text: str, rng: Any) -> str:
        return augment_text(text, rng, self.p_delete, self.p_swap)

"""Fine-tuning set-ups (train the head only, everything, or LoRA adapters)
and export of the fine-tuned model as safetensors + config.json with LoRA
merged into plain Linear layers.

LoRA itself lives in tforge.models.lora / tforge.nn.LoRALinear (imported only
when mode="lora" or when exporting a model that has adapters).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from torch import nn

from tforge.train.checkpoint import save_state_dict, unwrap_model, write_text_atomic

FINETUNE_MODES = ("head", "full", "lora")
DEFAULT_HEAD_PATTERNS = ("classifier", "pooler", "lm_head", "head")
DEFAULT_LORA_TARGETS = ("q", "k", "v", "o")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """A pattern matches a parameter name when it equals one of the dotted
    components, or is a prefix of the name ("classifier" matches
    "classifier.weight"; "head" matches "head.dense.bias" but not "heads")."""
    parts = name.split(".")
    return any(p in parts or name.startswith(p + ".") for p in patterns)


def _lora_module_types() -> tuple[type, ...]:
    try:
        from tforge.nn.lora import LoRALinear
    except ImportError:
        return ()
    return (LoRALinear,)


def has_lora(model: nn.Module) -> bool:
    types = _lora_module_types()
    return bool(types) and any(isinstance(m, types) for m in model.modules())


def prepare_finetune(model: nn.Module, mode: str = "full", lora_rank: int = 8, lora_alpha: float = 16.0,
                     lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
                     head_patterns: Sequence[str] = DEFAULT_HEAD_PATTERNS) -> dict[str, Any]:
    """Set requires_grad for a fine-tuning mode (in place) and return a summary
    {mode, trainable, total, trainable_names, lora_modules}.

    - full: every parameter trains.
    - head: only parameters whose names match head_patterns (classifier,
      pooler, ...) train; the encoder is frozen.
    - lora: LoRA adapters (rank, alpha) are added to the Linear layers whose
      names match lora_targets (tforge.models.lora.apply_lora); the adapters
      and the head train, everything else is frozen.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
    lora_modules: list[str] = []
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif mode == "head":
        matched = [n for n, _ in model.named_parameters() if _matches(n, head_patterns)]
        if not matched:
            raise ValueError(f"head mode: no parameter name matches head_patterns {tuple(head_patterns)}; "
                             f"pass the head's module name (first parameters: "
                             f"{[n for n, _ in list(model.named_parameters())[:5]]})")
        for name, p in model.named_parameters():
            p.requires_grad_(_matches(name, head_patterns))
    else:
        if not isinstance(lora_rank, int) or lora_rank < 1:
            raise ValueError(f"lora_rank must be an integer >= 1, got {lora_rank!r}")
        if lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {lora_alpha!r}")
        try:
            from tforge.models.lora import apply_lora
        except ImportError as e:
            raise ImportError(f"mode='lora' needs tforge.models.lora ({e})") from None
        before = {id(p) for p in model.parameters()}
        lora_modules = list(apply_lora(model, rank=lora_rank, alpha=lora_alpha, targets=tuple(lora_targets)))
        if not lora_modules:
            raise ValueError(f"lora mode: no Linear layer matches lora_targets {tuple(lora_targets)}")
        for name, p in model.named_parameters():
            # adapters are the parameters apply_lora created; the head trains alongside them
            p.requires_grad_(id(p) not in before or _matches(name, head_patterns))
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    return {"mode": mode, "trainable": sum(params[n].numel() for n in trainable),
            "total": sum(p.numel() for p in params.values()), "trainable_names": trainable,
            "lora_modules": lora_modules}


def export_model(model: nn.Module, path: Union[str, Path], config: Optional[dict[str, Any]] = None,
                 extra: Optional[dict[str, Any]] = None) -> Path:
    """Write path/model.safetensors (LoRA merged into plain Linear layers, on
    a copy: the model passed in keeps its adapters) and path/config.json
    (config, else model.config.to_dict() when the model has one, plus extra), then
    path/manifest.json with their sha256 (checked when tforge loads the export)."""
    from tforge.train.checkpoint import MANIFEST
    from tforge.train.runfolder import write_export_manifest
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # the old manifest goes first: a crash while rewriting leaves no manifest (refused on load), never a stale one
    (path / MANIFEST).unlink(missing_ok=True)
    model = unwrap_model(model)
    if has_lora(model):
        from tforge.models.lora import merge_lora
        model = copy.deepcopy(model)
        merged = merge_lora(model)
        model = merged if isinstance(merged, nn.Module) else model
    save_state_dict(model.state_dict(), path / "model.safetensors", metadata={"format": "pt"})
    if config is None:
        model_config = getattr(model, "config", None)
        config = model_config.to_dict() if hasattr(model_config, "to_dict") else {}
    body = {**config, **({"tforge": extra} if extra else {})}
    write_text_atomic(path / "config.json", json.dumps(body, indent=2, default=str) + "\n")
    write_export_manifest(path, ["model.safetensors", "config.json"])
    return path


__all__ = ["prepare_finetune", "export_model", "has_lora", "FINETUNE_MODES", "DEFAULT_HEAD_PATTERNS",
           "DEFAULT_LORA_TARGETS"]

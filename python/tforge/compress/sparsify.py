"""sparsify_(model, Sparse24Config(...), calib_data=...): prune nn.Linear layers to n:m (2:4) or
unstructured sparsity in place (each becomes a tforge.nn.SparseLinear in training form), by weight
magnitude or by Wanda's score |W_ij| * ||X_j||_2 (X_j: input channel j of the layer over all
calibration tokens); recover(model, data, steps) fine-tunes with the masks fixed; pack_(model) turns
every 2:4 SparseLinear into its packed inference form.

Here: the configuration, the report and sparsify_ itself; the layer selection is in _sparsify_select,
the activation norms and the pruning of one layer in _sparsify_prune, the sequential (block by block)
Wanda calibration in _sparsify_blocks (its docstring says how it works), recover and pack_ in
_sparsify_recover.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterable, Optional

import torch

from tforge.compress._sparsify_blocks import _sequential_wanda
from tforge.compress._sparsify_prune import _prune, _single_pass_norms
from tforge.compress._sparsify_recover import pack_, recover  # noqa: F401  (tforge.compress imports them from here)
from tforge.compress._sparsify_select import _select, find_blocks


@dataclasses.dataclass
class Sparse24Config:
    method: str = "wanda"          # "wanda" (needs calib_data) or "magnitude"
    n: int = 2                     # keep n of every m consecutive input weights (structured=True)
    m: int = 4
    skip: tuple = ("lm_head",)     # fnmatch patterns, matched against the Linear's full name and its last part
    structured: bool = True        # False: unstructured, `sparsity` of each row pruned
    sparsity: float = 0.5          # unstructured only
    sequential: bool = True        # Wanda block by block (see _sparsify_blocks)
    max_calib_batches: Optional[int] = None

    def __post_init__(self):
        if self.method not in ("wanda", "magnitude"):
            raise ValueError(f"Sparse24Config: method must be 'wanda' or 'magnitude', got {self.method!r}")
        if isinstance(self.skip, str):
            raise ValueError(f"Sparse24Config: skip must be a tuple of patterns, got the string {self.skip!r} "
                             f"(write ({self.skip!r},))")
        self.skip = tuple(self.skip)
        if self.structured:
            for name in ("n", "m"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"Sparse24Config: {name} must be an integer, got {v!r}")
            if not 1 <= self.n <= self.m <= 16:
                raise ValueError(f"Sparse24Config: need 1 <= n <= m <= 16, got n={self.n}, m={self.m}")
        elif isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"Sparse24Config: sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.max_calib_batches is not None and self.max_calib_batches < 1:
            raise ValueError(f"Sparse24Config: max_calib_batches must be >= 1 or None, got {self.max_calib_batches}")

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else f"unstructured {100 * self.sparsity:g}%"


@dataclasses.dataclass
class SparsifyReport:
    """What sparsify_ did. Also readable like a dict (report["pruned"])."""
    method: str
    pattern: str
    mode: str                                   # how calibration ran, in words
    pruned: list = dataclasses.field(default_factory=list)
    skipped: dict = dataclasses.field(default_factory=dict)       # name -> reason
    layer_sparsity: dict = dataclasses.field(default_factory=dict)  # name -> fraction of zero weights
    sparsity: float = 0.0                       # zero weights / weights over the pruned layers

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def sparsify_(model: torch.nn.Module, config: Optional[Sparse24Config] = None,
              calib_data: Optional[Iterable] = None) -> SparsifyReport:
    """Prune `model`'s nn.Linear layers in place (each becomes a training-form SparseLinear).

    calib_data (method="wanda"): an iterable of batches: dicts (model(**batch)), tuples/lists
    (model(*batch)) or tensors (model(batch)). Layers matching config.skip, with in_features not a
    multiple of m (structured), or that never run on calib_data are skipped, with the reason in the
    report. Works on any nn.Module, Hugging Face models included."""
    config = config or Sparse24Config()
    if not isinstance(config, Sparse24Config):
        raise ValueError(f"sparsify_: config must be a Sparse24Config, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"sparsify_: model must be an nn.Module, got {type(model).__name__}")
    selected, skipped = _select(model, config)
    report = SparsifyReport(method=config.method, pattern=config.pattern, mode="no calibration (magnitude)",
                            skipped=skipped)
    if config.method == "magnitude":
        for name, lin in selected.items():
            _prune(model, name, lin, config, None, report)
    else:
        if calib_data is None:
            raise ValueError("sparsify_: method='wanda' needs calib_data (an iterable of model inputs); "
                             "use method='magnitude' to prune without data")
        if isinstance(calib_data, (torch.Tensor, dict)):
            raise ValueError("sparsify_: calib_data must be an iterable of batches (e.g. a list), got a single "
                             f"{type(calib_data).__name__}; wrap it in a list")
        batches = list(calib_data if config.max_calib_batches is None
                       else itertools.islice(calib_data, config.max_calib_batches))
        if not batches:
            raise ValueError("sparsify_: calib_data yielded no batches")
        was_training = model.training
        model.eval()
        try:
            handled = None
            found = find_blocks(model) if config.sequential else None
            if found is not None:
                handled = _sequential_wanda(model, found[0], found[1], batches, selected, config, report)
            elif config.sequential:
                report.mode = "single pass (no list of repeated blocks found)"
            else:
                report.mode = "single pass (sequential=False)"
            rest = {name: lin for name, lin in selected.items() if handled is None or name not in handled}
            if rest:
                norms = _single_pass_norms(model, rest, batches)
                for name, lin in rest.items():
                    _prune(model, name, lin, config, norms.get(name), report)
                if handled is not None:
                    report.mode += f"; {len(rest)} Linear(s) outside the blocks from one full pass"
        finally:
            model.train(was_training)
    total = sum(model.get_submodule(n).weight.numel() for n in report.pruned)
    zeros = sum(report.layer_sparsity[n] * model.get_submodule(n).weight.numel() for n in report.pruned)
    report.sparsity = zeros / total if total else 0.0
    return report

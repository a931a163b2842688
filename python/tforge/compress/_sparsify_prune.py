"""sparsify_'s statistics and pruning: the per-Linear input norms ||X_j||_2 that Wanda scores with
(forward pre-hooks, one full pass or one block at a time), and pruning one Linear into a SparseLinear."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tforge.compress._sparsify_select import _set_module
from tforge.compress.calibration import run_batch_output
from tforge.nn.sparse_linear import SparseLinear
from tforge.ops.sparse24 import nm_mask, prune_scores, unstructured_mask

if TYPE_CHECKING:
    from tforge.compress.sparsify import Sparse24Config, SparsifyReport


class _NormCollector:
    """Forward pre-hooks accumulating, per Linear, the sum over tokens of x_j^2 (fp32)."""

    def __init__(self, linears: dict):
        self.sq = {}
        self.hooks = [mod.register_forward_pre_hook(self._hook(name)) for name, mod in linears.items()]

    def _hook(self, name):
        def hook(mod, inputs):
            x = inputs[0].detach()
            flat = x.reshape(-1, x.shape[-1]).float()
            sq = flat.square().sum(0)
            self.sq[name] = self.sq[name] + sq if name in self.sq else sq
        return hook

    def norms(self) -> dict:
        return {name: s.sqrt() for name, s in self.sq.items()}

    def remove(self):
        for h in self.hooks:
            h.remove()


@torch.no_grad()
def _prune(model, name: str, lin: torch.nn.Linear, config: Sparse24Config, act_norm, report: SparsifyReport):
    if config.method == "wanda" and act_norm is None:
        report.skipped[name] = "did not run on calib_data (no activation statistics)"
        return
    scores = prune_scores(lin.weight, config.method, act_norm if config.method == "wanda" else None)
    if config.structured:
        mask = nm_mask(scores, config.n, config.m)
    else:
        mask = unstructured_mask(scores, config.sparsity, per_row=True)
    new = SparseLinear.from_dense(lin, mask, n=config.n if config.structured else 2,
                                  m=config.m if config.structured else 4)
    _set_module(model, name, new)
    report.pruned.append(name)
    report.layer_sparsity[name] = new.sparsity()


@torch.no_grad()
def _single_pass_norms(model, linears: dict, batches: list) -> dict:
    collector = _NormCollector(linears)
    try:
        for batch in batches:
            run_batch_output(model, batch)
    finally:
        collector.remove()
    return collector.norms()

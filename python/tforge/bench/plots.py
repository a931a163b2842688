"""PNG plots for reports (the demo's report.md, benchmark summaries):
line plots of loss curves read from metrics.jsonl files, and grouped bar
charts (accuracy, size, speed before / after compression).

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so this works on machines without a display and never
changes the backend of a program that imports it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def new_figure(width: float = 6.4, height: float = 4.0, ncols: int = 1):
    """(figure, axes list) on an Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plots need matplotlib ({e}); pip install matplotlib") from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save_figure(fig, path: PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float)) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def line_plot(series: Series, path: PathLike, title: str = "", xlabel: str = "step", ylabel: str = "",
              logy: bool = False, markers: Optional[Mapping[str, bool]] = None) -> Path:
    """One line per entry of series {label: (xs, ys)}; non-finite points are dropped.
    markers: {label: True} draws that series with dots (e.g. sparse evaluations)."""
    if not series:
        raise ValueError("line_plot: series is empty")
    fig, (ax,) = new_figure()
    for i, (label, (xs, ys)) in enumerate(series.items()):
        xs, ys = _finite(xs, ys)
        if not xs:
            continue
        dotted = bool(markers and markers.get(label)) or len(xs) == 1
        ax.plot(xs, ys, label=label, color=_COLORS[i % len(_COLORS)], marker="o" if dotted else None,
                markersize=4, linewidth=1.6 if dotted else 1.2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _bars(ax, groups: Mapping[str, Mapping[str, float]], ylabel: str, title: str, fmt: str) -> None:
    """Grouped bars: groups {group: {category: value}}; categories side by side in each group."""
    names = list(groups)
    cats: list[str] = []
    for g in groups.values():
        cats += [c for c in g if c not in cats]
    width = 0.8 / max(1, len(cats))
    for j, cat in enumerate(cats):
        xs, ys = [], []
        for i, g in enumerate(names):
            v = groups[g].get(cat)
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(v)
        if not xs:
            continue
        bars = ax.bar(xs, ys, width=width * 0.95, label=cat if len(cats) > 1 else None,
                      color=_COLORS[j % len(_COLORS)])
        for b, v in zip(bars, ys):
            ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    if len(cats) > 1:
        ax.legend(fontsize=7)


def bar_chart(groups: Mapping[str, Union[float, Mapping[str, float]]], path: PathLike, title: str = "",
              ylabel: str = "", fmt: str = "{:.3f}", ylim: Optional[tuple[float, float]] = None) -> Path:
    """Bars of {name: value}, or grouped bars of {group: {category: value}}."""
    if not groups:
        raise ValueError("bar_chart: nothing to plot")
    nested = {g: (v if isinstance(v, Mapping) else {"": v}) for g, v in groups.items()}
    fig, (ax,) = new_figure(width=max(4.5, 1.2 * len(nested) + 2))
    _bars(ax, nested, ylabel, title, fmt)
    if ylim is not None:
        ax.set_ylim(*ylim)
    return save_figure(fig, path)


def bar_panels(panels: Sequence[tuple[str, str, Mapping[str, float], str]], path: PathLike,
               suptitle: str = "") -> Path:
    """Side-by-side bar charts: each panel (title, ylabel, {name: value}, value format)."""
    if not panels:
        raise ValueError("bar_panels: no panels")
    fig, axes = new_figure(width=3.6 * len(panels), height=3.6, ncols=len(panels))
    for ax, (title, ylabel, values, fmt) in zip(axes, panels):
        _bars(ax, {k: {"": v} for k, v in values.items()}, ylabel, title, fmt)
        finite = [v for v in values.values() if isinstance(v, (int, float)) and math.isfinite(v)]
        if finite:
            ax.set_ylim(0, max(finite) * 1.15)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)


def read_curves(metrics_file: PathLike, train_key: str = "loss", eval_key: str = "eval/loss"
                ) -> dict[str, tuple[list, list]]:
    """{"train": (steps, values), "eval": (steps, values)} from a tforge metrics.jsonl."""
    train, evals = ([], []), ([], [])
    path = Path(metrics_file)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if not isinstance(rec, dict):
            continue
        step = rec.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, (xs, ys) in ((train_key, train), (eval_key, evals)):
            v = rec.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                xs.append(step)
                ys.append(float(v))
    return {"train": train, "eval": evals}


def loss_curves(runs: Mapping[str, PathLike], path: PathLike, title: str = "loss", ylabel: str = "loss",
                logy: bool = False) -> Path:
    """Train and evaluation loss of one or more runs ({label: metrics.jsonl or run folder})."""
    series, markers = {}, {}
    for label, where in runs.items():
        f = Path(where)
        curves = read_curves(f / "metrics.jsonl" if f.is_dir() else f)
        prefix = f"{label} " if len(runs) > 1 else ""
        if curves["train"][0]:
            series[f"{prefix}train"] = curves["train"]
        if curves["eval"][0]:
            series[f"{prefix}validation"] = curves["eval"]
            markers[f"{prefix}validation"] = True
    if not series:
        raise ValueError(f"loss_curves: no loss records in {list(runs.values())}")
    return line_plot(series, path, title=title, ylabel=ylabel, logy=logy, markers=markers)


__all__ = ["new_figure", "save_figure", "line_plot", "bar_chart", "bar_panels", "read_curves", "loss_curves"]

"""Plots of a suite's results (matplotlib, Agg backend: no display needed), PNG + SVG.

The figures follow the paper's: one line per variant against the number of
running instances N (medians, with a p10-p90 band), and a stacked bar of
lightvm's boot breakdown per N; a suite comparing variants at one point only (tinyx)
gets bars per variant. Each function returns the files it wrote.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightvm.bench.runner import Result, summarize

FORMATS = ("png", "svg")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        out.append(path)
    return out


def lines(
    results: Sequence[Result],
    stem: Path,
    title: str,
    ylabel: str,
    logy: bool = False,
    metric: str | None = None,
    subtitle: str = "",
) -> list[Path]:
    """Median of ``metric`` (each row's primary metric by default) vs N, one line per variant."""
    series: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for r in results:
        values = r.values(metric)
        if r.error or not values or "n" not in r.params:
            continue
        series.setdefault(str(r.params.get("variant", r.name)), []).append((int(r.params["n"]), summarize(values)))
    if not series:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, points in series.items():
        points.sort()
        xs = [n for n, _ in points]
        ax.plot(xs, [s["median"] for _, s in points], marker="o", label=variant)
        ax.fill_between(xs, [s["p10"] for _, s in points], [s["p90"] for _, s in points], alpha=0.2)
    ax.set_xlabel("N (instances running, counting the measured one)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    if len({n for pts in series.values() for n, _ in pts}) > 1:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    try:
        return _save(fig, stem)
    finally:
        plt.close(fig)


def breakdown(results: Sequence[Result], stem: Path, variant: str, steps: Sequence[str]) -> list[Path]:
    """Stacked bars of the median time spent in each boot step, per N, for one variant."""
    rows = sorted(
        (r for r in results if r.params.get("variant") == variant and r.samples and not r.error),
        key=lambda r: int(r.params.get("n", 0)),
    )
    if not rows:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [str(r.params.get("n")) for r in rows]
    bottoms = [0.0] * len(rows)
    previous: list[float] = [0.0] * len(rows)
    for step in steps:
        medians = []
        for r in rows:
            vals = r.values(step)
            medians.append(statistics.median(vals) if vals else float("nan"))
        # Each segment is the time from the previous step to this one (a step may be missing).
        heights = [max(0.0, m - p) if m == m else 0.0 for m, p in zip(medians, previous, strict=True)]
        ax.bar(labels, heights, bottom=bottoms, label=step)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        previous = [m if m == m else p for m, p in zip(medians, previous, strict=True)]
    ax.set_xlabel("N (VMs running, counting the measured one)")
    ax.set_ylabel("ms from the start of create (median)")
    ax.set_title(f"{variant}: boot breakdown per point", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    try:
        return _save(fig, stem)
    finally:
        plt.close(fig)


def bars(
    groups: Sequence[tuple[str, Sequence[float]]],
    stem: Path,
    title: str,
    ylabel: str,
    logy: bool = False,
    subtitle: str = "",
) -> list[Path]:
    """One bar per (label, values): the median, with a p10-p90 whisker and the value on top.

    For suites that compare variants at one point (the Tinyx suite: create -> serving of a
    VM, a pooled VM and a container), where a line against N has nothing to draw."""
    groups = [(label, values) for label, values in groups if values]
    if not groups:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stats = [summarize(values) for _, values in groups]
    xs = list(range(len(groups)))
    medians = [s["median"] for s in stats]
    errors = [[m - s["p10"] for m, s in zip(medians, stats, strict=True)],
              [s["p90"] - m for m, s in zip(medians, stats, strict=True)]]  # fmt: skip
    ax.bar(xs, medians, yerr=errors, capsize=4, color=[f"C{i}" for i in xs])
    for x, m in zip(xs, medians, strict=True):
        text = f"{m:.0f}" if m >= 100 else f"{m:.3g}"
        ax.annotate(text, (x, m), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs, [label for label, _ in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    try:
        return _save(fig, stem)
    finally:
        plt.close(fig)


__all__ = ["FORMATS", "bars", "breakdown", "lines"]

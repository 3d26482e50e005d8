"""Plots of a suite's results (matplotlib, Agg backend: no display needed), PNG + SVG.

The figures follow the paper's: one line per variant against the number of
running instances N (medians, with a p10-p90 band), and a stacked bar of
lightvm's boot breakdown per N. Each function returns the files it wrote.
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


__all__ = ["FORMATS", "breakdown", "lines"]

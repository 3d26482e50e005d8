#!/usr/bin/env python3
"""A/B comparison of two benchmark results (after Firecracker's ab_test).

    python3 ci/ab_compare.py A.json B.json [--alpha 0.01] [--threshold 0.05] [--json out.json]

A is the baseline (the previous commit), B the candidate (this one), both
measured on the same host in the same run. For every benchmark present in both,
and every metric it recorded, it reports the medians, the ratio B/A and the
p-value of a two-sided permutation test on the difference of medians (exact
when the samples are small, else 10,000 seeded random permutations). A
*regression* is a metric where B is worse (higher: every metric here is a time,
a size or a CPU share, lower is better) with p < alpha AND a relative change
beyond the threshold: a statistically clear difference too small to matter is
not flagged, nor is a large one the samples cannot support.

Both results must come from the same QEMU and accelerator (meta ``qemu_version``
and ``accel``): a different binary moves every boot time (Debian's QEMU starts
~10 ms slower than the slim build), so a mismatch is refused (exit 2, naming
both values) unless ``--allow-mismatch`` is given.

Exit status: 0 no regression, 1 regression(s), 2 usage or input error (or a
refused mismatch).
Only the standard library: runs on any runner without the venv.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EXACT_LIMIT = 20_000  # at most this many splits: enumerate them all
PERMUTATIONS = 10_000
SEED = 20171028  # fixed: the same inputs always give the same verdict (SOSP'17 opened on Oct 28)


@dataclass
class Comparison:
    benchmark: str
    metric: str
    unit: str
    n_a: int
    n_b: int
    median_a: float
    median_b: float
    ratio: float  # median_b / median_a (inf when A's median is 0 and B's is not)
    p_value: float
    verdict: str  # "regression", "improvement", "no change", "insufficient data"


def permutation_test(
    a: Sequence[float], b: Sequence[float], permutations: int = PERMUTATIONS, seed: int = SEED
) -> float:
    """Two-sided p-value for |median(b) - median(a)| under random relabelling.

    Exact (every split) when there are at most EXACT_LIMIT splits; otherwise a
    seeded Monte-Carlo estimate with the +1 correction (never exactly 0).
    """
    if not a or not b:
        return 1.0
    observed = abs(statistics.median(b) - statistics.median(a))
    pooled = [*a, *b]
    n, k = len(pooled), len(a)
    eps = 1e-12 * max(1.0, abs(observed))
    if math.comb(n, k) <= EXACT_LIMIT:
        hits = total = 0
        for idx in itertools.combinations(range(n), k):
            chosen = set(idx)
            xa = [pooled[i] for i in idx]
            xb = [pooled[i] for i in range(n) if i not in chosen]
            total += 1
            if abs(statistics.median(xb) - statistics.median(xa)) >= observed - eps:
                hits += 1
        return hits / total
    rng = random.Random(seed)
    hits = 0
    for _ in range(permutations):
        rng.shuffle(pooled)
        if abs(statistics.median(pooled[k:]) - statistics.median(pooled[:k])) >= observed - eps:
            hits += 1
    return (hits + 1) / (permutations + 1)


def compare_samples(
    name: str, metric: str, unit: str, a: Sequence[float], b: Sequence[float], alpha: float, threshold: float
) -> Comparison:
    if len(a) < 2 or len(b) < 2:
        ma = statistics.median(a) if a else math.nan
        mb = statistics.median(b) if b else math.nan
        return Comparison(name, metric, unit, len(a), len(b), ma, mb, _ratio(ma, mb), 1.0, "insufficient data")
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = _ratio(ma, mb)
    p = permutation_test(a, b)
    verdict = "no change"
    if p < alpha and abs(ratio - 1.0) > threshold:
        verdict = "regression" if mb > ma else "improvement"
    return Comparison(name, metric, unit, len(a), len(b), ma, mb, ratio, p, verdict)


def _ratio(ma: float, mb: float) -> float:
    if math.isnan(ma) or math.isnan(mb):
        return math.nan
    if ma == 0:
        return 1.0 if mb == 0 else math.inf
    return mb / ma


def _benchmarks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in doc.get("benchmarks", []) if not b.get("error")}


def compare(
    doc_a: dict[str, Any], doc_b: dict[str, Any], alpha: float = 0.01, threshold: float = 0.05
) -> list[Comparison]:
    """Every (benchmark, metric) recorded in both results, A = baseline, B = candidate."""
    a, b = _benchmarks(doc_a), _benchmarks(doc_b)
    out = []
    for name in [n for n in a if n in b]:
        metrics = sorted({k for s in a[name]["samples"] for k in s} & {k for s in b[name]["samples"] for k in s})
        primary = a[name].get("metric")
        metrics.sort(key=lambda m: m != primary)  # the primary metric first
        for metric in metrics:
            xa = [float(s[metric]) for s in a[name]["samples"] if metric in s]
            xb = [float(s[metric]) for s in b[name]["samples"] if metric in s]
            unit = a[name].get("unit", "") if metric == primary else ""
            out.append(compare_samples(name, metric, unit, xa, xb, alpha, threshold))
    return out


def render(comparisons: Sequence[Comparison], label_a: str, label_b: str, primary_only: bool = False) -> str:
    lines = [
        f"A = {label_a}   B = {label_b}",
        f"{'benchmark':<40} {'metric':<16} {'median A':>10} {'median B':>10} {'B/A':>7} {'p':>8}  verdict",
    ]
    seen: set[str] = set()
    for c in comparisons:
        if primary_only and c.benchmark in seen:
            continue
        seen.add(c.benchmark)
        flag = " <<<" if c.verdict == "regression" else ""
        lines.append(
            f"{c.benchmark:<40} {c.metric:<16} {c.median_a:>10.3f} {c.median_b:>10.3f} {c.ratio:>7.3f} "
            f"{c.p_value:>8.4f}  {c.verdict}{flag}"
        )
    return "\n".join(lines)


MATCHED_META = ("qemu_version", "accel")  # keys A and B must agree on to be comparable


def mismatches(doc_a: dict[str, Any], doc_b: dict[str, Any]) -> list[str]:
    """One line per :data:`MATCHED_META` key whose values differ between A and B (absent: None)."""
    meta_a, meta_b = doc_a.get("meta", {}), doc_b.get("meta", {})
    return [
        f"{key}: A {meta_a.get(key)!r} != B {meta_b.get(key)!r}"
        for key in MATCHED_META
        if meta_a.get(key) != meta_b.get(key)
    ]


def _label(doc: dict[str, Any]) -> str:
    meta = doc.get("meta", {})
    return f"{meta.get('git_describe', '?')} ({meta.get('suite', '?')}, {meta.get('accel', '?')})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="baseline results.json (previous commit)")
    ap.add_argument("b", type=Path, help="candidate results.json (this commit)")
    ap.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    ap.add_argument("--threshold", type=float, default=0.05, help="relative change that matters (default 0.05)")
    ap.add_argument("--all-metrics", action="store_true", help="print every metric, not only each row's primary")
    ap.add_argument("--json", type=Path, help="also write the comparisons here")
    ap.add_argument(
        "--allow-mismatch", action="store_true", help="compare even when qemu_version or accel differ (warn only)"
    )
    args = ap.parse_args(argv)
    try:
        doc_a, doc_b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    except (OSError, ValueError) as exc:
        print(f"ab_compare: {exc}", file=sys.stderr)
        return 2
    differ = mismatches(doc_a, doc_b)
    for line in differ:
        print(f"ab_compare: {'warning: ' if args.allow_mismatch else ''}A and B differ in {line}", file=sys.stderr)
    if differ and not args.allow_mismatch:
        print("ab_compare: refusing to compare them (--allow-mismatch to compare anyway)", file=sys.stderr)
        return 2
    comparisons = compare(doc_a, doc_b, args.alpha, args.threshold)
    print(render(comparisons, _label(doc_a), _label(doc_b), primary_only=not args.all_metrics))
    if args.json:
        doc = {"a": _label(doc_a), "b": _label(doc_b), "comparisons": [asdict(c) for c in comparisons]}
        args.json.write_text(json.dumps(doc, indent=1))
    regressions = [c for c in comparisons if c.verdict == "regression"]
    if regressions:
        names = ", ".join(f"{c.benchmark}:{c.metric}" for c in regressions)
        print(f"REGRESSION in {len(regressions)} metric(s): {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""JSON-lines history of benchmark runs and a static HTML report.

    python3 ci/history.py append HISTORY.jsonl RESULTS.json [RESULTS.json ...]
    python3 ci/history.py report HISTORY.jsonl OUT_DIR [--run DIR ...] [--ab AB.txt ...]

``append`` adds one line per results file: its metadata (commit, host, accel,
QEMU, time) and each benchmark's primary-metric summary (not every sample;
those stay in the results files). ``report`` writes OUT_DIR/index.html: the
latest run's plots (copied next to the page) and medians, the A/B comparison
texts, and per benchmark its medians over the last runs on the same host
and accelerator (a history across different hardware would mislead). Only the
standard library; the page has no scripts and no external resources.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
from pathlib import Path
from typing import Any

KEEP = 30  # runs shown per benchmark


def entry(doc: dict[str, Any]) -> dict[str, Any]:
    meta = doc.get("meta", {})
    rows = {}
    for b in doc.get("benchmarks", []):
        summary = b.get("summary", {}).get(b.get("metric", ""), {})
        rows[b["name"]] = {
            "metric": b.get("metric"),
            "unit": b.get("unit"),
            "median": summary.get("median"),
            "p10": summary.get("p10"),
            "p90": summary.get("p90"),
            "n": summary.get("n"),
            "error": b.get("error", ""),
        }
    keys = ("suite", "git_describe", "git_commit", "hostname", "cpu_model", "accel", "qemu_version", "timestamp")
    return {**{k: meta.get(k) for k in keys}, "benchmarks": rows}


def append(history: Path, results: list[Path]) -> int:
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a") as f:
        for path in results:
            f.write(json.dumps(entry(json.loads(path.read_text())), sort_keys=True) + "\n")
    return len(results)


def load(history: Path) -> list[dict[str, Any]]:
    if not history.exists():
        return []
    out = []
    for line in history.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line (killed run) must not hide the rest
    return out


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def render(entries: list[dict[str, Any]], out: Path, runs: list[Path], ab_texts: list[Path]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lightvm nightly benchmarks</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
        "td:first-child{text-align:left}img{max-width:48%;margin:4px}pre{background:#f6f6f6;padding:8px}"
        ".bad{color:#b00;font-weight:bold}</style></head><body>",
        "<h1>lightvm nightly benchmarks</h1>",
    ]
    for run in runs:
        results = run / "results.json"
        if not results.exists():
            continue
        doc = json.loads(results.read_text())
        meta = doc.get("meta", {})
        title = f"{meta.get('suite')} @ {meta.get('git_describe')}"
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(
            "<p>"
            + html.escape(
                f"{meta.get('timestamp')} on {meta.get('hostname')} "
                f"({meta.get('cpu_model')}, {meta.get('nproc')} CPUs), "
                f"accel {meta.get('accel')}, {meta.get('qemu_version')}, kernel {meta.get('kernel')}"
            )
            + "</p>"
        )
        parts.append(f"<pre>{html.escape(doc.get('summary_table', ''))}</pre>")
        dest = out / run.name
        dest.mkdir(exist_ok=True)
        for name in doc.get("plots", []):
            src = run / name
            if src.suffix == ".svg" and src.exists():
                shutil.copy2(src, dest / name)
                parts.append(f"<img src='{html.escape(run.name)}/{html.escape(name)}' alt='{html.escape(name)}'>")
    for text in ab_texts:
        if text.exists():
            body = html.escape(text.read_text())
            lines = body.splitlines()
            body = "\n".join(f"<span class='bad'>{x}</span>" if "&lt;&lt;&lt;" in x else x for x in lines)
            parts.append(f"<h2>A/B: {html.escape(text.stem)}</h2><pre>{body}</pre>")
    if entries:
        latest = entries[-1]
        key = (latest.get("hostname"), latest.get("accel"))
        same = [e for e in entries if (e.get("hostname"), e.get("accel")) == key]
        parts.append(f"<h2>History (medians, last {KEEP} runs on {html.escape(str(latest.get('hostname')))})</h2>")
        names = sorted({n for e in same for n in e.get("benchmarks", {})})
        for suite in sorted({str(e.get("suite")) for e in same}):
            runs_of_suite = [e for e in same if e.get("suite") == suite][-KEEP:]
            cols = "".join(f"<th>{html.escape(str(e.get('git_describe')))}</th>" for e in runs_of_suite)
            parts.append(f"<h3>{html.escape(suite)}</h3><table><tr><th>benchmark</th>{cols}</tr>")
            for name in names:
                if not any(name in e["benchmarks"] for e in runs_of_suite):
                    continue
                cells = "".join(f"<td>{_fmt(e['benchmarks'].get(name, {}).get('median'))}</td>" for e in runs_of_suite)
                parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts) + "\n")
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("append", help="append results files to the history")
    p.add_argument("history", type=Path)
    p.add_argument("results", type=Path, nargs="+")
    p = sub.add_parser("report", help="render the HTML report")
    p.add_argument("history", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--run", type=Path, action="append", default=[], help="a results folder to show (repeatable)")
    p.add_argument("--ab", type=Path, action="append", default=[], help="an ab_compare output to show (repeatable)")
    args = ap.parse_args(argv)
    if args.command == "append":
        print(f"appended {append(args.history, args.results)} run(s) to {args.history}")
        return 0
    page = render(load(args.history), args.out, args.run, args.ab)
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke run of ``lightvm bench qmp`` (TCG): each row's round trips were timed on the kept
connection, the forwards it added were accepted and removed (the row fails otherwise),
and nothing is left (the clean_host fixture)."""

from __future__ import annotations

from pathlib import Path

from benchlib import check_results, smoke_opts

from lightvm.bench.cli import run_suite
from lightvm.bench.qmp import VARIANTS


def test_qmp_smoke(images: Path, tmp_path: Path, clean_host: None) -> None:
    run_suite("qmp", smoke_opts(), tmp_path)
    doc = check_results(tmp_path, "qmp", {f"qmp/{v}" for v in VARIANTS})
    for row in doc["benchmarks"]:
        # a round trip on a local socket: well above zero, far below a second
        assert all(0 < s["ms"] < 1000 for s in row["samples"]), row["name"]

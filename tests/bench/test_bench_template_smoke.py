"""Smoke run of ``lightvm bench template`` (N = 1, 2; TCG): every row produced sane samples,
the lightvmd rows were served from the template's prepared shells, every clone answered on
its own port (the row fails otherwise), and nothing is left (the clean_host fixture)."""

from __future__ import annotations

from pathlib import Path

from benchlib import VMS, check_results, smoke_opts

from lightvm.bench.cli import run_suite
from lightvm.bench.template import CLONE_OPS, RESTORE_OPS


def test_template_smoke(images: Path, tmp_path: Path, clean_host: None) -> None:
    run_suite("template", smoke_opts(), tmp_path)
    expected = {f"template/{op}/n=1" for op in RESTORE_OPS} | {f"template/{op}/n={n}" for op in CLONE_OPS for n in VMS}
    doc = check_results(tmp_path, "template", expected)
    rows = {b["name"]: b for b in doc["benchmarks"]}
    for sample in rows["template/restore-template-pool/n=1"]["samples"]:
        assert sample["ms"] >= sample["daemon_ready_ms"] >= sample["finish_ms"] > 0
    for n in VMS:
        for sample in rows[f"template/clone-pool/n={n}"]["samples"]:
            assert sample["pool_hits"] == n and sample["ms"] >= sample["reply_ms"] > 0

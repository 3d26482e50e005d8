"""Smoke run of the boot suite's XenStore baseline (lightvm-xenstore): results are produced
and sane, and nothing it started is left (xenstored runs from the suite's temp dir, so
the leftover check of clean_host, tests/bench/conftest.py, covers it along with the QEMUs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchlib import VMS, check_results, smoke_opts

from lightvm.bench.cli import run_suite


def test_boot_smoke_xenstore(images: Path, tmp_path: Path, clean_host: None) -> None:
    opts = dataclasses.replace(smoke_opts(), baselines=("lightvm-xenstore",))
    run_suite("boot", opts, tmp_path)
    variants = ("lightvm-cold", "lightvm-split", "lightvm-xenstore")
    doc = check_results(tmp_path, "boot", {f"boot/{v}/n={n}" for v in variants for n in VMS})
    rows = {b["name"]: b for b in doc["benchmarks"]}
    for sample in rows["boot/lightvm-xenstore/n=2"]["samples"]:
        # READY comes after the store traffic (config transactions, introduce, vif handshake)
        assert 0 < sample["store_ms"] < sample["ms"] == sample["ready"]
        steps = [sample[k] for k in ("qemu_up", "resumed", "guest_entry", "devices_up", "ready")]
        assert steps == sorted(steps), steps
    assert "x lightvm-cold" in doc["summary_table"]

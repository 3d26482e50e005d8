"""What the bench smoke tests share: the small suite options they run with and the check
of a run's results.json (every meta key, every expected row, sane samples, the plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lightvm.bench import suite

META_KEYS = ("git_describe", "hostname", "cpu_model", "nproc", "accel", "qemu_version", "kernel", "timestamp")
ITERATIONS = 2
VMS = [1, 2]
# idle CPU can be 0; MemAvailable is noisy; QEMU reports migration downtime in whole ms (< 1 ms reads 0);
# a client that lost no query during a migration reports 0 failed queries;
# a container's processes have no shared memory (a VM's guest RAM is shmem)
ZERO_OK = (
    "cpu_pct_per_vm", "cpu_pct_total", "host_mib_per_vm", "qemu_downtime_ms", "cpu_pct", "pss_shmem_mib",
    "failed_queries",
)  # fmt: skip


def smoke_opts() -> suite.SuiteOptions:
    return suite.SuiteOptions(
        vms=list(VMS),
        iterations=ITERATIONS,
        warmup=1,
        accel="tcg",
        baselines=("fork-exec", "crun", "libvirt"),
        idle_window_s=0.5,
        settle_s=0.0,
    )


def check_results(out: Path, name: str, expected_rows: set[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    meta = doc["meta"]
    for key in META_KEYS:
        assert meta.get(key) not in (None, "", "unknown"), f"meta {key}: {meta.get(key)!r}"
    assert meta["suite"] == name and meta["accel"] == "tcg"
    rows = {b["name"]: b for b in doc["benchmarks"]}
    assert set(rows) == expected_rows
    for b in rows.values():
        assert not b["error"], f"{b['name']}: {b['error']}"
        assert len(b["samples"]) == b["iterations"] >= 1, b["name"]
        for sample in b["samples"]:
            assert b["metric"] in sample
            for metric, value in sample.items():
                assert math.isfinite(value), (b["name"], metric, value)
                if metric in ZERO_OK:
                    assert value >= 0 or metric == "host_mib_per_vm", (b["name"], metric, value)
                else:
                    assert value > 0, (b["name"], metric, value)
        assert b["summary"][b["metric"]]["n"] == len(b["samples"])
    assert doc["plots"], "no plots"
    for plot in doc["plots"]:
        assert (out / plot).stat().st_size > 1000, plot
    # the table (a header and a line per row), then a suite's own lines (tinyx: the stock ratios)
    assert (out / "summary.txt").read_text().count("\n") == len(rows) + 1 + len(doc["summary_extra"])
    return doc

"""Smoke run of the pooled-NIC bench (``lightvm bench splitnic``, lightvm/bench/splitnic.py): daytime with a
NIC created from the pool and cold, side by side, and each VM's daytime line read over TCP
from the host after the create (through the network's namespace for a tap, through the
published port for user networking): the figures the bar of issue 12 names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(300)
@pytest.mark.parametrize("net", ["tap", "user"])
def test_splitnic_smoke_reads_daytime(net: str, images: Path, tmp_path: Path, clean_host: None) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lightvm.bench.cli", "splitnic", "--smoke", "--net", net, "--accel", "tcg"]
    proc = subprocess.run(
        [*argv, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["suite"] == "splitnic" and doc["meta"]["options"]["net"] == net
    assert doc["net"] == net and doc["iterations"] == 2
    for path in ("pool", "cold"):
        row = doc[path]
        assert len(row["samples_ms"]) == 2
        # the line was read (the bench checks it says UTC), after the READY reply
        assert row["answer_median_ms"] is not None and row["answer_median_ms"] >= row["min_ms"]
        assert row["woken_median_ms"] is not None and 0 < row["woken_median_ms"] < row["max_ms"]
    summary = (out / "summary.txt").read_text()
    assert "daytime line read over TCP" in summary and summary in proc.stdout

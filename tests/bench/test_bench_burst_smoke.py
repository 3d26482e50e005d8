"""Smoke run of ``lightvm bench burst`` (a few creates, two clients, a pool of 1): the
results say how many creates the pool served, the latencies, the pool's growth and the
leak check; the pool shrank back; nothing leaked and nothing of the run is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(300)
def test_burst_smoke(images: Path, tmp_path: Path, clean_host: None) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lightvm.bench.cli", "burst", "--smoke", "--initial-pool", "1"]
    argv += ["--clients", "2", "--pool-idle", "1", "--accel", "tcg", "--out", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["suite"] == "burst" and doc["meta"]["accel"] == "tcg"
    s = doc["summary"]
    assert s["creates"] == 40 == len(doc["samples"]) and not doc["errors"]
    assert s["daemon_hits"] + s["daemon_waited"] + s["daemon_misses"] == 40
    assert 0 <= s["pool_fraction"] <= 1 and s["creates_per_s"] > 0
    assert s["hit_ms"]["n"] + s["miss_ms"]["n"] == 40
    assert s["hit_ms"]["n"] == 0 or 0 < s["hit_ms"]["median"] <= s["hit_ms"]["p99"]
    assert s["peak_target"] >= 1 and s["peak_size"] >= 1
    assert doc["shrank_to_floor"] is True
    assert not any(doc["leaks"].values()) and not any(doc["leaks_after_stop"].values()), doc["leak_check"]
    before = doc["leak_check"]["before"]
    # lightvmd, its warm CLI server (lightvm/daemon/warmcli.py) and 1 shell
    assert before["processes"] == 3 and before["noxs_files"] == 1 and before["daemon_fds"] > 0
    assert "from the pool:" in proc.stdout and (out / "summary.txt").read_text().startswith("burst: 40 creates")

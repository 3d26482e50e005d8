"""Migration progress: what lightvm migrate prints on stderr from QEMU's query-migrate."""

from __future__ import annotations

import pytest

from lightvm.cli.checkpoint import print_progress
from lightvm.mobility.stream import progress_of

ACTIVE = {"status": "active", "ram": {"transferred": 3 << 20, "remaining": 13 << 20, "total": 16 << 20, "mbps": 812.5}}
DONE = {"status": "completed", "downtime": 1, "total-time": 25, "ram": {"transferred": 5 << 20, "total": 16 << 20}}


def test_progress_of_query_migrate() -> None:
    assert progress_of(ACTIVE) == {
        "status": "active",
        "transferred": 3 << 20,
        "remaining": 13 << 20,
        "total": 16 << 20,
        "mbps": 812.5,
    }
    assert progress_of(DONE)["downtime_ms"] == 1.0 and progress_of({"status": "setup"})["transferred"] == 0


def test_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    print_progress(progress_of(ACTIVE))
    print_progress(progress_of(DONE))
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "migrate: active: 3.0 MiB sent, 13.0 MiB left of 16.0, 812 Mbit/s",
        "migrate: completed: 5.0 MiB sent; downtime 1.0 ms",
    ]

"""The save/restore progress line (lightvm/cli/checkpoint.py ProgressLines): silent until
the stream has lasted ``after`` seconds, then done/total, rate, left and an estimate
taken from guest RAM covered, not from bytes written (zero pages cost a few bytes)."""

from __future__ import annotations

import pytest

from lightvm.cli import checkpoint

MIB = 1 << 20


def report(status: str, total: int, remaining: int, written: int) -> dict[str, object]:
    return {"status": status, "total": total, "remaining": remaining, "transferred": written, "mbps": 0.1}


def test_silent_before_after_then_one_line_per_report(capsys: pytest.CaptureFixture[str]) -> None:
    lines = checkpoint.ProgressLines("save", after=3600.0)
    lines(report("active", 100 * MIB, 50 * MIB, MIB))
    lines(report("completed", 100 * MIB, 0, 2 * MIB))
    assert capsys.readouterr().err == "" and lines.shown == 0
    lines = checkpoint.ProgressLines("save", after=0.0)
    lines(report("active", 100 * MIB, 50 * MIB, MIB))
    lines(report("completed", 100 * MIB, 0, 2 * MIB))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and lines.shown == 2


def test_the_line_counts_ram_covered_not_bytes_written() -> None:
    lines = checkpoint.ProgressLines("save", after=0.0)
    line = lines.line(report("active", 2048 * MIB, 1024 * MIB, 2 * MIB), elapsed=2.0)
    assert line == "save: active: 1024.0 of 2048.0 MiB, 512.0 MiB/s, 1024.0 MiB left, ~2.0 s; 2.0 MiB written"
    line = lines.line(report("completed", 2048 * MIB, 0, 4 * MIB), elapsed=4.0)
    assert line == "save: completed: 2048.0 of 2048.0 MiB in 4.0 s, 512.0 MiB/s; 4.0 MiB written"


def test_a_restore_whose_stream_is_read_says_qemu_still_loads() -> None:
    lines = checkpoint.ProgressLines("restore", after=0.0)
    line = lines.line(report("active", 4 * MIB, 0, 4 * MIB), elapsed=2.0)
    assert line == "restore: active: 4.0 of 4.0 MiB read, 2.0 MiB/s; QEMU is still loading it (2.0 s)"


def test_the_threshold_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(checkpoint.PROGRESS_AFTER_ENV, "2.5")
    assert checkpoint.ProgressLines("save").after == 2.5
    monkeypatch.setenv(checkpoint.PROGRESS_AFTER_ENV, "soon")
    assert checkpoint.ProgressLines("save").after == checkpoint.PROGRESS_AFTER

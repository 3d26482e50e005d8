"""Save and restore progress on stderr (lightvm/cli/checkpoint.py ProgressLines): silent
for a small VM's few-ms stream, lines with bytes, rate and what is left once the stream
lasts (here forced with LIGHTVM_PROGRESS_AFTER=0), none with --quiet; a restore through
lightvmd streams its progress over the API like a migration's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from daemonlib import NOOP, Lightvmd

pytestmark = pytest.mark.functional

PROGRESS = re.compile(r"^(save|restore): (active|completed): ", re.MULTILINE)
SAVE_DONE = re.compile(
    r"^save: completed: (\d+\.\d) of (\d+\.\d) MiB in \d+\.\d s, \d+\.\d MiB/s; \d+\.\d MiB written$", re.M
)
RESTORE_DONE = re.compile(r"^restore: completed: (\d+\.\d) of (\d+\.\d) MiB in \d+\.\d s, \d+\.\d MiB/s$", re.M)


def test_progress_only_when_it_lasts_and_never_with_quiet(lightvm: Any, tmp_path: Path) -> None:
    lightvm.create(NOOP, "memory=64M")
    quick = lightvm.ok("save", "noop", str(tmp_path / "a.lvm"), "--keep-running")
    assert not PROGRESS.search(quick.err), quick.err  # a few ms: no line

    lightvm.env["LIGHTVM_PROGRESS_AFTER"] = "0"  # as if every stream lasted
    shown = lightvm.ok("save", "noop", str(tmp_path / "b.lvm"))
    done = SAVE_DONE.search(shown.err)
    assert done, shown.err
    assert done.group(1) == done.group(2) and float(done.group(2)) >= 64.0  # guest RAM (and ROMs)
    restored = lightvm.ok("restore", str(tmp_path / "b.lvm"))
    done = RESTORE_DONE.search(restored.err)
    assert done, restored.err
    size = (tmp_path / "b.lvm").stat().st_size / (1 << 20)
    assert done.group(1) == done.group(2) and 0 < float(done.group(2)) <= size + 0.05  # the stream, rounded

    quiet = lightvm.ok("save", "noop", str(tmp_path / "c.lvm"), "--quiet")
    assert not PROGRESS.search(quiet.err), quiet.err
    quiet = lightvm.ok("restore", str(tmp_path / "c.lvm"), "-q")
    assert not PROGRESS.search(quiet.err), quiet.err
    lightvm.ok("destroy", "noop")


def test_restore_through_lightvmd_streams_its_progress(lightvmd: Lightvmd, tmp_path: Path) -> None:
    lightvmd.start(pool=None)
    lightvmd.create("p", NOOP)
    ckpt = tmp_path / "p.lvm"
    assert lightvmd.cli("save", "p", str(ckpt)).returncode == 0
    lightvmd.env["LIGHTVM_PROGRESS_AFTER"] = "0"
    r = lightvmd.cli("restore", str(ckpt))
    assert r.returncode == 0 and "via lightvmd" in r.stderr, r.stderr
    assert RESTORE_DONE.search(r.stderr), r.stderr
    assert "p: restored from" in r.stdout and "path: cold (lightvmd" in r.stdout
    quiet = lightvmd.cli("restore", str(ckpt), "--name", "q", "--quiet")
    assert quiet.returncode == 0 and not PROGRESS.search(quiet.stderr), quiet.stderr
    lightvmd.call("destroy", {"all": True})

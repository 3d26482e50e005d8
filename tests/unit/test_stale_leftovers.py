"""What a process killed with -9 leaves, named with its PID, and who may remove it:
lightvm.util.owner_gone, used by save's partial files, template builds' partial folders
and image snapshots' boot folders."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightvm.mobility.save import clean_stale_partials
from lightvm.mobility.template import _clean_stale_dirs
from lightvm.util import owner_gone


@pytest.fixture
def pids() -> Iterator[tuple[str, str]]:
    """(a live process's PID, a PID whose process has exited and been reaped)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield str(live.pid), str(dead.pid)
    finally:
        live.kill()
        live.wait(timeout=30)


def test_owner_gone_only_for_a_pid_no_process_has(pids: tuple[str, str]) -> None:
    live, dead = pids
    assert owner_gone(dead)
    for text in (live, str(os.getpid()), "0", "-1", "", "12a", "1.5"):
        assert not owner_gone(text), text


def test_save_partials_of_dead_saves_go_live_ones_stay(tmp_path: Path, pids: tuple[str, str]) -> None:
    live, dead = pids
    for name in (f".vm.ckpt.partial-{dead}", f".vm.ckpt.partial-{live}", f".vm.ckpt.partial-{os.getpid()}", "vm.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    assert clean_stale_partials(tmp_path) == [tmp_path / f".vm.ckpt.partial-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".vm.ckpt.partial-{live}", f".vm.ckpt.partial-{os.getpid()}", "vm.ckpt"]
    )


def test_template_partial_folders_of_dead_builds_go(tmp_path: Path, pids: tuple[str, str]) -> None:
    live, dead = pids
    for name in (f".t.partial-{dead}", f".t.partial-{live}", "t"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_bytes(b"x")
    _clean_stale_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".t.partial-{live}", "t"])

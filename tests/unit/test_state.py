"""State folders: allocation, atomic records, status from /proc. No QEMU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lightvm.errors import ExistsError, NotFoundError, StateError
from lightvm.state import (
    SHM_ENV,
    STATE_ENV,
    StateDir,
    VMDir,
    VMRecord,
    VMStatus,
    default_state_dir,
    noxs_file,
    shm_dir,
    status_of,
)
from lightvm.util import atomic_write, proc_alive, proc_start_time


def record(name: str = "a", **kw: object) -> VMRecord:
    values: dict[str, object] = dict(
        name=name, id="0123456789abcdef", uuid="u", created=1.0, accel="tcg", noxs_path="/dev/shm/x", noxs_size=8192
    )
    values.update(kw)
    return VMRecord(**values)  # type: ignore[arg-type]


def test_default_state_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(STATE_ENV, str(tmp_path))
    assert default_state_dir() == tmp_path
    monkeypatch.delenv(STATE_ENV)
    # Every branch, whoever runs the test: the euid is the product's only input besides the environment.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/run/lightvm")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "lightvm"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_state_dir() == Path("/tmp/lightvm-1000")


def test_shm_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SHM_ENV, raising=False)
    assert shm_dir() == Path("/dev/shm")
    assert noxs_file("0123456789abcdef") == Path("/dev/shm/lightvm-0123456789abcdef")
    made = tmp_path / "a" / "shm"
    monkeypatch.setenv(SHM_ENV, str(made))
    assert shm_dir() == made and made.is_dir()  # created when missing, owner only
    assert made.stat().st_mode & 0o777 == 0o700
    record = VMRecord.new("vm", "feedfacecafe0001", "u", "tcg", 8192, {})
    assert record.noxs_path == str(made / "lightvm-feedfacecafe0001")


def test_shm_dir_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SHM_ENV, "relative/shm")
    with pytest.raises(StateError, match="LIGHTVM_SHM_DIR=relative/shm: must be an absolute path"):
        shm_dir()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(SHM_ENV, str(tmp_path / "file" / "shm"))
    with pytest.raises(StateError, match="cannot create it"):
        shm_dir()


def test_allocate_is_all_or_nothing(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    dirs = state.allocate(["a", "b"])
    assert [d.name for d in dirs] == ["a", "b"]
    assert state.names() == ["a", "b"]
    with pytest.raises(ExistsError, match="'b' already exists"):
        state.allocate(["c", "b"])
    assert state.names() == ["a", "b"]  # "c" was not made
    creator = dirs[0].creator()
    assert creator is not None and creator[0] == os.getpid()


def test_parallel_allocation_never_collides(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    wins: list[str] = []
    errors: list[Exception] = []

    def take() -> None:
        try:
            state.allocate(["same"])
            wins.append("x")
        except ExistsError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1 and len(errors) == 7


def test_record_round_trip_and_atomic_write(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    (vmdir,) = state.allocate(["a"])
    rec = record(pid=123, boot_ms={"ready": 1.5}, devices={"vifs": [{"tap": "lv0"}]})
    vmdir.write(rec)
    assert vmdir.read() == rec
    assert not [p for p in vmdir.path.iterdir() if p.name.endswith(".tmp")]
    # Unknown fields from a newer lightvm are ignored, not fatal.
    data = json.loads(vmdir.record_path.read_text())
    data["future_field"] = 1
    vmdir.record_path.write_text(json.dumps(data))
    assert vmdir.read() == rec


def test_corrupt_record(tmp_path: Path) -> None:
    (vmdir,) = StateDir(tmp_path).allocate(["a"])
    vmdir.record_path.write_text("{not json")
    with pytest.raises(StateError, match=r"corrupt VM record.*destroy"):
        vmdir.read()


def test_get_unknown(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    with pytest.raises(NotFoundError, match="no VM named 'x'"):
        state.get("x")
    with pytest.raises(NotFoundError):
        state.get("../etc")


def test_status_creating_then_incomplete(tmp_path: Path) -> None:
    (vmdir,) = StateDir(tmp_path).allocate(["a"])
    assert status_of(vmdir, None) is VMStatus.CREATING  # we are the live creator
    # A creator that died: a real process that has exited.
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, timeout=30)
    dead_pid = int(proc.stdout)
    atomic_write(vmdir.creating_path, json.dumps({"pid": dead_pid, "start": 1}))
    assert status_of(vmdir, None) is VMStatus.INCOMPLETE
    assert status_of(vmdir, record()) is VMStatus.INCOMPLETE


def test_status_running_paused_crashed(tmp_path: Path) -> None:
    (vmdir,) = StateDir(tmp_path).allocate(["a"])
    vmdir.mark_created()
    me, start = os.getpid(), proc_start_time(os.getpid())
    assert status_of(vmdir, record(pid=me, pid_start=start, state="running")) is VMStatus.RUNNING
    assert status_of(vmdir, record(pid=me, pid_start=start, state="paused")) is VMStatus.PAUSED
    # Same PID, other start time: a recycled PID is not our QEMU.
    assert status_of(vmdir, record(pid=me, pid_start=(start or 0) + 1, state="running")) is VMStatus.CRASHED
    assert status_of(vmdir, record(pid=None, state="running")) is VMStatus.CRASHED
    assert status_of(vmdir, record(state="halted")) is VMStatus.HALTED


def test_proc_identity() -> None:
    me = os.getpid()
    assert proc_alive(me, proc_start_time(me))
    assert not proc_alive(None, None)
    assert not proc_alive(me, -5)


def test_vmdir_paths(tmp_path: Path) -> None:
    vmdir = VMDir(tmp_path / "vm")
    assert vmdir.qmp_path.name == "qmp.sock" and vmdir.console_path.name == "console.log"

"""Helpers: deadlines, atomic writes, AF_UNIX path shortening; boot-time anchoring."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from lightvm.boot import BootTimes, _anchor_guest_times
from lightvm.noxs import BootRecord, BootState, GuestErrorCode, TscSource
from lightvm.util import atomic_write, last_line, qemu_opt_escape, short_unix_path, tail, wait_until


def test_wait_until_returns_the_value_or_none() -> None:
    calls = iter([None, 0, "", "done"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.0001) == "done"
    start = time.monotonic()
    calls = 0

    def never() -> None:
        nonlocal calls
        calls += 1

    assert wait_until(never, timeout=0.05) is None
    assert time.monotonic() - start >= 0.05  # it gave up only once the deadline had passed
    assert calls >= 2  # and it polled meanwhile, not once at the end


def test_atomic_write_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two"
    assert os.listdir(tmp_path) == ["f.json"]
    assert (path.stat().st_mode & 0o777) == 0o600


def test_short_unix_path_for_deep_folders(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 80) / ("y" * 40)
    deep.mkdir(parents=True)
    target = deep / "s.sock"
    address, dirfd = short_unix_path(target)
    assert dirfd is not None and len(address) < 108
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(address)
            server.listen(1)
            assert target.exists()
    finally:
        os.close(dirfd)
    assert short_unix_path(tmp_path / "s.sock") == (str(tmp_path / "s.sock"), None)


def test_qemu_opt_escape() -> None:
    assert qemu_opt_escape("/a,b/c") == "/a,,b/c"


def test_tail_and_last_line(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"first\n" + b"x" * 5000 + b"\nlast line\n\n")
    assert tail(log, 20).endswith("last line")
    assert last_line(tail(log)) == "last line"
    assert tail(tmp_path / "missing") == ""


def record(**kw: int) -> BootRecord:
    values = dict(tsc_hz=1_000_000, tsc_entry=1_000, tsc_devices_up=3_000, tsc_ready=4_000)
    values.update(kw)
    return BootRecord(
        state=BootState.READY, error=GuestErrorCode.NONE, heartbeat=0, app_counter=0, tsc_source=TscSource.PAGE,
        generation_seen=0, app="noop", message="", **values,
    )  # fmt: skip


def test_guest_times_are_anchored_at_ready() -> None:
    times = BootTimes(qemu_up=20.0, resumed=20.5, ready=30.0)
    _anchor_guest_times(times, record())  # 1 MHz: entry 3 ms and devices 1 ms before READY
    assert times.guest_entry == 27.0 and times.devices_up == 29.0
    assert times.as_dict() == {"qemu_up": 20.0, "resumed": 20.5, "guest_entry": 27.0, "devices_up": 29.0,
                               "ready": 30.0}  # fmt: skip


def test_replies_read_late_are_capped_by_the_guest_entry() -> None:
    # cont's reply was read 0.8 ms after the guest (by its TSC) had already entered.
    times = BootTimes(qemu_up=26.5, resumed=27.8, ready=30.0)
    _anchor_guest_times(times, record())
    assert times.as_dict() == {"qemu_up": 26.5, "resumed": 27.0, "guest_entry": 27.0, "devices_up": 29.0,
                               "ready": 30.0}  # fmt: skip
    times = BootTimes(qemu_up=28.0, resumed=28.0, ready=30.0)
    _anchor_guest_times(times, record())
    assert times.qemu_up == times.resumed == times.guest_entry == 27.0


def test_hostile_or_missing_stamps_are_dropped() -> None:
    for bad in (dict(tsc_hz=0), dict(tsc_entry=0), dict(tsc_entry=9_000), dict(tsc_entry=1, tsc_hz=1)):
        times = BootTimes(ready=30.0)
        _anchor_guest_times(times, record(**bad))
        assert times.guest_entry is None  # never negative, never before the create started


def test_recv_line_keeps_what_follows_and_names_each_failure() -> None:
    import socket

    import pytest

    from lightvm.util import Deadline, recv_line

    a, b = socket.socketpair()
    with a, b:
        b.sendall(b'{"x":1}\n{"y"')
        line, rest = recv_line(a, b"", Deadline(1.0))
        assert (line, rest) == (b'{"x":1}', b'{"y"')
        b.sendall(b":2}\n")
        assert recv_line(a, rest, Deadline(1.0)) == (b'{"y":2}', b"")
        with pytest.raises(TimeoutError):
            recv_line(a, b"partial", Deadline(0.05), max_wait=0.01)
        b.close()
        with pytest.raises(EOFError):
            recv_line(a, b"", Deadline(1.0))


class _FakeQMP:
    """Replies to ``cont`` at once; counts how often boot() reads the socket."""

    def __init__(self, negotiated: bool) -> None:
        self.negotiate_id = 1
        self.negotiated = negotiated
        self.pumps = 0
        self.replies: dict[int, dict[str, object]] = {2: {"return": {}, "id": 2}}
        if not negotiated:
            self.replies[1] = {"return": {}, "id": 1}

    def pump(self, timeout: float) -> bool:
        self.pumps += 1
        return True

    def reply(self, cmd_id: int) -> dict[str, object] | None:
        return self.replies.get(cmd_id)


class _FakeMachine:
    def __init__(self, qmp: _FakeQMP) -> None:
        self.qmp = qmp

    def resume(self, wait: bool = True) -> int:
        return 2


class _ReadyRegion:
    stamped = 0

    def stamp_host_time(self) -> None:
        self.stamped += 1  # boot() stamps the wall clock right before cont

    def boot_state(self) -> int:
        return int(BootState.READY)

    def boot_record(self) -> BootRecord:
        return record()


def test_a_shell_negotiated_at_prepare_does_not_wait_for_its_negotiation_reply() -> None:
    """A pool shell's qmp_capabilities reply was consumed at prepare: boot() must not wait
    out its grace period for it (that once added 100 ms to every pooled create)."""
    from typing import Any

    from lightvm.boot import REPLY_GRACE_S, boot

    for negotiated in (True, False):
        qmp = _FakeQMP(negotiated)
        fake: Any = _FakeMachine(qmp)
        region = _ReadyRegion()
        times, _ = boot(fake, region, time.perf_counter(), timeout=5.0)  # type: ignore[arg-type]
        assert times.resumed is not None and (times.qemu_up is None) == negotiated
        assert region.stamped == 1
        assert qmp.pumps <= 1, f"boot() kept reading QMP for up to {REPLY_GRACE_S} s after READY"


def test_wait_readable_above_fd_setsize() -> None:
    """select() cannot watch descriptor 1024 or above; a process holding a thousand VMs'
    sockets gets there, and its QMP clients must still work."""
    import resource

    import pytest

    from lightvm.util import FD_SETSIZE, wait_readable

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = FD_SETSIZE + 100
    need = hard if hard == resource.RLIM_INFINITY else max(hard, high + 1)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, high + 1), need))
    except (ValueError, OSError) as exc:
        pytest.fail(f"cannot raise RLIMIT_NOFILE to {high + 1} (hard limit {hard}): {exc}")
    a, b = socket.socketpair()
    try:
        fd = os.dup2(a.fileno(), high)
        try:
            assert not wait_readable(fd, 0.01)
            assert not wait_readable(fd, 0.0002)  # sub-millisecond: look, sleep, look
            b.sendall(b"x")
            assert wait_readable(fd, 1.0)
            assert wait_readable(fd, 0.0002)
            assert wait_readable(a.fileno(), 0.0)  # below FD_SETSIZE: select()
        finally:
            os.close(fd)
    finally:
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

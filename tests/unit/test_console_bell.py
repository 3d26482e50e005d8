"""The console bell after a page rewrite (lightvm/instance.py ``ring_console_bell``,
lightvm/mobility/restore.py ``wait_guest_follows``), without QEMU.

A Linux guest's page promises no NMI doorbell: its init (tinyx/init/main.c, ``wait_host``)
polls the page every 15 ms, and wakes at once on a byte in its console. Here a thread plays
the guest: it acknowledges the rewritten page only when the byte comes, as a guest asleep
between two polls would, so a wait that does not ring times out.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lightvm.errors import GuestError
from lightvm.instance import BELL_BYTE, make_console_pipe, ring_console_bell
from lightvm.mobility.restore import page_generation, wait_guest_follows
from lightvm.noxs import SYSCTL_OFFSET, BootState, NoxsRegion, PageConfig, SysctlCtrl
from lightvm.state import VMDir


def fifo_pipe(tmp_path: Path) -> Path:
    """A VM folder's console files, as a Linux VM's restore makes them."""
    return make_console_pipe(VMDir(tmp_path))


def test_make_console_pipe_is_what_qemus_pipe_chardev_opens(tmp_path: Path) -> None:
    pipe = fifo_pipe(tmp_path)
    assert pipe == tmp_path / "console"
    assert os.readlink(tmp_path / "console.out") == "console.log" and (tmp_path / "console.log").is_file()
    assert (tmp_path / "console.in").is_fifo()


def test_the_bell_is_one_byte_to_a_reader(tmp_path: Path) -> None:
    pipe = fifo_pipe(tmp_path)
    reader = os.open(tmp_path / "console.in", os.O_RDONLY | os.O_NONBLOCK)  # QEMU's end
    try:
        assert ring_console_bell(pipe)
        assert os.read(reader, 16) == BELL_BYTE
    finally:
        os.close(reader)


def test_no_bell_without_a_reader_a_fifo_or_room(tmp_path: Path) -> None:
    """Best effort, never blocking: QEMU gone (no reader), the folder gone, a full FIFO."""
    pipe = fifo_pipe(tmp_path)
    assert not ring_console_bell(pipe)  # nobody reads: ENXIO, not a wait
    assert not ring_console_bell(tmp_path / "gone" / "console")
    reader = os.open(tmp_path / "console.in", os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer = os.open(tmp_path / "console.in", os.O_WRONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(BlockingIOError):
                while True:
                    os.write(writer, b"x" * 4096)
        finally:
            os.close(writer)
        assert not ring_console_bell(pipe)
    finally:
        os.close(reader)


class FakeQMP:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, command: str, arguments: dict[str, Any] | None = None) -> int:
        self.sent.append(command)
        return len(self.sent)

    def reply(self, cmd_id: int) -> None:
        return None

    def pump(self, timeout: float) -> bool:
        threading.Event().wait(timeout)
        return True


def linux_guest(region: NoxsRegion, console_in: Path, stop: threading.Event) -> threading.Thread:
    """A guest asleep until its console gets a byte; then it acknowledges the page. The
    FIFO is open for reading before this returns, as QEMU holds it from its start."""
    fd = os.open(console_in, os.O_RDONLY | os.O_NONBLOCK)

    def run() -> None:
        try:
            while not stop.is_set():
                try:
                    if os.read(fd, 64):
                        break
                except BlockingIOError:
                    pass
                stop.wait(0.001)
            else:
                return
            ctrl = SysctlCtrl.from_buffer(region.raw(), SYSCTL_OFFSET)
            ctrl.boot.generation_seen = page_generation(region) & 0xFFFFFFFF
            del ctrl
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def region_after_a_rewrite(tmp_path: Path) -> NoxsRegion:
    """A READY Linux guest's region (no NMI doorbell) whose page the host just rewrote."""
    region = NoxsRegion.create(tmp_path / "noxs", 1)
    region.write_config(PageConfig(name="vm", uuid=uuid.uuid4(), nmi_doorbell=False))
    boot = SysctlCtrl.from_buffer(region.raw(), SYSCTL_OFFSET).boot
    boot.state = int(BootState.READY)
    boot.generation_seen = 0  # the page before the rewrite
    del boot
    assert not region.rings_nmi_doorbell() and page_generation(region) & 0xFFFFFFFF != 0
    return region


@pytest.mark.parametrize("piped", [True, False])
def test_a_linux_guest_follows_at_once_when_its_console_rings(tmp_path: Path, piped: bool) -> None:
    pipe = fifo_pipe(tmp_path)
    region = region_after_a_rewrite(tmp_path)
    qmp = FakeQMP()
    machine: Any = SimpleNamespace(config=SimpleNamespace(console_pipe=pipe if piped else None), qmp=qmp)
    machine.is_running = lambda: True
    stop = threading.Event()
    guest = linux_guest(region, tmp_path / "console.in", stop)
    try:
        if piped:
            wait_guest_follows(machine, region, 5.0, "vm")
            guest.join(5.0)
            assert not guest.is_alive()
        else:  # a VM spawned without a console pipe: nothing wakes this guest but its poll
            with pytest.raises(GuestError, match=r"did not resume within 0\.3 s"):
                wait_guest_follows(machine, region, 0.3, "vm")
        assert "inject-nmi" not in qmp.sent  # a Linux guest's page promises no NMI doorbell
    finally:
        stop.set()
        guest.join(5.0)
        region.close()

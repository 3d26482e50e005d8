"""Faults: QEMU killed, the CLI killed mid-create, QEMU failing at start. Nothing stays behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from lightvm.state import noxs_file
from lightvm.util import proc_start_time, wait_until

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
NOOP = REPO / "examples" / "noop.toml"
NOOP_ELF = REPO / "images" / "build" / "noop.elf"


def test_qemu_killed_shows_crashed_then_destroy_cleans(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    os.kill(noop_vm["pid"], signal.SIGKILL)
    assert wait_until(lambda: proc_start_time(noop_vm["pid"]) is None, 10)
    (entry,) = lightvm.list()
    assert entry["status"] == "crashed" and "QEMU exited" in entry["detail"]
    # Listing reaped the runtime files already; the folder stays until destroy.
    assert not noxs_file(noop_vm["id"]).exists()
    assert lightvm.status() == {"noop": "crashed"}  # stable across lists
    assert lightvm.run("pause", "noop").code == 1
    lightvm.ok("destroy", "noop")
    assert lightvm.list() == [] and lightvm.leftovers() == []


def test_qemu_killed_then_destroy_without_list(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    os.kill(noop_vm["pid"], signal.SIGKILL)
    assert wait_until(lambda: proc_start_time(noop_vm["pid"]) is None, 10)
    lightvm.ok("destroy", "noop")
    assert lightvm.leftovers() == []


def _records(lightvm: Any) -> list[dict[str, Any]]:
    import json

    out = []
    for folder in lightvm.vm_dirs():
        try:
            out.append(json.loads((folder / "vm.json").read_text()))
        except (OSError, ValueError):
            continue
    return out


STAGES = {
    # kill -9 the CLI as soon as ...
    "folder": lambda lv: bool(lv.vm_dirs()),  # the first VM folder exists
    "record": lambda lv: bool(_records(lv)),  # a record names the NoXS file
    "pid": lambda lv: any(r.get("pid") for r in _records(lv)),  # a QEMU is recorded
    "running": lambda lv: any(r.get("state") == "running" for r in _records(lv)),  # one VM is up
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_cli_killed_mid_create(lightvm: Any, stage: str) -> None:
    """kill -9 of the CLI at each stage of `create -n 4`: a later list and destroy clean everything."""
    reached = STAGES[stage]
    proc = lightvm.popen("create", str(NOOP), "--accel", "tcg", "-n", "4", "-j", "2", "--name", "k")
    try:
        # Poll fast: the stages are milliseconds apart.
        assert wait_until(lambda: reached(lightvm) or proc.poll() is not None, 60, interval=0.0002, max_interval=0.001)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lightvm.remember_ids()
    statuses = lightvm.status()
    assert statuses, "the kill came after the create finished: nothing was tested"
    assert set(statuses.values()) <= {"incomplete", "running", "crashed"}, statuses
    if stage != "running":
        assert "incomplete" in statuses.values(), statuses
    lightvm.ok("destroy", "--all")
    assert lightvm.list() == []
    assert lightvm.leftovers() == []


def test_cli_killed_after_spawn_before_pid_recorded(lightvm: Any, tmp_path: Path) -> None:
    """The worst window: QEMU exists but its PID is not in the record. destroy finds it by its argv."""
    import json
    import subprocess

    from lightvm.state import StateDir

    # Reproduce the state a kill in that window leaves: folder, marker of a dead creator,
    # a record without pid, and a QEMU started with this VM's NoXS path.
    state = StateDir(lightvm.state_dir)
    (vmdir,) = state.allocate(["w"])
    dead = subprocess.run(["true"], check=True, timeout=10)
    assert dead.returncode == 0
    vmdir.creating_path.write_text(json.dumps({"pid": 999999999, "start": 1}))
    from lightvm.machine import Machine, MachineConfig
    from lightvm.noxs import NoxsRegion
    from lightvm.state import VMRecord

    shm = noxs_file("feedfacecafe0001")  # in this session's NoXS dir: no other session's
    record = VMRecord(name="w", id="feedfacecafe0001", uuid="u", created=0.0, accel="tcg",
                      noxs_path=str(shm), noxs_size=8192)  # fmt: skip
    vmdir.write(record)
    lightvm.seen_ids.add(record.id)
    region = NoxsRegion.create(shm, 1)
    region.close()
    machine = Machine(MachineConfig(
        name="w", kernel=NOOP_ELF, memory_mib=8, vcpus=1, cmdline="", accel="tcg", noxs_path=shm,
        noxs_size=8192, console_path=vmdir.console_path, qmp_path=vmdir.qmp_path, log_path=vmdir.log_path,
    ))  # fmt: skip
    machine.launch()
    assert machine.process is not None
    pid = machine.process.pid
    machine.release()  # as if we were gone
    assert lightvm.status() == {"w": "incomplete"}
    # Its QEMU is alive: list and info show its PID (found by the NoXS path), not "-"/None.
    assert [vm["pid"] for vm in lightvm.list()] == [pid]
    table = lightvm.ok("list").out.splitlines()[1].split()
    assert table[:3] == ["w", "incomplete", str(pid)], table
    info = lightvm.ok("info", "w").out
    assert f"\npid:{' ' * 9}{pid}\n" in info and "None" not in info, info
    lightvm.ok("destroy", "w")
    assert wait_until(lambda: proc_start_time(pid) is None, 10)
    assert lightvm.leftovers() == []


def _fake_pvh_elf(path: Path) -> Path:
    """A valid ELF64 with the PVH note but no code: QEMU loads it, the guest faults at once."""
    import struct

    name = b"Xen\0"
    note = struct.pack("<III", len(name), 4, 18) + name + struct.pack("<I", 0x100000)
    ehdr = bytearray(64)
    ehdr[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHI", ehdr, 16, 2, 62, 1)
    struct.pack_into("<Q", ehdr, 32, 64)
    struct.pack_into("<HHH", ehdr, 52, 64, 56, 1)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(note), len(note), 4)
    path.write_bytes(bytes(ehdr) + phdr + note)
    return path


def test_guest_dying_during_boot_is_one_line_and_leaves_nothing(lightvm: Any, tmp_path: Path) -> None:
    _fake_pvh_elf(tmp_path / "crash.elf")
    cfg = tmp_path / "crash.toml"
    cfg.write_text('kernel = "crash.elf"\n')
    result = lightvm.run("create", str(cfg), "--accel", "tcg", "--timeout", "5")
    assert result.code == 1, result.out
    assert result.err.count("\n") == 1 and result.err.startswith("lightvm: error: crash: "), result.err
    assert lightvm.vm_dirs() == [] and lightvm.leftovers() == []


def test_qemu_refusing_to_start_is_one_line_and_leaves_nothing(lightvm: Any, tmp_path: Path) -> None:
    """QEMU's own startup error (exit 1 before any guest code) is reported with QEMU's words."""
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'qemu-system-x86_64: -device ivshmem-plain: something is wrong' >&2\nexit 1\n")
    fake.chmod(0o755)
    lightvm.env["LIGHTVM_QEMU"] = str(fake)
    lightvm.env["LIGHTVM_JAIL"] = "off"  # the fake is no QEMU: no seccomp probe (nor its note)
    result = lightvm.run("create", str(NOOP), "--accel", "tcg", "--timeout", "5")
    del lightvm.env["LIGHTVM_QEMU"], lightvm.env["LIGHTVM_JAIL"]
    assert result.code == 1, result.out
    assert result.err.count("\n") == 1, result.err
    assert result.err.startswith("lightvm: error: noop: "), result.err
    assert "QEMU exited while starting" in result.err and "something is wrong" in result.err, result.err
    assert lightvm.vm_dirs() == [] and lightvm.leftovers() == []

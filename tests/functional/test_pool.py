"""The pool: creates through lightvmd take prepared shells (path: pool), never reuse one,
refill in the background within the size and memory bounds, and fall back to the cold path."""

from __future__ import annotations

import ctypes
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from daemonlib import NOOP, Lightvmd, wait_pool

from lightvm.daemon.pool import SHELL_OVERHEAD_MIB
from lightvm.noxs import BootState, DevicePage, NoxsRegion
from lightvm.util import proc_alive

pytestmark = pytest.mark.functional
REPO = Path(__file__).resolve().parents[2]
DAYTIME = REPO / "examples" / "daytime.toml"


def page_identity(noxs_path: str) -> tuple[str, str]:
    with NoxsRegion.open(Path(noxs_path)) as region:
        page = DevicePage.from_buffer_copy(region.raw()[: ctypes.sizeof(DevicePage)])
    return page.name.decode(), str(uuid.UUID(bytes=bytes(page.uuid)))


def test_create_takes_a_shell_and_reaches_ready(lightvmd: Lightvmd) -> None:
    lightvmd.start(size=2)
    wait_pool(lightvmd, 2)
    shells = {s["id"]: s for s in lightvmd.shell_records()}
    vm = lightvmd.create("p1")
    assert vm["path"] == "pool" and vm["app"] == "noop" and vm["accel"] == "tcg"
    assert vm["id"] in shells and vm["pid"] == shells[vm["id"]]["pid"]  # the shell's own QEMU
    assert vm["boot_ms"]["ready"] > 0
    info = lightvmd.call("info", {"name": "p1"})
    assert info["status"] == "running" and info["guest"]["state"] == "READY" and info["guest"]["app"] == "noop"
    assert info["spec"]["name"] == "p1" and info["devices"]["pool"]["shell"] == vm["id"]
    assert page_identity(info["noxs_path"]) == ("p1", info["uuid"])
    lightvmd.call("destroy", {"names": ["p1"]})
    assert not proc_alive(vm["pid"], None) and not Path(info["noxs_path"]).exists()


def test_shells_are_never_reused_identity_is_fresh(lightvmd: Lightvmd) -> None:
    lightvmd.start(size=2)
    wait_pool(lightvmd, 2)
    vms = []
    for i in range(4):
        wait_pool(lightvmd, 2)  # every create finds a full pool: all four go through it
        vms.append(lightvmd.create(f"v{i}"))
    assert [vm["path"] for vm in vms] == ["pool"] * 4
    infos = [lightvmd.call("info", {"name": vm["name"]}) for vm in vms]
    assert len({vm["id"] for vm in vms}) == 4 and len({vm["pid"] for vm in vms}) == 4
    assert len({i["uuid"] for i in infos}) == 4 and len({i["noxs_path"] for i in infos}) == 4
    for info in infos:
        assert page_identity(info["noxs_path"]) == (info["name"], info["uuid"])
    stats = wait_pool(lightvmd, 2)
    assert stats["taken"] == 4 and stats["prepared"] >= 6
    remaining = {s["id"] for s in lightvmd.shell_records()}
    assert not remaining & {vm["id"] for vm in vms}  # a taken shell never comes back
    lightvmd.call("destroy", {"all": True})


def test_refill_after_takes(lightvmd: Lightvmd) -> None:
    lightvmd.start(size=3)
    wait_pool(lightvmd, 3)
    before = {s["id"] for s in lightvmd.shell_records()}
    lightvmd.create("r1")
    lightvmd.create("r2")
    stats = wait_pool(lightvmd, 3)
    after = {s["id"] for s in lightvmd.shell_records()}
    assert len(after) == 3 and len(after - before) >= 2
    assert stats["prepared"] >= 5 and stats["taken"] == 2


def test_size_and_memory_bounds(lightvmd: Lightvmd) -> None:
    # noop is a 4 MiB guest: a shell counts 4 + SHELL_OVERHEAD_MIB. The budget fits two.
    cost = 4 + SHELL_OVERHEAD_MIB
    lightvmd.start("--pool-memory", str(2 * cost + cost // 2), size=5)
    stats = wait_pool(lightvmd, 2)
    assert stats["memory_committed_mib"] == 2 * cost <= stats["memory_budget_mib"]
    assert len(lightvmd.shell_records()) == 2
    lightvmd.create("m1")
    stats = wait_pool(lightvmd, 2)
    assert len(lightvmd.shell_records()) == 2
    lightvmd.stop()
    lightvmd.start("--pool-max", "1", size=5)
    wait_pool(lightvmd, 1)
    assert len(lightvmd.shell_records()) == 1
    lightvmd.call("destroy", {"all": True})


def test_cold_path_when_no_shell_fits(lightvmd: Lightvmd) -> None:
    lightvmd.start(size=1)
    wait_pool(lightvmd, 1)
    # A flavour the pool does not keep (other memory size), and pool=false: both cold.
    spec = lightvmd.state_dir.parent / "noop8.toml"
    spec.write_text(
        NOOP.read_text().replace('memory = "4M"', 'memory = "8M"').replace("../images", str(REPO / "images"))
    )
    assert lightvmd.create("c1", config=spec)["path"] == "cold"
    assert lightvmd.create("c2", pool=False)["path"] == "cold"
    assert lightvmd.pool_stats()["flavours"][0]["ready"] == 1  # untouched
    # A VM with a vif is cold too (pre-created taps are not implemented).
    vm = lightvmd.create("d1", config=DAYTIME)
    assert vm["path"] == "cold" and vm["app"] == "daytime"
    # -n through the pool: each VM takes a shell while there is one, then cold.
    vms = lightvmd.call("create", {"config": str(NOOP), "name": "n", "count": 3, "accel": "tcg"}, timeout=120)
    assert [v["name"] for v in vms] == ["n-0", "n-1", "n-2"] and vms[0]["path"] == "pool"
    assert all(v["path"] in ("pool", "cold") for v in vms)
    lightvmd.seen_ids.update(v["id"] for v in vms)
    lightvmd.call("destroy", {"all": True})


def test_name_taken_discards_the_shell(lightvmd: Lightvmd) -> None:
    from lightvm.errors import ExistsError

    lightvmd.start(size=1)
    wait_pool(lightvmd, 1)
    first = lightvmd.create("dup")
    wait_pool(lightvmd, 1)
    (shell,) = lightvmd.shell_records()
    with pytest.raises(ExistsError, match="already exists"):
        lightvmd.create("dup")
    assert not proc_alive(shell["pid"], shell["pid_start"]) and not Path(shell["noxs_path"]).exists()
    # The refusal comes while the shell's guest wakes (no devices: execute checks under the
    # state lock then); the VM that has the name is untouched.
    (vm,) = [v for v in lightvmd.call("list") if v["name"] == "dup"]
    assert vm["status"] == "running" and vm["id"] == first["id"] and proc_alive(first["pid"], None)
    lightvmd.call("destroy", {"all": True})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(pid: int, window: float) -> float:
    """CPU seconds ``pid`` used per second of host time over ``window`` s (a host under load only lowers it)."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def test_waiting_shells_sleep_at_the_wait_point_until_their_bell(lightvmd: Lightvmd) -> None:
    lightvmd.start(size=1)  # default variant: waiting, asleep on the console bell
    stats = wait_pool(lightvmd, 1)
    assert stats["variant"] == "waiting" and stats["flavours"][0]["variant"] == "waiting"
    (shell,) = lightvmd.shell_records()
    with NoxsRegion.open(Path(shell["noxs_path"])) as region:
        assert region.boot_state() == BootState.WAITING_BELL
        assert region.boot_record().heartbeat >= 1  # the rehearsal ring at prepare woke it once
        assert page_identity(shell["noxs_path"])[1] == str(uuid.UUID(int=0))  # no identity yet
    # Asleep, not spinning: its QEMU runs (no QMP stop) yet costs next to no CPU.
    assert _cpu_share(shell["pid"], 1.0) < 0.3  # a spinning vCPU would use all of its share
    vm = lightvmd.create("w1")
    assert vm["path"] == "pool" and vm["id"] == shell["id"]
    info = lightvmd.call("info", {"name": "w1"})
    assert info["guest"]["state"] == "READY" and page_identity(info["noxs_path"]) == ("w1", info["uuid"])
    # The console still lands in console.log (through the pipe chardev's output side).
    console = Path(info["console"])
    assert console.is_file() and not console.is_symlink() and "READY noop" in console.read_text()
    lightvmd.stop()
    lightvmd.start("--pool-variant", "stopped", size=1)
    wait_pool(lightvmd, 1)
    (shell,) = lightvmd.shell_records()
    with NoxsRegion.open(Path(shell["noxs_path"])) as region:
        assert region.boot_state() == BootState.WAITING  # there, spinning, and stopped by QMP
    assert _cpu_share(shell["pid"], 1.0) < 0.3
    vm = lightvmd.create("s1")
    assert vm["path"] == "pool" and lightvmd.call("info", {"name": "s1"})["guest"]["state"] == "READY"
    lightvmd.stop()
    lightvmd.start("--pool-variant", "paused", size=1)
    stats = wait_pool(lightvmd, 1)
    assert stats["flavours"][0]["variant"] == "paused"
    (shell,) = lightvmd.shell_records()
    with NoxsRegion.open(Path(shell["noxs_path"])) as region:
        assert region.boot_state() == BootState.UNKNOWN  # the guest never ran
    vm = lightvmd.create("p1")
    assert vm["path"] == "pool" and vm["app"] == "noop"
    lightvmd.call("destroy", {"all": True})


def test_concurrent_creates_share_the_pool_without_reuse(lightvmd: Lightvmd) -> None:
    import threading

    lightvmd.start(size=3)
    wait_pool(lightvmd, 3)
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[f"c{i}"] = lightvmd.create(f"c{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 8
    paths = [vm["path"] for vm in results.values()]
    # Three shells were ready before the first request: each is taken by one of them.
    assert paths.count("pool") >= 3 and set(paths) <= {"pool", "cold"}, paths
    assert len({vm["pid"] for vm in results.values()}) == 8 and len({vm["id"] for vm in results.values()}) == 8
    listed = {vm["name"]: vm["status"] for vm in lightvmd.call("list")}
    assert listed == dict.fromkeys(results, "running")
    for name in results:
        info = lightvmd.call("info", {"name": name})
        assert page_identity(info["noxs_path"]) == (name, info["uuid"])
    lightvmd.call("destroy", {"all": True})


def test_a_vm_from_a_bell_shell_saves_and_restores_like_any_other(lightvmd: Lightvmd, tmp_path: Path) -> None:
    """The console pipe (the bell) is a chardev, not a device: the saved VM restores into
    a QEMU with the usual file console, and keeps running from where it was."""
    lightvmd.start(size=1)
    wait_pool(lightvmd, 1)
    vm = lightvmd.create("b1")
    assert vm["path"] == "pool"
    record = json.loads((lightvmd.state_dir / "vms" / "b1" / "vm.json").read_text())
    assert any(a.startswith("pipe,id=con,") for a in record["argv"])
    beat = lightvmd.call("info", {"name": "b1"})["guest"]["heartbeat"]
    ckpt = tmp_path / "b1.lvm"
    saved = lightvmd.cli("save", "b1", str(ckpt))
    assert saved.returncode == 0, saved.stderr
    restored = lightvmd.cli("restore", str(ckpt))
    assert restored.returncode == 0, restored.stderr
    info = lightvmd.call("info", {"name": "b1"})
    assert info["status"] == "running" and info["guest"]["state"] == "READY" and info["guest"]["heartbeat"] >= beat
    record = json.loads((lightvmd.state_dir / "vms" / "b1" / "vm.json").read_text())
    assert any(a.startswith("file,id=con,") for a in record["argv"])
    lightvmd.call("destroy", {"all": True})

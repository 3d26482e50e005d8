"""The VM lifecycle through the `lightvm` CLI, with real noop guests under TCG."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lightvm.state import noxs_file
from lightvm.util import proc_start_time

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
NOOP = REPO / "examples" / "noop.toml"
BOOT_KEYS = ("qemu_up", "resumed", "guest_entry", "devices_up", "ready")


def test_create_json_reports_the_boot_breakdown(lightvm: Any) -> None:
    t0 = time.monotonic()
    (vm,) = lightvm.create(NOOP)
    wall_ms = (time.monotonic() - t0) * 1000
    assert vm["name"] == "noop" and vm["accel"] == "tcg" and vm["app"] == "noop"
    boot = vm["boot_ms"]
    assert set(boot) == set(BOOT_KEYS)
    assert all(isinstance(boot[k], float) and boot[k] > 0 for k in BOOT_KEYS), boot
    # Milestones in order (the guest's are anchored at READY, so they cannot pass it).
    assert boot["qemu_up"] <= boot["ready"] and boot["guest_entry"] <= boot["devices_up"] <= boot["ready"]
    assert boot["ready"] < wall_ms  # measured inside the command, so never longer than it
    assert proc_start_time(vm["pid"]) is not None  # QEMU outlives the CLI that created it
    assert lightvm.status() == {"noop": "running"}


def test_create_text_output(lightvm: Any) -> None:
    out = lightvm.ok("create", str(NOOP), "--accel", "tcg", "--name", "t1").out
    assert "READY in" in out
    for label in ("QEMU up", "vCPU resumed", "guest entry", "devices up", "READY"):
        assert label in out


def test_create_auto_says_why_tcg(lightvm: Any) -> None:
    """--accel auto falling back to tcg: one stderr line with the verdict's reason, and accel_reason in JSON."""
    from lightvm import accel

    if accel.kvm_open_error() is None and not accel.PVM_MODULE.exists():
        pytest.skip("kvm may be usable here: auto would probe, not fall back without one")
    reason = accel.select("auto").reason
    r = lightvm.ok("create", str(NOOP), "--accel", "auto", "--name", "auto1")
    assert f"accel: tcg ({reason})" in r.err.splitlines(), r.err
    assert r.out.splitlines()[0].startswith("auto1: noop READY in ") and "(tcg, pid " in r.out
    (vm,) = lightvm.create(NOOP, "--accel", "auto", "--name", "auto2")
    assert vm["accel"] == "tcg" and vm["accel_reason"] == reason


def test_list_info_console(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    (entry,) = lightvm.list()
    assert entry["name"] == "noop" and entry["status"] == "running" and entry["pid"] == noop_vm["pid"]
    assert entry["memory_mib"] == 4 and entry["vcpus"] == 1 and entry["accel"] == "tcg"
    table = lightvm.ok("list").out
    assert "noop" in table and "running" in table
    info = json.loads(lightvm.ok("info", "noop", "--json").out)
    assert info["qemu_status"] == "running" and info["guest"]["state"] == "READY" and info["guest"]["app"] == "noop"
    assert info["guest"]["tsc_source"] == "PAGE"  # the host's TSC hint was used: no calibration
    assert "READY noop" in lightvm.ok("console", "noop").out


def test_pause_unpause(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    out = lightvm.ok("pause", "noop").out
    assert "paused in" in out
    assert lightvm.status() == {"noop": "paused"}
    assert json.loads(lightvm.ok("info", "noop", "--json").out)["qemu_status"] == "paused"
    assert lightvm.run("pause", "noop").code == 1  # already paused: a one-line state error
    lightvm.ok("unpause", "noop")
    assert lightvm.status() == {"noop": "running"}
    assert json.loads(lightvm.ok("info", "noop", "--json").out)["qemu_status"] == "running"


def test_destroy_leaves_nothing(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    pid = noop_vm["pid"]
    lightvm.ok("destroy", "noop")
    assert proc_start_time(pid) is None
    assert lightvm.leftovers() == []
    assert lightvm.list() == []


def test_shutdown_through_noxs(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    from lightvm.noxs import BootState, NoxsRegion

    # Keep the page mapped across the destroy: the guest's own boot record proves that it
    # powered off (HALTED, poweroff acknowledged), rather than QEMU merely being gone.
    with NoxsRegion.open(noxs_file(noop_vm["id"])) as region:
        out = lightvm.ok("shutdown", "noop").out
        assert region.boot_record().state == BootState.HALTED
    assert "powered off in" in out
    assert proc_start_time(noop_vm["pid"]) is None
    assert lightvm.list() == []
    assert lightvm.leftovers() == []


def _halted_by_poweroff(lightvm: Any, name: str) -> None:
    """The kept VM was powered off by its guest: halted, boot record HALTED, POWEROFF last on its console."""
    from lightvm.noxs import BootState, NoxsRegion

    assert lightvm.status() == {name: "halted"}
    info = json.loads(lightvm.ok("info", name, "--json").out)
    assert info["exit_reason"] == "shutdown", info
    with NoxsRegion.open(Path(info["noxs_path"])) as region:
        assert region.boot_record().state == BootState.HALTED
    assert lightvm.ok("console", name).out.splitlines()[-1] == "POWEROFF"


def test_shutdown_keep_then_destroy(lightvm: Any) -> None:
    lightvm.create(NOOP, "--name", "k")
    lightvm.ok("shutdown", "k", "--keep")
    _halted_by_poweroff(lightvm, "k")
    lightvm.ok("destroy", "k")
    assert lightvm.list() == []


def test_shutdown_of_a_paused_vm(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    lightvm.ok("pause", "noop")
    lightvm.ok("shutdown", "noop", "--keep")
    _halted_by_poweroff(lightvm, "noop")
    lightvm.ok("destroy", "noop")
    assert lightvm.list() == []
    assert lightvm.leftovers() == []


def test_guest_poweroff_by_itself_is_halted(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    """A guest that powers off on its own (here: asked through its page directly) is listed as halted."""
    from lightvm.errors import QMPError
    from lightvm.noxs import NoxsRegion, Sysctl
    from lightvm.qmp import connect_and_negotiate
    from lightvm.util import wait_until

    with NoxsRegion.open(noxs_file(noop_vm["id"])) as region:
        region.request(Sysctl.POWEROFF)
    # The idle guest is tickless: an NMI (not lightvm's shutdown path) makes it look.
    qmp = connect_and_negotiate(lightvm.state_dir / "vms" / "noop" / "qmp.sock", timeout=10)
    try:
        qmp.execute("inject-nmi")  # wait for it: a closed socket may drop an unread command
    except QMPError:
        if not qmp.closed_by_peer:
            raise  # only this is expected: the guest powered off and QEMU exited before its reply
    finally:
        qmp.close()
    assert wait_until(lambda: proc_start_time(noop_vm["pid"]) is None, timeout=10)
    assert lightvm.status() == {"noop": "halted"}


def test_many_vms_with_n(lightvm: Any) -> None:
    vms = lightvm.create(NOOP, "-n", "50", "--name", "many")
    assert sorted(vm["name"] for vm in vms) == sorted(f"many-{i}" for i in range(50))
    assert all(vm["boot_ms"]["ready"] for vm in vms)
    status = lightvm.status()
    assert len(status) == 50 and set(status.values()) == {"running"}
    lightvm.ok("destroy", "--all", timeout=300)
    assert lightvm.leftovers() == []


def test_state_dirs_are_separate(
    lightvm: Any, noop_vm: dict[str, Any], tmp_path: Path, make_lightvm: Callable[[Path], Any]
) -> None:
    other = make_lightvm(tmp_path / "other-state")
    assert other.list() == []
    # The same name in another state dir is fine and does not touch the first VM.
    (vm,) = other.create(NOOP)
    try:
        assert vm["name"] == "noop" and lightvm.status() == {"noop": "running"}
    finally:
        other.ok("destroy", "noop")
    assert other.leftovers() == []


def test_sigterm_mid_create_unwinds(lightvm: Any) -> None:
    """A polite kill of the CLI while it creates removes what it made (no destroy needed)."""
    from lightvm.util import wait_until

    proc = lightvm.popen("create", str(NOOP), "--accel", "tcg", "-n", "20", "-j", "1", "--name", "t")
    try:
        assert wait_until(lambda: len(lightvm.vm_dirs()) == 20 and lightvm.status().get("t-3") == "running", 60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode != 0
    lightvm.remember_ids()
    assert lightvm.list() == []
    assert lightvm.leftovers() == []


def test_env_var_selects_the_state_dir(lightvm: Any) -> None:
    import subprocess
    import sys

    env = dict(lightvm.env, LIGHTVM_STATE_DIR=str(lightvm.state_dir))
    proc = subprocess.run(
        [sys.executable, "-m", "lightvm.cli", "create", str(NOOP), "--accel", "tcg", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert lightvm.status() == {"noop": "running"}
    assert os.path.isdir(lightvm.state_dir / "vms" / "noop")


def test_state_dir_longer_than_a_unix_socket_path(tmp_path: Path, make_lightvm: Callable[[Path], Any]) -> None:
    """AF_UNIX paths stop at 108 bytes; a deep --state-dir must still work end to end."""
    deep = make_lightvm(tmp_path / ("d" * 60) / ("e" * 60) / "state")
    deep.create(NOOP)
    try:
        assert len(str(deep.state_dir / "vms" / "noop" / "qmp.sock")) > 108
        deep.ok("pause", "noop")
        deep.ok("unpause", "noop")
        deep.ok("shutdown", "noop")
    finally:
        deep.run("destroy", "--all")
    assert deep.leftovers() == []

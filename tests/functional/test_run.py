"""`lightvm run`: create + console + destroy in one command (lightvm/cli/run.py).

The VM lives as long as the command: Ctrl-C, the guest's poweroff and QEMU's death each end
it and leave no VM; -d leaves it running and prints its name. Real noop guests under TCG.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from netclient import free_port, read_daytime
from test_console_follow import read_until

from lightvm.errors import QMPError
from lightvm.instance import attach
from lightvm.noxs import NoxsRegion, Sysctl
from lightvm.state import VMDir
from lightvm.util import wait_until

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]


def vms(lightvm: Any) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = lightvm.ok("list", "--json").json()
    return listed


def start_run(lightvm: Any, *args: str) -> Any:
    proc = lightvm.popen("run", "noop", "--accel", "tcg", *args)
    try:
        read_until(proc, "READY noop\n", timeout=60)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    return proc


def finish(proc: Any, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_ctrl_c_destroys_the_vm(lightvm: Any) -> None:
    proc = start_run(lightvm)
    (vm,) = vms(lightvm)
    assert vm["status"] == "running" and vm["name"] == "noop"
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert "its console follows; Ctrl-C destroys it" in err
    assert vms(lightvm) == []


def test_sigterm_destroys_the_vm(lightvm: Any) -> None:
    proc = start_run(lightvm)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err
    assert vms(lightvm) == []


def power_off_from_inside(state_dir: Path, name: str) -> None:
    """Make the guest power off as if on its own: the NoXS sysctl request and the NMI that
    wakes it, as ``lightvm shutdown`` sends them, but without a second lightvm process
    that would also rewrite the VM's folder (``shutdown --keep`` writing its halted record
    while ``run`` removes the folder is a race of two writers, not what is tested here)."""
    vmdir = VMDir(state_dir / "vms" / name)
    record = vmdir.read()
    assert record is not None
    with NoxsRegion.open(Path(record.noxs_path)) as region:
        region.request(Sysctl.POWEROFF)
    machine = attach(vmdir, record, paused=False)
    try:
        machine.qmp.execute("inject-nmi", timeout=5.0)
    except QMPError:
        pass  # it may be exiting already
    finally:
        machine.release()


def test_the_guests_poweroff_ends_the_command_with_status_0(lightvm: Any) -> None:
    proc = start_run(lightvm)
    power_off_from_inside(lightvm.state_dir, "noop")
    code, out, err = finish(proc)
    assert code == 0, err
    assert "POWEROFF" in out
    assert vms(lightvm) == []


def test_qemus_death_ends_the_command_with_the_reason(lightvm: Any) -> None:
    proc = start_run(lightvm)
    pid = lightvm.ok("info", "noop", "--json").json()["pid"]
    os.kill(pid, signal.SIGKILL)
    code, _, err = finish(proc)
    assert code == 1, err
    assert "lightvm: error: noop: crashed: QEMU exited unexpectedly; the VM was destroyed" in err
    assert vms(lightvm) == []


def test_detach_leaves_it_running_and_names_are_made_unique(lightvm: Any) -> None:
    first = lightvm.ok("run", "noop", "memory=8M", "--accel", "tcg", "-d")
    second = lightvm.ok("run", "noop", "--vcpus", "2", "--cmdline", "x y", "--accel", "tcg", "-d")
    assert (first.out, second.out) == ("noop\n", "noop-2\n")
    listed = {v["name"]: v for v in vms(lightvm)}
    assert {n: (v["status"], v["memory_mib"], v["vcpus"]) for n, v in listed.items()} == {
        "noop": ("running", 8, 1),
        "noop-2": ("running", 4, 2),
    }
    assert lightvm.ok("info", "noop-2", "--json").json()["spec"]["cmdline"] == "x y"


def test_an_image_of_the_image_store_is_found_by_name(lightvm: Any, tmp_path: Path, images: Path) -> None:
    """STORE/NAME/NAME.toml with its report.json, as `lightvm image build` leaves an image."""
    store = tmp_path / "images"
    folder = store / "tiny"
    folder.mkdir(parents=True)
    (folder / "tiny.toml").write_text(f'kernel = "{images / "noop.elf"}"\nmemory = "6M"\n')
    (folder / "report.json").write_text(json.dumps({"app": {"package": "noop"}}))
    lightvm.env["LIGHTVM_IMAGE_DIR"] = str(store)
    assert lightvm.ok("run", "tiny", "--accel", "tcg", "-d").out == "tiny\n"
    (vm,) = vms(lightvm)
    assert (vm["name"], vm["memory_mib"]) == ("tiny", 6)


def test_errors_come_before_any_vm(lightvm: Any, tmp_path: Path) -> None:
    lightvm.env["LIGHTVM_IMAGE_DIR"] = str(tmp_path / "empty")
    missing = lightvm.run("run", "nosuchthing")
    assert missing.code == 1
    assert "no image 'nosuchthing'" in missing.err and "no example of that name (daytime, noop)" in missing.err
    bad = lightvm.run("run", "noop", "--memory", "64X")
    assert bad.code == 1 and "override memory='64X': cannot parse size" in bad.err
    assert vms(lightvm) == []


def test_run_through_lightvmd_follows_and_destroys(lightvmd: Any) -> None:
    """The create (with its overrides) and the destroy go through lightvmd; the console
    is the VM's file, read by the command."""
    lightvmd.start(pool=None)
    proc = start_run(lightvmd.lv, "vcpus=2")
    try:
        (vm,) = lightvmd.call("list")
        assert (vm["name"], vm["vcpus"]) == ("noop", 2)
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert code == 130 and "via lightvmd" in err, err
    assert lightvmd.call("list") == []
    kinds = [e["event"] for e in lightvmd.call("events", {"vm": "noop"})]
    assert kinds == ["created", "ready", "destroyed"]


def test_run_publishes_a_port(lightvm: Any) -> None:
    port = free_port()
    assert lightvm.ok("run", "daytime", "--publish", f"127.0.0.1:{port}:13", "--accel", "tcg", "-d").out == "daytime\n"
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)

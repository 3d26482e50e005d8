"""lightvmd killed (SIGKILL) in the middle of a create: the client fails with an error,
the half-made VM is listed `incomplete`, and destroy removes every trace of it (QEMU,
NoXS file, folder) - through a restarted daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from daemonlib import Lightvmd

from lightvm.state import noxs_file
from lightvm.util import proc_alive, wait_until

pytestmark = pytest.mark.functional


def test_kill9_mid_create(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    # stall never reports READY: the create is reliably in flight when the daemon dies.
    config = tmp_path / "stall.toml"
    config.write_text(f'name = "stall"\nkernel = "{images / "stall.elf"}"\nmemory = "4M"\n')
    lightvmd.start(pool=None)
    argv = ["create", str(config), "--accel", "tcg", "--timeout", "120"]
    client = subprocess.Popen(
        [sys.executable, "-m", "lightvm.cli", "--state-dir", str(lightvmd.state_dir), *argv],
        env=lightvmd.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        vmdir = lightvmd.state_dir / "vms" / "stall"

        def qemu_pid() -> int | None:
            try:
                pid = json.loads((vmdir / "vm.json").read_text()).get("pid")
            except (OSError, ValueError):
                return None
            return int(pid) if pid and (vmdir / "creating").exists() else None

        pid = wait_until(qemu_pid, timeout=60.0, interval=0.01, max_interval=0.1)
        assert pid is not None, "the create never got as far as a QEMU"
        vm_id = json.loads((vmdir / "vm.json").read_text())["id"]
        lightvmd.seen_ids.add(vm_id)
        lightvmd.kill9()
        _, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
    assert client.returncode != 0
    assert err.strip(), "the client failed without saying why"

    lightvmd.start(pool=None)
    (listed,) = lightvmd.call("list")
    assert listed["name"] == "stall" and listed["status"] == "incomplete", listed
    r = lightvmd.cli("destroy", "stall")
    assert r.returncode == 0, r.stderr
    assert lightvmd.call("list") == []
    assert wait_until(lambda: not proc_alive(pid, None), timeout=10.0)
    assert not noxs_file(vm_id).exists()
    assert not vmdir.exists()

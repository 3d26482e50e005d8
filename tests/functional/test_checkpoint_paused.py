"""save/restore of a paused VM: it is restored paused (docs/checkpoint.md), its guest
continues where it stopped once unpaused, and shuts down cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.functional


def qemu_status(lightvm: Any, name: str) -> str:
    return str(json.loads(lightvm.ok("info", name, "--json").out)["qemu_status"])


def test_paused_vm_is_saved_and_restored_paused(lightvm: Any, noop_vm: dict[str, Any], tmp_path: Path) -> None:
    lightvm.ok("pause", "noop")
    ckpt = tmp_path / "noop.ckpt"
    lightvm.ok("save", "noop", str(ckpt))
    assert ckpt.stat().st_size > 0 and lightvm.list() == []
    restored = json.loads(lightvm.ok("restore", str(ckpt), "--name", "back", "--json").out)
    assert restored["name"] == "back"
    assert lightvm.status() == {"back": "paused"}
    assert qemu_status(lightvm, "back") == "paused"
    lightvm.ok("unpause", "back")
    assert lightvm.status() == {"back": "running"}
    info = json.loads(lightvm.ok("info", "back", "--json").out)
    assert info["qemu_status"] == "running" and info["guest"]["state"] == "READY"
    # The restored guest serves its sysctl page: a real poweroff, not a kill.
    lightvm.ok("shutdown", "--keep", "back")
    assert lightvm.status() == {"back": "halted"}
    assert lightvm.ok("console", "back").out.rstrip().endswith("POWEROFF")


def test_paused_vm_saved_with_keep_running_stays_paused(lightvm: Any, noop_vm: dict[str, Any], tmp_path: Path) -> None:
    lightvm.ok("pause", "noop")
    lightvm.ok("save", "--keep-running", "noop", str(tmp_path / "noop.ckpt"))
    assert lightvm.status() == {"noop": "paused"}
    # QEMU's runstate after a migration stream went out of a stopped VM: vCPUs still stopped.
    assert qemu_status(lightvm, "noop") == "postmigrate"
    lightvm.ok("unpause", "noop")
    assert qemu_status(lightvm, "noop") == "running"
    lightvm.ok("shutdown", "--keep", "noop")
    assert lightvm.ok("console", "noop").out.rstrip().endswith("POWEROFF")

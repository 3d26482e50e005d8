"""Restore through lightvmd from a prepared ``-incoming defer`` shell (lightvm/daemon/restore_pool.py):
the daytime guest continues (no reboot) with its forward and MAC although the shell was
spawned without them; failures consume the shell and leave nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Lightvmd
from netclient import free_port, read_daytime

from lightvm.state import noxs_file
from lightvm.util import wait_until

pytestmark = pytest.mark.functional

DAYTIME = Path(__file__).resolve().parents[2] / "examples" / "daytime.toml"


def _incoming_ready(d: Lightvmd) -> int:
    return sum(f["ready"] for f in d.call("ping")["incoming"] if not f["preparing"])


def _daytime(d: Lightvmd, name: str = "day") -> int:
    port = free_port()
    d.create(name, DAYTIME, publish=[f"127.0.0.1:{port}:13"])
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    return port


def _guest(d: Lightvmd, name: str) -> dict[str, Any]:
    return dict(d.call("info", {"name": name})["guest"])


def _restore(d: Lightvmd, ckpt: Path, *args: str) -> dict[str, Any]:
    r = d.cli("restore", str(ckpt), "--json", *args)
    assert r.returncode == 0 and "via lightvmd" in r.stderr, r.stderr
    return dict(json.loads(r.stdout))


def test_restore_from_prepared_shell(lightvmd: Lightvmd, tmp_path: Path) -> None:
    lightvmd.start("--incoming-size", "1", pool=None)
    port = _daytime(lightvmd)
    record = json.loads((lightvmd.state_dir / "vms" / "day" / "vm.json").read_text())
    mac = next(a for a in record["argv"] if a.startswith("virtio-net")).split("mac=")[1]
    first, second = tmp_path / "1.lvm", tmp_path / "2.lvm"
    assert lightvmd.cli("save", "day", str(first)).returncode == 0
    cold = _restore(lightvmd, first)
    assert cold["path"] == "cold"  # a kind this daemon had not seen: it learns it now
    assert wait_until(lambda: _incoming_ready(lightvmd) == 1, timeout=30)
    shell = next(r for r in lightvmd.shell_records())
    assert "mac=" not in " ".join(shell["argv"]) and "hostfwd" not in " ".join(shell["argv"])

    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    # Two requests answered (one per life); the guest counts each just after its reply.
    before = wait_until(lambda: (g := _guest(lightvmd, "day"))["app_counter"] >= 2 and g, timeout=10)
    assert before and before["app_counter"] == 2
    assert lightvmd.cli("save", "day", str(second)).returncode == 0
    warm = _restore(lightvmd, second)
    assert warm["path"] == "pool" and warm["name"] == "day" and not warm["paused"]
    assert warm["app_counter"] == before["app_counter"] and warm["heartbeat"] >= before["heartbeat"]
    # The forward came back (hostfwd_add) and the guest's frames reach it (its MAC migrated).
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    # (the guest counts the request after its reply: poll)
    after = wait_until(lambda: (g := _guest(lightvmd, "day"))["app_counter"] > before["app_counter"] and g, timeout=10)
    assert after and after["app_counter"] == before["app_counter"] + 1 and after["state"] == "READY"
    record = json.loads((lightvmd.state_dir / "vms" / "day" / "vm.json").read_text())
    assert f"mac={mac}" in " ".join(record["argv"])  # a later save carries the VM's own MAC
    assert record["id"] == shell["id"]  # the shell became the VM
    console = (lightvmd.state_dir / "vms" / "day" / "console.log").read_text(errors="replace")
    assert "READY" not in console  # restored, not booted
    # The pool refills, and the next restore is as fast.
    assert wait_until(lambda: _incoming_ready(lightvmd) == 1, timeout=30)
    lightvmd.call("destroy", {"names": ["day"]})


def test_incoming_flag_prepares_at_start_and_failures_consume_the_shell(lightvmd: Lightvmd, tmp_path: Path) -> None:
    lightvmd.start(pool=None)
    _daytime(lightvmd)
    ckpt = tmp_path / "d.lvm"
    assert lightvmd.cli("save", "day", str(ckpt), "--keep-running").returncode == 0
    lightvmd.stop()
    lightvmd.start("--incoming", str(ckpt), pool=None)
    assert wait_until(lambda: _incoming_ready(lightvmd) == 1, timeout=30)
    # The name is taken (the VM kept running): refused, the shell is used up, nothing is left of it.
    shell_id = lightvmd.shell_records()[0]["id"]
    taken = lightvmd.cli("restore", str(ckpt))
    assert taken.returncode == 1 and "already exists" in taken.stderr, taken.stderr
    assert not noxs_file(shell_id).exists()
    assert lightvmd.call("list")[0]["name"] == "day"
    # A bad file: refused before any shell is touched.
    bad = tmp_path / "bad.lvm"
    bad.write_bytes(b"not a checkpoint at all")
    refused = lightvmd.cli("restore", str(bad))
    assert refused.returncode == 1 and "not a lightvm checkpoint" in refused.stderr
    # Another name, but "day" still holds the host port of the forward: refused, saying so.
    assert wait_until(lambda: _incoming_ready(lightvmd) == 1, timeout=30)
    busy = lightvmd.cli("restore", str(ckpt), "--name", "copy")
    assert busy.returncode == 1 and "Could not set up host forwarding" in busy.stderr, busy.stderr
    assert [vm["name"] for vm in lightvmd.call("list")] == ["day"]
    lightvmd.call("destroy", {"names": ["day"]})
    assert wait_until(lambda: _incoming_ready(lightvmd) == 1, timeout=30)
    warm = _restore(lightvmd, ckpt, "--name", "copy")
    assert warm["path"] == "pool" and warm["name"] == "copy"
    assert {vm["name"]: vm["status"] for vm in lightvmd.call("list")} == {"copy": "running"}
    lightvmd.call("destroy", {"all": True})

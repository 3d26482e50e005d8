"""VMs with vifs through the toolstack: user networking (any user) and taps on a lightvm
network inside a private network namespace (root)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
NOOP_ELF = REPO / "images" / "build" / "noop.elf"


def vif_config(tmp_path: Path, name: str, vif: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nkernel = "{NOOP_ELF}"\nmemory = "8M"\n[[vifs]]\n{vif}\n')
    return path


def test_user_networking_vif_with_publish(lightvm: Any, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a free port (QEMU binds it a moment later)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = lightvm.ok(
        "create", str(vif_config(tmp_path, "u", "")), "--accel", "tcg", "--publish", f"127.0.0.1:{port}:13"
    )
    assert "networking: user" in out.out and "10.0.2.15/24" in out.out
    info = json.loads(lightvm.ok("info", "u", "--json").out)
    assert any(f"hostfwd=tcp:127.0.0.1:{port}-:13" in a for a in info["argv"])
    (vif,) = info["devices"]["vifs"]
    assert vif["mode"] == "user" and vif["ip"] == "10.0.2.15"


def test_publish_needs_a_vif_and_one_vm(lightvm: Any, tmp_path: Path) -> None:
    result = lightvm.run("create", str(REPO / "examples" / "noop.toml"), "--accel", "tcg", "--publish", "8013:13")
    assert result.code == 1 and "--publish needs a vif" in result.err
    cfg = vif_config(tmp_path, "u", "")
    result = lightvm.run("create", str(cfg), "--accel", "tcg", "--publish", "8013:13", "-n", "2")
    assert result.code == 1 and "same host port" in result.err
    assert lightvm.vm_dirs() == []


def test_bad_vif_is_refused_before_anything_exists(lightvm: Any, tmp_path: Path) -> None:
    cfg = vif_config(tmp_path, "b", 'bridge = "br-none"')  # a bridge vif needs an ip
    result = lightvm.run("create", str(cfg), "--accel", "tcg")
    assert result.code == 1 and result.err.count("\n") == 1 and "ip" in result.err
    assert lightvm.vm_dirs() == []


@pytest.mark.root
def test_tap_vifs_on_a_network(lightvm: Any, netns: str, tmp_path: Path) -> None:
    lightvm.ok("network", "create", "tsnet", "--subnet", "10.213.7.0/24")
    vms = lightvm.create(vif_config(tmp_path, "t", 'network = "tsnet"'), "-n", "3")
    assert all("tap" in vm["network"] and "10.213.7." in vm["network"] for vm in vms)
    links = subprocess.run(["ip", "netns", "exec", netns, "ip", "-br", "link"], capture_output=True, text=True,
                           timeout=10, check=True).stdout  # fmt: skip
    taps = [line.split()[0] for line in links.splitlines() if line.startswith("lv") and not line.startswith("lv-")]
    assert len(taps) == 3
    lightvm.ok("destroy", "--all")
    links = subprocess.run(["ip", "netns", "exec", netns, "ip", "-br", "link"], capture_output=True, text=True,
                           timeout=10, check=True).stdout  # fmt: skip
    assert not [t for t in taps if t in links], "destroy left taps behind"

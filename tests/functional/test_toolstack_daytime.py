"""The daytime guest through the toolstack: READY, then a real TCP daytime reply."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lightvm.util import wait_until

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
DAYTIME = REPO / "examples" / "daytime.toml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_daytime(host: str, port: int) -> bytes | None:
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(256)
                if not chunk:
                    break
                data += chunk
            return data or None
    except OSError:
        return None


def test_daytime_over_user_networking(lightvm: Any) -> None:
    port = free_port()
    (vm,) = lightvm.create(DAYTIME, "--publish", f"127.0.0.1:{port}:13")
    assert vm["app"] == "daytime" and vm["boot_ms"]["ready"] > 0
    assert "networking: user" in vm["network"]
    reply = wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    assert reply is not None and len(reply) > 10, reply
    assert str(__import__("time").gmtime().tm_year).encode() in reply
    info = json.loads(lightvm.ok("info", "daytime", "--json").out)
    assert info["guest"]["app_counter"] >= 1  # the guest counts clients served
    lightvm.ok("shutdown", "daytime")
    assert lightvm.leftovers() == []


@pytest.mark.root
def test_daytime_on_a_tap(lightvm: Any, netns: str, tmp_path: Path) -> None:
    lightvm.ok("network", "create", "tdnet", "--subnet", "10.214.3.0/24")
    cfg = tmp_path / "daytime.toml"
    cfg.write_text(DAYTIME.read_text().replace("[[vifs]]", '[[vifs]]\nnetwork = "tdnet"\nip = "10.214.3.77"'))
    cfg_text = cfg.read_text().replace('"../images/build/', f'"{REPO}/images/build/')
    cfg.write_text(cfg_text)
    (vm,) = lightvm.create(cfg)
    assert "tap" in vm["network"] and "10.214.3.77" in vm["network"]
    client = (
        "import socket,sys\n"
        "s=socket.create_connection(('10.214.3.77',13),timeout=2)\n"
        "sys.stdout.write(s.recv(256).decode())\n"
    )

    def ask() -> str | None:
        proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", client],
                              capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
        return proc.stdout if proc.returncode == 0 and proc.stdout else None

    reply = wait_until(ask, timeout=20, interval=0.05)
    assert reply and len(reply) > 10, reply


def test_fifty_daytime_vms(lightvm: Any) -> None:
    vms = lightvm.create(DAYTIME, "-n", "50")
    assert len(vms) == 50 and all(vm["app"] == "daytime" for vm in vms)
    status = lightvm.status()
    assert len(status) == 50 and set(status.values()) == {"running"}
    lightvm.ok("destroy", "--all", timeout=300)
    assert lightvm.list() == [] and lightvm.leftovers() == []

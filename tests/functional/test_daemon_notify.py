"""lightvmd under a (fake) service manager: started from a config file, it says READY=1
on $NOTIFY_SOCKET only once its socket answers and its pool is started, and STOPPING=1
when it goes (lightvm/daemon/sdnotify.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from daemonlib import NOOP, Lightvmd, wait_pool

pytestmark = pytest.mark.functional


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def test_ready_and_stopping_from_a_config_file(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    conf = tmp_path / "lightvmd.toml"
    conf.write_text(f'pool = ["{NOOP}"]\npool-size = 1\naccel = "tcg"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify"))
        manager.settimeout(30.0)
        lightvmd.env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
        lightvmd.start("--config", str(conf), pool=None)
        assert lightvmd.proc is not None
        ready = _fields(manager.recv(4096))
        assert ready["READY"] == "1" and ready["MAINPID"] == str(lightvmd.proc.pid), ready
        assert "noop.elf/4M/1cpu/tcg" in ready["STATUS"], ready  # the pool from the file
        stats = wait_pool(lightvmd, 1)
        assert [f["flavour"] for f in stats["flavours"]] == ["noop.elf/4M/1cpu/tcg"], stats
        assert lightvmd.create("n1")["path"] == "pool"
        assert lightvmd.stop() == 0
        assert _fields(manager.recv(4096))["STOPPING"] == "1"

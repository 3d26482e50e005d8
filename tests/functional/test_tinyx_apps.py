"""Two more Tinyx apps from their package names alone, booted with `lightvm create` on user
networking and reached through a published port by a real client: nginx-light serving a
page to curl, memcached answering its text protocol."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from netclient import free_port
from tinyxlib import build_image

from lightvm.util import wait_until

pytestmark = [pytest.mark.functional, pytest.mark.timeout(1500)]


def curl(url: str) -> str | None:
    proc = subprocess.run(["curl", "-sS", "--max-time", "5", url], capture_output=True, text=True, timeout=10)
    return proc.stdout if proc.returncode == 0 else None


def memcached_exchange(port: int, request: bytes) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            return s.recv(4096)
    except OSError:
        return None


def test_nginx_serves_a_page_to_curl(lightvm: Any, tmp_path: Path) -> None:
    config = build_image("nginx-light", tmp_path / "nginx-light")
    port = free_port()
    (vm,) = lightvm.create(config, "--publish", f"127.0.0.1:{port}:80")
    assert vm["app"] == "nginx-light"
    page = wait_until(lambda: curl(f"http://127.0.0.1:{port}/"), timeout=30, interval=0.1)
    assert page is not None and "nginx on Tinyx" in page, page
    lightvm.ok("shutdown", vm["name"])
    assert lightvm.list() == [] and lightvm.leftovers() == []


def test_memcached_from_its_package_name(lightvm: Any, tmp_path: Path) -> None:
    config = build_image("memcached", tmp_path / "memcached")
    port = free_port()
    (vm,) = lightvm.create(config, "--publish", f"127.0.0.1:{port}:11211")
    assert vm["app"] == "memcached"
    version = wait_until(lambda: memcached_exchange(port, b"version\r\n"), timeout=30, interval=0.1)
    assert version is not None and version.startswith(b"VERSION "), version
    assert memcached_exchange(port, b"set k 0 0 5\r\nhello\r\n") == b"STORED\r\n"
    assert memcached_exchange(port, b"get k\r\n") == b"VALUE k 0 5\r\nhello\r\nEND\r\n"

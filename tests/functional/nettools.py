"""Network namespaces for tests of the guest IPv4 stack.

A test gets its own namespace (harness.Namespace: ``lvtest-<pid>-<n>``) holding one tap; the
stack under test (the host tap harness, or QEMU running a unikernel) sits on one side of the
tap, Linux clients on the other.
Nothing is created in the root namespace, nothing is routed anywhere, and :class:`Netns` removes
the namespace - and with it the tap - in ``finally``. Every command has a timeout; no shell.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import Namespace, unique_name

CLIENT = Path(__file__).with_name("netclient.py")
RAWPEERS = Path(__file__).with_name("rawpeers.py")


def require_netns() -> None:
    """Skip (naming the capability) unless we can create namespaces and taps."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN) for network namespaces and taps")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip")


def run(argv: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def run_raw(argv: list[str], timeout: float = 30) -> bytes:
    """stdout as bytes (no newline translation: RFC 867 lines end in CRLF)."""
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=True).stdout


class Netns:
    """A throwaway namespace (harness.Namespace) with one tap (host side addressed, guest side free)."""

    def __init__(self, host_ip: str = "10.213.0.1", prefix: int = 24, create_tap: bool = True) -> None:
        self.ns = Namespace()
        self.name = self.ns.name
        self.tap = unique_name("lvt")  # <= 15 characters; this session's (the leak guard's test)
        self.host_ip = host_ip
        self.prefix = prefix
        self.create_tap = create_tap

    def __enter__(self) -> Netns:
        self.ns.open()
        try:
            if self.create_tap:
                self.exec(["ip", "tuntap", "add", self.tap, "mode", "tap"])
                self.configure_tap()
        except BaseException:
            self.close()
            raise
        return self

    def configure_tap(self) -> None:
        self.exec(["ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.tap])
        self.exec(["ip", "link", "set", self.tap, "up"])

    def adopt_tap(self) -> None:
        """Move our tap, opened meanwhile by a process in the root namespace (QEMU with
        ``-netdev tap,ifname=<self.tap>``), into the namespace and address it there.

        A tun/tap device keeps working for the process holding its fd when it changes
        namespace, so QEMU needs no netns of its own; the tap is in the root namespace only
        between QEMU opening it (paused, before the guest runs) and this call, down and
        unaddressed. It disappears when QEMU exits.
        """
        run(["ip", "link", "set", self.tap, "netns", self.name])
        self.configure_tap()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Deleting the namespace deletes the tap in it; processes we started in it are the
        # caller's to stop first (they hold the tap open, which is fine: it goes with them).
        self.ns.close()

    def argv(self, argv: list[str]) -> list[str]:
        return self.ns.argv(argv)

    def exec(self, argv: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.argv(argv), timeout=timeout, check=check)

    def nc(self, ip: str, port: int, timeout: float = 20) -> str:
        """What openbsd netcat receives from ip:port, decoded, line endings untouched."""
        return run_raw(self.argv(["nc", "-w", "5", ip, str(port)]), timeout=timeout).decode("ascii", "replace")

    def client(self, *args: str | int, timeout: float = 120) -> Any:
        """Run a netclient.py command inside the namespace and return its JSON result."""
        proc = self.exec([sys.executable, str(CLIENT), *map(str, args)], timeout=timeout, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"netclient {args} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def tap_mac(self) -> str:
        out = self.exec(["cat", f"/sys/class/net/{self.tap}/address"]).stdout.strip()
        return out


# ---- hostile peers (rawpeers.py: made-up hosts on the tap, never a RST back) ----


def rawpeer(ns: Netns, dst_mac: str, dst_ip: str, command: str, *args: str | int) -> subprocess.Popen[str]:
    """Start a rawpeers.py command inside ``ns`` against the stack at dst_mac/dst_ip. The caller
    stops it with :func:`stop_peers` in ``finally``."""
    argv = [sys.executable, str(RAWPEERS), command, ns.tap, dst_mac, dst_ip, *map(str, args)]
    return subprocess.Popen(ns.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def peer_line(proc: subprocess.Popen[str], timeout: float) -> Any:
    """The next JSON line a peer prints, within ``timeout`` (else it is killed and we fail)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(f"rawpeers printed nothing within {timeout} s: {proc.communicate(timeout=10)[1][-2000:]}")
    return json.loads(line)


def stop_peers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)

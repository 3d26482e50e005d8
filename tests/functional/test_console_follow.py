"""`lightvm console --follow`: prints what the guest writes after it started, and returns
by itself (status 0) once the VM is gone."""

from __future__ import annotations

import os
import selectors
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
NOOP = REPO / "examples" / "noop.toml"


def read_until(proc: Any, text: str, timeout: float) -> str:
    """What `proc` printed on stdout, read until ``text`` appears (AssertionError at the deadline)."""
    out = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while text.encode() not in out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} within {timeout} s; got {out!r}"
            if sel.select(left):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
    return out.decode()


def test_follow_streams_new_output_and_ends_with_the_vm(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    follower = lightvm.popen("console", "--follow", "noop")
    try:
        head = read_until(follower, "READY noop\n", timeout=30)
        assert "POWEROFF" not in head
        assert follower.poll() is None  # still following a running VM
        # Printed by the guest after the follower started: it must stream it, then
        # return on its own because the VM was destroyed.
        lightvm.ok("shutdown", "noop")
        rest, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
    assert follower.returncode == 0, err
    assert "POWEROFF" in head + rest


def test_follow_of_a_halted_vm_prints_and_returns(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    lightvm.ok("shutdown", "--keep", "noop")
    result = lightvm.run("console", "-f", "noop", timeout=30)
    assert result.code == 0 and result.out.rstrip().endswith("POWEROFF"), result

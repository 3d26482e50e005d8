"""`lightvm shutdown` when the guest cannot answer in time, and of a crashed VM."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from lightvm.util import proc_alive, wait_until

pytestmark = pytest.mark.functional


def test_shutdown_times_out_and_leaves_the_vm_as_it_was(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    pid = noop_vm["pid"]
    os.kill(pid, signal.SIGSTOP)  # QEMU frozen: the guest can never power off
    try:
        result = lightvm.run("shutdown", "--timeout", "1", "noop", timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.code != 0
    assert "did not power off within 1.0 s" in result.err, result.err
    assert proc_alive(pid, None)
    assert lightvm.status() == {"noop": "running"}
    # The request was left in the page: nothing broken, a second shutdown completes.
    lightvm.ok("shutdown", "noop")
    assert lightvm.list() == []
    assert wait_until(lambda: not proc_alive(pid, None), timeout=10.0)


def test_shutdown_of_a_crashed_vm_is_refused_and_destroy_cleans(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    pid = noop_vm["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not proc_alive(pid, None), timeout=10.0)
    assert lightvm.status() == {"noop": "crashed"}
    result = lightvm.run("shutdown", "noop")
    assert result.code == 1
    assert "cannot shut down a VM that is crashed" in result.err, result.err
    assert lightvm.status() == {"noop": "crashed"}  # refused: nothing changed
    info = json.loads(lightvm.ok("info", "noop", "--json").out)
    assert info["status"] == "crashed"
    lightvm.ok("destroy", "noop")
    assert lightvm.list() == []

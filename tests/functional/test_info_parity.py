"""`lightvm info` prints the same through lightvmd and without it (one formatter,
lightvm/cli/vm.py info_lines, of the one Toolstack.info dict lightvmd replies unchanged);
for a VM pooled by lightvmd, a cold one, and one whose QEMU was killed (the exit status
lightvmd saw is kept in the VM's folder, so both show it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemonlib import NOOP, Lightvmd, wait_pool

from lightvm.util import wait_until

pytestmark = pytest.mark.functional


def info(d: Lightvmd, name: str, *args: str, daemon: bool) -> subprocess.CompletedProcess[str]:
    env = dict(d.env) if daemon else dict(d.env, LIGHTVM_NO_DAEMON="1")
    argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(d.state_dir), "info", name, *args]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ("via lightvmd" in proc.stderr) == daemon  # each went the way it was meant to
    return proc


def same_info(d: Lightvmd, name: str) -> str:
    text = info(d, name, daemon=True).stdout
    assert text == info(d, name, daemon=False).stdout
    assert info(d, name, "--json", daemon=True).stdout == info(d, name, "--json", daemon=False).stdout
    return text


def test_info_is_the_same_with_and_without_lightvmd(lightvmd: Lightvmd, images: Path) -> None:
    lightvmd.start(pool=NOOP, size=1)
    wait_pool(lightvmd, 1)
    assert lightvmd.create("pooled")["path"] == "pool"
    cold = lightvmd.create("cold", pool=False)
    assert cold["path"] == "cold"

    for name in ("pooled", "cold"):
        # Paused: a running guest's heartbeat may tick between the two commands.
        lightvmd.call("pause", {"name": name})
        text = same_info(lightvmd, name)
        for line in ("status:      paused", "qemu_status: paused", "spec:        kernel", "READY"):
            assert line in text, text
        assert text.count("\nboot:        ") == 1
        assert "guest:       state READY, app noop" in text

    os.kill(int(cold["pid"]), signal.SIGKILL)
    assert wait_until(lambda: (lightvmd.state_dir / "vms" / "cold" / "exit.json").exists(), timeout=20)
    text = same_info(lightvmd, "cold")
    assert "status:      crashed" in text
    assert "exit:        QEMU exited unexpectedly (QEMU killed by signal 9 (SIGKILL), seen by lightvmd)" in text

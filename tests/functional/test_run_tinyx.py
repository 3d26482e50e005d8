"""`lightvm run` of a real Tinyx image from the image store: the app's end ends the VM and
the command exits with the app's status (/bin/true 0, /bin/false 1), the VM destroyed.
The image is built from the host's ELF (`lightvm image build /bin/true`), cached parts as
the other Tinyx tests (tests/functional/tinyxlib.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tinyxlib import BUILD_TIMEOUT_S

from lightvm.util import wait_until

pytestmark = [pytest.mark.functional, pytest.mark.timeout(BUILD_TIMEOUT_S + 300)]


def build(store: Path, elf: str) -> None:
    name = Path(elf).name
    proc = subprocess.run(
        [sys.executable, "-m", "lightvm.cli", "image", "build", elf, "-o", str(store / name)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize(("elf", "status"), [("/bin/true", 0), ("/bin/false", 1)])
def test_run_exits_with_the_apps_status(lightvm: Any, tmp_path: Path, elf: str, status: int) -> None:
    store = tmp_path / "images"
    build(store, elf)
    lightvm.env["LIGHTVM_IMAGE_DIR"] = str(store)
    name = Path(elf).name
    result = lightvm.run("run", name, "--accel", "tcg", "--timeout", "60", timeout=240)
    assert result.code == status, result.err
    assert f"lvinit: app exited with status {status}" in result.out
    assert f"lightvm: {name}: the app exited with status {status}; the VM was destroyed" in result.err
    assert lightvm.ok("list", "--json").json() == []


def test_ctrl_c_while_lightvmd_creates_still_destroys(lightvmd: Any, tmp_path: Path) -> None:
    """Interrupted while lightvmd boots the VM (a Linux kernel: seconds under TCG), `run`
    waits for the create's answer, then destroys the VM and exits 130: nothing is left."""
    store = tmp_path / "images"
    build(store, "/bin/true")
    lightvmd.start(pool=None)
    lightvmd.env["LIGHTVM_IMAGE_DIR"] = str(store)
    proc = lightvmd.lv.popen("run", "true", "--accel", "tcg", "--timeout", "60")
    try:
        assert wait_until(lambda: (lightvmd.state_dir / "vms" / "true").is_dir(), timeout=60, interval=0.02)
        assert lightvmd.call("list")[0]["status"] != "running"  # still booting
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert lightvmd.call("list") == []
    kinds = [e["event"] for e in lightvmd.call("events", {"vm": "true"})]
    assert kinds[:2] == ["created", "ready"] and kinds[-1] == "destroyed", kinds

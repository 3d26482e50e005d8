"""The README's measurement commands ("Measured figures") and scripts/demo.sh run and
print their figures (tiny run counts: speed itself belongs to `lightvm bench`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
SLIM = REPO / "qemu" / "build" / "current" / "qemu-system-x86_64"
MS = r"\d+\.\d+"


def run(argv: list[str], timeout: float) -> str:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", LIGHTVM_NO_DAEMON="1")
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_guestboot(images: Path) -> None:
    out = run([sys.executable, "-m", "lightvm.bench.guestboot", "--runs", "2", "--image", "noop"], 300)
    assert re.search(rf"cold_start_to_ready\s+median\s+{MS} ms", out), out
    assert re.search(rf"split_cont_to_ready\s+median\s+{MS} ms", out), out
    assert re.search(r"image noop.elf\s+\d+ bytes", out), out


def test_lifecycle(images: Path) -> None:
    argv = [sys.executable, "-m", "lightvm.bench.lifecycle", "-n", "2", "--cli-iterations", "1", "--pauses", "1"]
    out = run(argv, 300)
    for row in ("create -> qemu_up", "create -> ready", "destroy", "pause", "unpause"):
        assert re.search(rf"{re.escape(row)}\s+{MS}", out), (row, out)


def test_qemustart() -> None:
    binaries = ["/usr/bin/qemu-system-x86_64", str(SLIM)]  # bootstrap builds the slim one
    out = run([sys.executable, "-m", "lightvm.bench.qemustart", "--runs", "2", *binaries], 120)
    for binary in binaries:
        assert re.search(rf"wall\s+{MS} ms median.*{re.escape(binary)}", out), (binary, out)


def test_demo_script(images: Path) -> None:
    """demo.sh runs scripts/bootstrap.sh first: with everything in place it only checks."""
    out = run(["bash", "scripts/demo.sh"], 600)
    assert re.search(rf"daytime: daytime READY in {MS} ms", out), out
    assert re.search(r"\w+day, \w+ \d+, \d{4} \d\d:\d\d:\d\d-UTC", out), out  # the daytime reply
    assert re.search(rf"daytime: powered off in {MS} ms", out), out

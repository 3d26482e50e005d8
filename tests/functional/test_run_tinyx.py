"""`lightvm run` of a real Tinyx image from the image store: the app's end ends the VM and
the command exits with the app's status (/bin/true 0, /bin/false 1), the VM destroyed.
The image is built from the host's ELF (`lightvm image build /bin/true`), cached parts as
the other Tinyx tests (tests/functional/tinyxlib.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tinyxlib import BUILD_TIMEOUT_S

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

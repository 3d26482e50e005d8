"""Build a Tinyx image for a test with the real CLI (`lightvm image build APP -o DIR`).

The kernel, the debootstrap tree and each app's packages are cached under tinyx/build, so
after the first build on a machine (scripts/test.sh builds the kernel first) an image takes
about a second; the image folder itself is the test's own temporary one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUILD_TIMEOUT_S = 1400  # a cold debootstrap + apt install on a fresh CI machine


def build_image(app: str, out: Path) -> Path:
    """``lightvm image build APP -o OUT``; the VM config it wrote (OUT/APP.toml)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lightvm.cli", "image", "build", app, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = out / f"{app}.toml"
    assert config.is_file(), sorted(p.name for p in out.iterdir())
    return config

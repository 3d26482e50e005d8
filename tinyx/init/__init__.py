"""lvinit, the Tinyx init: PID 1 of a Linux guest on lightvm (C sources and Makefile here).

It finds the NoXS page, keeps the boot record, brings up the NICs, runs the app from
/etc/tinyx/app.conf and says READY when it serves, powers off on the host's request
(docs/tinyx.md, "The init"). Python's part is only the build: ``build_init()`` runs make
and returns the static binary, which the image builder puts into the initramfs as /init.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lightvm import paths
from lightvm.errors import TinyxError

HERE = Path(__file__).resolve().parent
OUT = paths.tinyx_build() / "init"  # tinyx/build/init in a checkout, the cache dir when installed
BINARY = OUT / "lvinit"
MAKE_TIMEOUT = 300.0
TAIL_LINES = 15


class InitBuildError(TinyxError):
    """lvinit did not build (the message ends with make's last lines)."""


def build_init(timeout: float = MAKE_TIMEOUT) -> Path:
    """``make -C tinyx/init`` (a no-op when nothing changed) and the path of the static binary.

    Why make and not a compile call here: the Makefile is also how a person builds the init
    by hand, and its dependency tracking keeps the common case (nothing changed) at ~10 ms.

    :raise InitBuildError: make failed, timed out or is missing (names the last lines of its
        output and what to install).
    """
    try:
        proc = subprocess.run(
            ["make", "-s", "-C", str(HERE), f"BUILD={OUT}", f"NOXS={paths.noxs_sources()}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise InitBuildError("building lvinit needs make and gcc: apt-get install make gcc libc6-dev") from None
    except subprocess.TimeoutExpired:
        raise InitBuildError(f"building lvinit: make -C {HERE} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()[-TAIL_LINES:]
        raise InitBuildError(
            f"building lvinit failed (make -C {HERE}, exit {proc.returncode}; a static build needs gcc "
            f"and libc6-dev): " + " | ".join(lines)
        )
    if not BINARY.is_file():
        raise InitBuildError(f"make -C {HERE} succeeded but left no {BINARY}")
    return BINARY


__all__ = ["BINARY", "InitBuildError", "build_init"]

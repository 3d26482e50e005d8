"""Which ``qemu-system-x86_64`` to run for a machine type.

Why this exists: Debian's QEMU needs ~17 ms to start (51 shared libraries bound at load,
every device type registered) before it does anything, which bounds a cold boot.
``qemu/build.sh`` builds a slim QEMU from the same Debian source with only the microvm
board, TCG, KVM and the devices lightvm passes. It has no SeaBIOS board (``-M pc``), and
lightvm only tests it on microvm, so every other machine type runs on Debian's binary.

Order, first match wins:

1. ``$LIGHTVM_QEMU`` (an explicit choice: used for every machine type);
2. for microvm, the repo's ``qemu/build/current/qemu-system-x86_64`` if it is an
   executable file (returned with its symlinks resolved, so it names the exact build);
3. ``qemu-system-x86_64`` (Debian's, found on PATH when it is run).

The libvirt baseline always uses Debian's binary (:data:`DEBIAN_QEMU`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV = "LIGHTVM_QEMU"
DEBIAN_QEMU = "qemu-system-x86_64"  # Debian's full build, found on PATH (/usr/bin)
REPO = Path(__file__).resolve().parent.parent
SLIM_QEMU = REPO / "qemu" / "build" / "current" / "qemu-system-x86_64"
SLIM_MACHINES = frozenset({"microvm"})


def machine_type(machine: str) -> str:
    """``microvm`` from ``microvm,pcie=on,...``: the board, without its options."""
    return machine.split(",", 1)[0].strip()


def slim_binary(slim: Path = SLIM_QEMU) -> str | None:
    """The slim build's resolved path, or None when it has not been built."""
    try:
        real = slim.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, dangling symlink, or a symlink loop
        return None
    if real.is_file() and os.access(real, os.X_OK):
        return str(real)
    return None


def qemu_binary(machine: str = "microvm", env: Mapping[str, str] | None = None, slim: Path = SLIM_QEMU) -> str:
    """The QEMU binary to run a ``machine`` (a ``-M`` value, options allowed).

    ``env`` defaults to ``os.environ``; ``slim`` to the repo's build (tests pass others).
    """
    environ = os.environ if env is None else env
    override = environ.get(ENV)
    if override:
        return override
    if machine_type(machine) in SLIM_MACHINES:
        built = slim_binary(slim)
        if built is not None:
            return built
    return DEBIAN_QEMU

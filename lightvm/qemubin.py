"""Which ``qemu-system-x86_64`` to run for a machine type.

Why this exists: Debian's QEMU needs ~17 ms to start (51 shared libraries bound at load,
every device type registered) before it does anything, which bounds a cold boot.
``qemu/build.sh`` builds a slim QEMU from the same Debian source with only the microvm
board, TCG, KVM and the devices lightvm passes. It has no SeaBIOS board (``-M pc``), and
lightvm only tests it on microvm, so every other machine type runs on Debian's binary.

Order, first match wins:

1. ``$LIGHTVM_QEMU`` (an explicit choice: used for every machine type);
2. for microvm, the slim build if it is an executable file (returned with its symlinks
   resolved, so it names the exact build): the checkout's ``qemu/build/current/`` or, for
   an installed package, the cache dir's ``qemu/current/`` (:func:`lightvm.paths.slim_qemu`);
3. ``qemu-system-x86_64`` (Debian's, found on PATH when it is run).

The libvirt baseline always uses Debian's binary (:data:`DEBIAN_QEMU`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from lightvm import paths

ENV = "LIGHTVM_QEMU"
DEBIAN_QEMU = "qemu-system-x86_64"  # Debian's full build, found on PATH (/usr/bin)
SLIM_QEMU = paths.slim_qemu()  # where this layout keeps the slim build (it may not exist)
SLIM_MACHINES = frozenset({"microvm"})
BUILDINFO = "BUILDINFO"  # written by qemu/build.sh next to the binary it installs


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

    ``env`` defaults to ``os.environ``; ``slim`` to this layout's build (tests pass others).
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


def explain(machine: str = "microvm", env: Mapping[str, str] | None = None, slim: Path = SLIM_QEMU) -> str:
    """Why :func:`qemu_binary` picks what it picks, in a sentence (``lightvm host check``, the
    note ``create`` prints once when an installed lightvm runs Debian's binary)."""
    environ = os.environ if env is None else env
    if environ.get(ENV):
        return f"${ENV} names it"
    if machine_type(machine) not in SLIM_MACHINES:
        return f"Debian's full build: the slim build has no {machine_type(machine)} board"
    if slim_binary(slim) is not None:
        return f"the slim build ({slim})"
    return f"Debian's full build (~17 ms slower to start): no slim build at {slim}; lightvm setup qemu builds one"


@functools.cache
def build_patches(binary: str) -> frozenset[str]:
    """The ``qemu/patches/*.patch`` names a slim build was made with (``patches=`` in the
    BUILDINFO next to it); empty for any other binary (Debian's, a wrapper script, a build
    from before the line existed).

    Why: some of our patches add options (microvm's ``x-virtio-transports``) that another
    QEMU refuses, so the command line asks the build what it has. Read once per binary.
    """
    if not os.path.isabs(binary):  # a name found on PATH: Debian's, never ours
        return frozenset()
    try:
        text = (Path(binary).resolve().parent / BUILDINFO).read_text(encoding="utf-8", errors="replace")
    except (OSError, RuntimeError):  # no BUILDINFO there, or a symlink loop
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "patches":
            return frozenset(value.split())
    return frozenset()

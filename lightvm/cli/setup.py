"""``lightvm setup qemu``: build the slim QEMU where this layout looks for it.

Why: an installed lightvm runs Debian's full QEMU (~17 ms slower to start, docs/qemu-notes.md)
because the slim build lives in a checkout's qemu/build. This runs the same qemu/build.sh
(Debian's qemu source package, our configure flags and devices.mak; root or apt rights,
~10 min on 2 cores the first time, a no-op check after) for either layout:

- checkout: ``qemu/build.sh`` itself, into ``qemu/build/`` (what scripts/bootstrap.sh runs);
- installed: the script, devices.mak and patches/ the wheel ships, copied byte for byte into
  the cache dir's ``qemu/`` (build.sh builds into the ``build/`` folder next to itself, and
  those bytes are its build hash, so they are never edited), into ``CACHE/qemu/build/``.

lightvm/qemubin.py then finds the result at :func:`lightvm.paths.slim_qemu`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lightvm import paths
from lightvm.errors import SetupError

BUILD_TIMEOUT = 3 * 3600.0  # a cold 2-core build is ~10 min; a loaded host is slower
SCRIPT_FILES = ("build.sh", "devices.mak")  # and every patches/*.patch shipped


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``setup qemu`` to the CLI's subparsers."""
    setup = sub.add_parser("setup", help="build optional parts (the slim QEMU)")
    ssub = setup.add_subparsers(dest="setup_command", metavar="COMMAND", required=True)
    p = ssub.add_parser(
        "qemu",
        help="build the slim QEMU lightvm starts microvm guests with (~10 min once; needs apt rights)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.set_defaults(func=cmd_qemu)


def build_script() -> Path:
    """The qemu/build.sh to run for this layout (the installed one copied into the cache first).

    :raise SetupError: the installed package has no script (an old or partial wheel).
    """
    tree = paths.checkout()
    if tree is not None:
        return tree / "qemu" / "build.sh"
    shipped = paths.data_root() / "qemu"
    home = paths.qemu_home()
    (home / "patches").mkdir(parents=True, exist_ok=True)
    for name in SCRIPT_FILES:
        if not (shipped / name).is_file():
            raise SetupError(f"{shipped / name} is missing: reinstall lightvm (its wheel ships qemu/build.sh)")
    patches = sorted(p.relative_to(shipped).as_posix() for p in (shipped / "patches").glob("*.patch"))
    for stale in (home / "patches").glob("*.patch"):
        if f"patches/{stale.name}" not in patches:
            stale.unlink()  # a patch an older lightvm shipped would change the build
    for name in [*SCRIPT_FILES, *patches]:
        source = shipped / name
        data = source.read_bytes()
        target = home / name
        if target.is_file() and target.read_bytes() == data:
            continue
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return home / "build.sh"


def cmd_qemu(args: argparse.Namespace) -> int:
    from lightvm import qemubin

    script = build_script()
    if not args.quiet:
        print(f"lightvm: building the slim QEMU with {script} (progress below)", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(["bash", str(script)], timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{script} did not finish in {BUILD_TIMEOUT / 3600:.0f} h; run it by hand") from None
    except FileNotFoundError:
        raise SetupError("bash is needed to run qemu/build.sh") from None
    if done.returncode != 0:
        raise SetupError(f"{script} failed (exit {done.returncode}): see its message above")
    built = qemubin.slim_binary(paths.slim_qemu())
    if built is None:
        raise SetupError(f"{script} succeeded but {paths.slim_qemu()} is not an executable: report this")
    print(json.dumps({"qemu": str(built)}) if args.json else built)
    return 0

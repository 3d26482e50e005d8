"""Mounts under the build cache, and removing trees that may hold them.

The chroot has /proc and the host's /dev bind-mounted inside an overlayfs: an rmtree
that walked into a still-mounted /dev would delete the host's device nodes. So every
removal of a work tree goes through :func:`remove_tree`, which unmounts everything
below the path first (deepest first) and refuses to delete while anything stays
mounted. A build killed with -9 leaves its mounts behind; the next build finds them
in /proc/self/mountinfo (under the build lock, so they cannot be a live build's) and
unmounts them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightvm.errors import TinyxError
from tinyx.image.proc import run

MOUNT_TIMEOUT = 60


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out = []
    i = 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str | None = None) -> list[Path]:
    """Every mount point of this mount namespace, in mount order."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    return [Path(_unescape(line.split()[4])) for line in mountinfo.splitlines() if len(line.split()) > 4]


def mounted_under(path: Path, mountinfo: str | None = None) -> list[Path]:
    """Mount points at or below ``path``, deepest first (the order to unmount them)."""
    top = Path(os.path.realpath(path))
    found = {m for m in mount_points(mountinfo) if m == top or top in m.parents}
    return sorted(found, key=lambda m: len(m.parts), reverse=True)


def mount(argv: list[str], what: str) -> None:
    run(["mount", *argv], MOUNT_TIMEOUT, what=what)


def unmount_under(path: Path) -> list[Path]:
    """Unmount everything at or below ``path``; returns what was unmounted. A busy mount
    is detached lazily (``umount -l``): it goes when its last user does, and is no longer
    reachable through ``path`` either way."""
    done: list[Path] = []
    for _ in range(8):  # a mount can be stacked on another at the same point
        points = mounted_under(path)
        if not points:
            return done
        for m in points:
            try:
                run(["umount", str(m)], MOUNT_TIMEOUT, what=f"umount {m}")
            except TinyxError:
                run(["umount", "-l", str(m)], MOUNT_TIMEOUT, what=f"umount -l {m}")
            done.append(m)
    if mounted_under(path):
        raise TinyxError(f"cannot unmount {mounted_under(path)[0]}: unmount it by hand, then build again")
    return done


def remove_tree(path: Path) -> None:
    """rmtree that never crosses into a mount: unmount below ``path`` first."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    if mounted_under(path):
        raise TinyxError(f"{path} still has mounts below it; not removing it (unmount them by hand)")
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    shutil.rmtree(path)


@contextmanager
def mounted(target: Path, argv: list[str], what: str) -> Iterator[Path]:
    """``mount argv... target`` for the duration of the block; unmounted on every path."""
    mount([*argv, str(target)], what)
    try:
        yield target
    finally:
        unmount_under(target)

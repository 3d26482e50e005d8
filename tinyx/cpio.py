"""A newc ("070701") cpio writer for initramfs images: no root needed for device nodes.

The kernel's initramfs unpacker reads the SVR4 "new ASCII" format: a 110-byte header of
hex fields, the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes, and a
final "TRAILER!!!" entry. Writing it ourselves lets an unprivileged build put /dev/console
(the kernel opens it for init's stdio before /init runs) into the archive.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``name`` is relative ("init", "bin/sh"); data is the file's
    bytes, a symlink's target, or empty; rdev is (major, minor) for device nodes."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, nlink: int, size: int, namesize: int) -> bytes:
    fields = (ino, e.mode, e.uid, e.gid, nlink, e.mtime, size, 0, 0, e.rdev[0], e.rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def write(entries: Iterable[Entry], out: BinaryIO) -> int:
    """Write ``entries`` in order, then the trailer; returns the bytes written.

    Parents must come before their children (the kernel does not create directories)."""
    written = 0
    ino = 0
    for ino, e in enumerate(entries, 1):
        name = e.name.lstrip("/")
        if not name or name == TRAILER or "\0" in name:
            raise ValueError(f"bad cpio member name {e.name!r}")
        if e.data and not (stat.S_ISREG(e.mode) or stat.S_ISLNK(e.mode)):
            raise ValueError(f"{e.name}: only files and symlinks carry data")
        bname = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        head = _header(ino, e, nlink, len(e.data), len(bname)) + bname
        chunk = head + _pad(len(head)) + e.data + _pad(len(e.data))
        out.write(chunk)
        written += len(chunk)
    bname = TRAILER.encode() + b"\0"
    head = _header(ino + 1, Entry(TRAILER, 0), 1, 0, len(bname)) + bname
    chunk = head + _pad(len(head))
    out.write(chunk)
    return written + len(chunk)

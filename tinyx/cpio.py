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
from pathlib import Path
from typing import BinaryIO

from lightvm.errors import TinyxError

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


# -------------------------------------------------------------------- reading

HEADER_LEN = 110
CRC_MAGIC = b"070702"  # the same with a checksum of each file's bytes


def read(data: bytes) -> list[Entry]:
    """The members of a newc archive (``data``), in order, without the trailer.

    Why a reader of our own: ``lightvm bench tinyx`` unpacks an image's initramfs into a
    container's root file system, and GNU cpio is not installed everywhere. It reads what
    :func:`write` writes and GNU cpio's ``-H newc`` / ``-H crc`` output (checksums are
    checked). Hard-linked files (a regular file with nlink > 1) are refused: newc stores
    their data on one member only, and tinyx archives have none. Bytes after the trailer
    (the kernel's padding, or a second archive appended) are ignored.

    :raise TinyxError: not a newc archive, a truncated member, a bad checksum or name,
        no trailer; the message gives the member's offset.
    """
    out: list[Entry] = []
    pos = 0
    while True:
        head = data[pos : pos + HEADER_LEN]
        if len(head) < HEADER_LEN:
            raise TinyxError(
                f"cpio: truncated archive: {len(head)} header bytes at offset {pos}, no {TRAILER} member "
                "(the file was cut short: rebuild the image)"
            )
        magic = head[:6]
        if magic not in (MAGIC, CRC_MAGIC):
            raise TinyxError(f"cpio: bad magic {magic!r} at offset {pos}: not a newc (070701) archive")
        try:
            f = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise TinyxError(f"cpio: header at offset {pos} has a non-hex field") from None
        _ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, check = f
        name_end = pos + HEADER_LEN + namesize
        data_start = name_end + (-(HEADER_LEN + namesize) % 4)
        data_end = data_start + size
        if namesize < 1 or data_end > len(data):
            raise TinyxError(
                f"cpio: truncated member at offset {pos}: needs {data_end - pos} bytes, "
                f"{len(data) - pos} left (the file was cut short: rebuild the image)"
            )
        raw_name = data[pos + HEADER_LEN : name_end]
        if raw_name[-1:] != b"\0" or b"\0" in raw_name[:-1]:
            raise TinyxError(f"cpio: member name at offset {pos} is not one NUL-terminated string")
        name = raw_name[:-1].decode(errors="surrogateescape")
        if name == TRAILER:
            return out
        body = data[data_start:data_end]
        if magic == CRC_MAGIC and sum(body) & 0xFFFFFFFF != check:
            raise TinyxError(f"cpio: {name}: checksum mismatch (the archive is corrupt)")
        if stat.S_ISREG(mode) and nlink > 1:
            raise TinyxError(f"cpio: {name}: hard links are not supported (nlink {nlink})")
        out.append(Entry(name, mode, body, (rmaj, rmin), uid, gid, mtime))
        pos = data_end + (-data_end % 4)


def extract(entries: Iterable[Entry], root: Path) -> list[str]:
    """Create ``entries`` under ``root`` (directories, files with their permission bits,
    symlinks as they are); the names of the device nodes left out, which only root could
    make and which a container runtime provides in its own /dev anyway.

    A member may not leave ``root``: a name with ``..`` or a parent directory that resolves
    outside it (through an absolute symlink of the archive) is refused, so an archive
    cannot write into the host's tree.

    :raise TinyxError: such a name, or a member of an unknown type.
    """
    top = root.resolve()
    skipped = []
    for e in entries:
        name = e.name.lstrip("/")
        if name in ("", "."):
            continue
        if ".." in name.split("/"):
            raise TinyxError(f"cpio: member {e.name!r} leaves the archive's root")
        dest = top / name
        if not dest.parent.resolve().is_relative_to(top):
            raise TinyxError(f"cpio: member {e.name!r} would be written outside {top} (through a symlink)")
        kind = stat.S_IFMT(e.mode)
        if kind == stat.S_IFDIR:
            dest.mkdir(mode=0o755, exist_ok=True)
            dest.chmod(stat.S_IMODE(e.mode))
        elif kind == stat.S_IFREG:
            dest.write_bytes(e.data)
            dest.chmod(stat.S_IMODE(e.mode))
        elif kind == stat.S_IFLNK:
            dest.symlink_to(e.data.decode(errors="surrogateescape"))
        elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            skipped.append(name)
        else:
            raise TinyxError(f"cpio: member {e.name!r} has an unknown type (mode {e.mode:o})")
    return skipped

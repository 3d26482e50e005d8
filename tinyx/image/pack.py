"""The initramfs file: the image tree as a newc cpio (tinyx/cpio.py), optionally compressed.

Uncompressed is the default: docs/tinyx.md measured no boot-time gain from gzip on a
small archive under TCG. gzip and lz4 are there to measure with a real app (the platform
kernel unpacks both; lz4 must be the legacy frame format, ``lz4 -l``, for Linux 6.1).
Every member has mtime 0 and a fixed order, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lightvm.errors import TinyxError
from tinyx import cpio
from tinyx.image.assemble import Tree
from tinyx.image.proc import run

COMPRESSORS: dict[str, tuple[str, ...] | None] = {
    "none": None,
    "gzip": ("gzip", "-9", "-n"),
    "lz4": ("lz4", "-l", "-9"),
}
SUFFIX = {"none": "", "gzip": ".gz", "lz4": ".lz4"}
COMPRESS_TIMEOUT = 600.0


def initrd_name(compress: str) -> str:
    return "initramfs.cpio" + SUFFIX[compress]


def write_cpio(tree: Tree, out: Path) -> int:
    """The uncompressed archive; returns its size in bytes."""
    with out.open("wb") as f:
        return cpio.write(tree.entries(), f)


def compress(raw: Path, fmt: str) -> Path:
    """``raw`` compressed to ``raw`` + suffix (raw itself for "none"); raw is removed."""
    if fmt not in COMPRESSORS:
        raise TinyxError(f"unknown compression {fmt!r}: use one of {', '.join(COMPRESSORS)}")
    argv = COMPRESSORS[fmt]
    if argv is None:
        return raw
    out = raw.with_name(raw.name + SUFFIX[fmt])
    # -c to stdout is avoided: run() merges stdout into its log; both tools write a file.
    if fmt == "gzip":
        run([*argv, "-f", "-k", raw], COMPRESS_TIMEOUT, what="gzip the initramfs")
    else:
        run([*argv, "-f", "-q", raw, out], COMPRESS_TIMEOUT, what="lz4 the initramfs")
    if not out.is_file():
        raise TinyxError(f"{fmt} did not write {out}")
    raw.unlink()
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

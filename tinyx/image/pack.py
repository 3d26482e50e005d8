"""The initramfs file: the image tree as a newc cpio (tinyx/cpio.py), compressed with lz4
by default (``--compress none|gzip|lz4``).

Why lz4 (docs/tinyx-size.md, "The initramfs format"): it halves the image (redis-server:
kernel + initramfs 22.3 MB uncompressed, 12.5 MB with lz4), and booting it is as fast as
booting the uncompressed archive within this machine's noise, while a create from the
image's snapshot does not unpack it at all. gzip is smaller still and slower to boot.
The platform kernel unpacks all three; lz4 must be the legacy frame format (``lz4 -l``)
for Linux 6.1. Every member has mtime 0 and a fixed order, so the same inputs give the
same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
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
DEFAULT = "lz4"
COMPRESS_TIMEOUT = 600.0


def initrd_name(compress: str) -> str:
    return "initramfs.cpio" + SUFFIX[compress]


def check_tool(fmt: str) -> None:
    """Refuse ``fmt`` when its compressor is not installed, before any build step runs.

    :raise TinyxError: an unknown format, or its tool is missing (what to do, said).
    """
    if fmt not in COMPRESSORS:
        raise TinyxError(f"--compress {fmt}: use one of {', '.join(COMPRESSORS)}")
    argv = COMPRESSORS[fmt]
    if argv is not None and shutil.which(argv[0]) is None:
        raise TinyxError(
            f"the initramfs is compressed with {argv[0]} ({fmt}, the default is {DEFAULT}) and {argv[0]} is not "
            f"installed: apt-get install {argv[0]}, or build with --compress none"
        )


def find_initrd(image: Path) -> Path | None:
    """The initramfs of the image folder ``image``, whichever format it was built in."""
    for fmt in COMPRESSORS:
        path = image / initrd_name(fmt)
        if path.is_file():
            return path
    return None


def archive_bytes(initrd: Path) -> bytes:
    """The newc archive inside ``initrd``, uncompressed (the format from its name).

    :raise TinyxError: the file cannot be read or does not decompress.
    """
    try:
        if initrd.name.endswith(SUFFIX["lz4"]):
            done = subprocess.run(
                ["lz4", "-d", "-c", "-q", str(initrd)], capture_output=True, timeout=COMPRESS_TIMEOUT, check=False
            )
            if done.returncode != 0:
                raise TinyxError(f"lz4 could not decompress {initrd}: {done.stderr.decode(errors='replace')[-300:]}")
            return done.stdout
        data = initrd.read_bytes()
        return gzip.decompress(data) if initrd.name.endswith(SUFFIX["gzip"]) else data
    except (OSError, EOFError, gzip.BadGzipFile, subprocess.TimeoutExpired) as exc:
        raise TinyxError(f"cannot read the initramfs {initrd}: {exc}") from exc


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

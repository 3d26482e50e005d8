"""The image builder's cache under tinyx/build/: keys, the build lock, atomic entries.

An entry is a folder ``<kind>-<key>/`` that is complete by construction: it is built as
``<kind>-<key>.tmp/`` and renamed into place as the last step, so a build killed at any
point (Ctrl-C, SIGTERM, kill -9) never leaves a folder that looks complete. Leftover
``.tmp`` folders, and the mounts a killed build left in them, are removed by the next
build, which holds the lock while it works (two builds at once would share the cache's
.tmp folders and mounts). The cache root is the kernel builder's (``tinyx.kernel.build.BUILD``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightvm.errors import TinyxError
from tinyx.image.mounts import remove_tree
from tinyx.image.proc import Progress
from tinyx.kernel.build import BUILD as BUILD  # the kernel builder's cache root, shared

LOCK_NAME = ".image-build.lock"
LOCK_WAIT = 3600.0


def key(*parts: str) -> str:
    """16 hex digits of a sha256 over length-prefixed parts (no ambiguity between
    ("ab", "c") and ("a", "bc"))."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def entry(kind: str, k: str, root: Path = BUILD) -> Path:
    return root / f"{kind}-{k}"


def tmp_of(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def begin(path: Path) -> Path:
    """A fresh, empty ``path.tmp`` to build the entry in (a leftover one is removed)."""
    tmp = tmp_of(path)
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, path: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` as tmp/entry.json, then rename tmp into place (replacing an old entry)."""
    (tmp / "entry.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if path.exists():
        remove_tree(path)
    os.rename(tmp, path)


def read_meta(path: Path) -> dict[str, Any] | None:
    """The entry's metadata, or None if the entry is absent (or not complete)."""
    try:
        meta: dict[str, Any] = json.loads((path / "entry.json").read_text())
    except (OSError, ValueError):
        return None
    return meta


def clean_stale(root: Path, progress: Progress) -> None:
    """Remove leftover image-builder ``.tmp`` folders (and their mounts) of killed builds.
    Only our kinds: the kernel builder's ``kernel-*.tmp`` may be a build in progress."""
    if not root.is_dir():
        return
    for kind in ("base", "app", "busybox", "assemble", "kpack", "stock"):
        for tmp in root.glob(f"{kind}-*.tmp"):
            progress.log(f"removing {tmp.name} left by an interrupted build")
            remove_tree(tmp)


@contextmanager
def locked(root: Path, progress: Progress) -> Iterator[int]:
    """Hold the image builder's lock (flock on tinyx/build/.image-build.lock); yields its fd
    so that children may inherit it (an orphan of a killed build keeps it held)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.log("waiting for another image build to finish (it holds tinyx/build/.image-build.lock)")
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TinyxError(
                            f"another image build has held {root / LOCK_NAME} for {LOCK_WAIT:.0f}s; "
                            "wait for it or stop it"
                        ) from None
                    time.sleep(0.5)
        yield fd
    finally:
        os.close(fd)

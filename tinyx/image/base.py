"""The base tree: ``debootstrap --variant=minbase bookworm`` from deb.debian.org, once.

As in the LightVM paper's Tinyx, the app's package is installed over a minimal Debian
so that apt resolves its dependencies; the base tree is the overlay's read-only lower
layer and what the ELF closure resolves libraries against. Cached under
tinyx/build/base-<key>/tree, key = (suite, mirror, variant, architecture, debootstrap's
version): a new debootstrap may produce a different tree.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lightvm.errors import TinyxError
from tinyx.image import cache
from tinyx.image.mounts import remove_tree
from tinyx.image.proc import Progress, run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
ARCH = "amd64"
DEBOOTSTRAP_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Base:
    """A complete base tree: ``tree`` is the root filesystem, ``key`` its cache key."""

    path: Path
    key: str

    @property
    def tree(self) -> Path:
        return self.path / "tree"


def debootstrap_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True, timeout=30
        )
    except OSError as e:
        raise TinyxError(f"cannot run dpkg-query: {e.strerror}; the image builder needs a Debian host") from e
    if out.returncode != 0 or not out.stdout.strip():
        raise TinyxError("debootstrap is not installed: apt-get install debootstrap")
    return out.stdout.strip()


def base_key(suite: str, mirror: str, variant: str, version: str) -> str:
    return cache.key("base", suite, mirror, variant, ARCH, version)


def ensure_base(
    progress: Progress,
    lock_fd: int,
    suite: str = SUITE,
    mirror: str = MIRROR,
    variant: str = VARIANT,
    root: Path = cache.BUILD,
) -> Base:
    """The cached base tree, debootstrapped first if absent (minutes; needs the network)."""
    version = debootstrap_version()
    k = base_key(suite, mirror, variant, version)
    path = cache.entry("base", k, root)
    base = Base(path, k)
    if cache.read_meta(path) is not None and (base.tree / "etc" / "debian_version").is_file():
        progress.hit("base tree", "cached", path.name)
        return base
    progress.hit("base tree", "building", f"debootstrap --variant={variant} {suite} {mirror}; a few minutes")
    tmp = cache.begin(path)
    t0 = time.monotonic()
    last = [0.0]

    def on_line(line: str) -> None:
        # debootstrap prints hundreds of lines; show the phases and a line every 10 s.
        now = time.monotonic()
        phase = line.startswith("I: ") and not line.startswith(("I: Retrieving ", "I: Validating ", "I: Extracting "))
        if phase or now - last[0] >= 10:
            last[0] = now
            progress.log(f"  debootstrap: {line.strip()[:100]}")

    try:
        run(
            ["debootstrap", f"--variant={variant}", f"--arch={ARCH}", suite, tmp / "tree", mirror],
            DEBOOTSTRAP_TIMEOUT,
            what=f"debootstrap {suite} from {mirror}",
            keep_fds=(lock_fd,),
            on_line=on_line,
        )
        # debootstrap leaves the .debs it installed in the tree: 60 MB nothing reads.
        for deb in (tmp / "tree/var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        meta = {
            "suite": suite,
            "mirror": mirror,
            "variant": variant,
            "arch": ARCH,
            "debootstrap": version,
            "seconds": round(time.monotonic() - t0, 1),
        }
        cache.publish(tmp, path, meta)
    except BaseException:
        remove_tree(tmp)  # debootstrap mounts proc and sys in its target
        raise
    progress.log(f"base tree built in {time.monotonic() - t0:.0f}s: {path.name}")
    return base

"""BusyBox for the image: Debian's busybox-static binary and its applet names, cached.

The binary is taken from the busybox-static .deb (``apt-get download``, as
tinyx/probe_boot.py does), not from the host's /bin/busybox: that may be the dynamic
``busybox`` package, and the two conflict. Cached under tinyx/build/busybox-<key>/ with
key = the version apt would download; ``applets`` lists what ``busybox --list`` says
(the image gets a /bin link for each, /bin/sh at least).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lightvm.errors import TinyxError
from tinyx.image import cache
from tinyx.image.install import host_candidate
from tinyx.image.mounts import remove_tree
from tinyx.image.proc import Progress, run

PACKAGE = "busybox-static"


@dataclass(frozen=True)
class BusyBox:
    binary: Path
    version: str
    applets: tuple[str, ...]


def ensure_busybox(progress: Progress, root: Path = cache.BUILD, version: str | None = None) -> BusyBox:
    """The cached busybox; ``version`` is the host's candidate if the caller knows it."""
    version = version or host_candidate(PACKAGE)
    if version == "(none)":
        raise TinyxError(f"apt knows no {PACKAGE} package: run apt-get update (it is in Debian main)")
    path = cache.entry("busybox", cache.key("busybox", version), root)
    meta = cache.read_meta(path)
    if meta is not None and (path / "busybox").is_file():
        progress.hit("busybox", "cached", f"{PACKAGE} {version}")
        return BusyBox(path / "busybox", version, tuple(meta["applets"]))
    progress.hit("busybox", "building", f"apt-get download {PACKAGE} {version}")
    tmp = cache.begin(path)
    try:
        run(["apt-get", "download", f"{PACKAGE}={version}"], 300, what=f"apt-get download {PACKAGE}", cwd=tmp)
        debs = list(tmp.glob(f"{PACKAGE}_*.deb"))
        if len(debs) != 1:
            raise TinyxError(f"apt-get download {PACKAGE} left {len(debs)} .deb files in {tmp}")
        run(["dpkg-deb", "-x", debs[0], tmp / "root"], 120, what=f"dpkg-deb -x {debs[0].name}")
        binary = tmp / "root/bin/busybox"
        if not binary.is_file():
            raise TinyxError(f"{debs[0].name} has no bin/busybox")
        binary.rename(tmp / "busybox")
        remove_tree(tmp / "root")
        debs[0].unlink()
        applets = sorted(set(run([tmp / "busybox", "--list"], 30, what="busybox --list").split()))
        if "sh" not in applets:
            raise TinyxError(f"{PACKAGE} {version} has no sh applet")
        cache.publish(tmp, path, {"package": PACKAGE, "version": version, "applets": applets})
    except BaseException:
        remove_tree(tmp)
        raise
    meta = json.loads((path / "entry.json").read_text())
    return BusyBox(path / "busybox", version, tuple(meta["applets"]))

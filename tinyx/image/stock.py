"""The stock Debian image of an app: the baseline ``lightvm bench tinyx`` compares Tinyx with.

What a user gets who boots the app on Debian the ordinary way: a plain ``debootstrap
bookworm`` root (the default variant, so systemd is the init), ``linux-image-cloud-amd64``
installed in it (its postinst runs initramfs-tools, which writes Debian's own initrd)
and the app's package installed from apt with its service enabled, as packaged. Only
what is needed to reach the app from outside the guest is changed, and nothing else
(docs/tinyx-bench.md, "The stock Debian baseline"):

- redis.conf: ``bind 0.0.0.0`` and ``protected-mode no`` (Debian's redis listens on
  127.0.0.1 and ::1 only, and would refuse a client from outside without a password);
- systemd-networkd enabled with a DHCP ``.network`` for ``e*`` (the debootstrap root
  configures no interface; QEMU's user networking answers DHCP with 10.0.2.15);
- /etc/hostname, and no build-time leftovers (policy-rc.d, the host's resolv.conf, apt lists,
  downloaded .debs).

Built like an app layer (tinyx/image/install.py): an overlay over the cached base tree
(tinyx/image/base.py, variant ``-``: debootstrap's default), /proc and /dev mounted in
the chroot and undone on every path, policy-rc.d so nothing starts during the install.
The root file system is a raw ext4 disk made by ``mkfs.ext4 -d`` from the merged tree
(e2fsprogs, no loop mount); the kernel (a bzImage) and initrd are copied out of /boot.

Cached as tinyx/build/stock-<key>/{vmlinuz,initrd.img,root.img}, key = (base key, the
host's candidate versions of the packages, :data:`LAYOUT`): built in ``.tmp`` and renamed
when complete, so a build killed at any point leaves nothing that looks complete.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import TinyxError
from tinyx.image import cache
from tinyx.image.base import Base, ensure_base
from tinyx.image.install import APT_OPTS, INSTALL_TIMEOUT, UPDATE_TIMEOUT, host_candidates, prepare_upper
from tinyx.image.mounts import mounted, remove_tree, unmount_under
from tinyx.image.proc import Progress, run

VARIANT = "-"  # debootstrap's default variant (required + important priorities: systemd, ifupdown...)
KERNEL_PACKAGE = "linux-image-cloud-amd64"
APP_PACKAGE = "redis-server"
PACKAGES = (KERNEL_PACKAGE, APP_PACKAGE)
SERVICE = "redis-server.service"
REDIS_CONF = "etc/redis/redis.conf"
NETWORK_FILE = "etc/systemd/network/50-lightvm-dhcp.network"
NETWORK_UNIT = "[Match]\nName=e*\n\n[Network]\nDHCP=ipv4\n"
HOSTNAME = "stock\n"
# Bumped when what the build does changes (part of the key: an old entry is not reused).
LAYOUT = "stock-1: bind 0.0.0.0, protected-mode no, networkd dhcp e*, ext4 -d"
MKFS_TIMEOUT = 600.0
DISK_SLACK = 1.25  # free space on the root disk, as a ratio of its files' bytes
DISK_EXTRA = 256 * 2**20  # plus this: logs, redis' dump, the journal
# Build-time files removed from the image (they are not what a user's system has).
LEFTOVERS = ("usr/sbin/policy-rc.d", "etc/resolv.conf", "etc/apt/apt.conf.d/99tinyx")


@dataclass(frozen=True)
class Stock:
    """A complete stock image: ``path`` holds vmlinuz, initrd.img and root.img."""

    path: Path
    key: str
    meta: dict[str, Any]

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.path / "root.img"


def stock_key(base_key: str, versions: dict[str, str]) -> str:
    return cache.key("stock", base_key, *(f"{p}={versions[p]}" for p in sorted(versions)), LAYOUT)


def open_redis(conf: str) -> str:
    """redis.conf listening on every address with protected mode off: its ``bind`` and
    ``protected-mode`` lines replaced. :raise TinyxError: a line is missing (a new
    redis.conf layout: the tweak must be looked at again)."""
    out, n_bind = re.subn(r"(?m)^bind\s.*$", "bind 0.0.0.0", conf)
    out, n_prot = re.subn(r"(?m)^protected-mode\s.*$", "protected-mode no", out)
    if not n_bind or not n_prot:
        raise TinyxError(
            f"/{REDIS_CONF} has no {'bind' if not n_bind else 'protected-mode'} line: "
            "the redis package changed its configuration; update tinyx/image/stock.py"
        )
    return out


def boot_files(boot: Path) -> tuple[Path, Path]:
    """The kernel and initrd in /boot: exactly one ``vmlinuz-*`` and its ``initrd.img-*``.

    :raise TinyxError: none or several kernels, or no initrd (initramfs-tools did not run)."""
    kernels = sorted(boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise TinyxError(f"{boot}: expected one vmlinuz-*, found {[k.name for k in kernels]}; rebuild the stock image")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.is_file():
        raise TinyxError(f"{boot}: no {initrd.name} next to {kernels[0].name} (did initramfs-tools run?)")
    return kernels[0], initrd


def tree_bytes(top: Path) -> int:
    """Bytes of the regular files below ``top`` (not following symlinks, one file system)."""
    total = 0
    dev = top.stat().st_dev
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            if st.st_mode & 0o170000 == 0o100000:
                total += st.st_size
    return total


def disk_size(files_bytes: int) -> int:
    """The raw disk's size for ``files_bytes`` of files: slack and headroom, MiB-aligned."""
    size = int(files_bytes * DISK_SLACK) + DISK_EXTRA
    return -(-size // 2**20) * 2**20


def allocated(path: Path) -> int:
    """Bytes a (sparse) file really occupies on the host."""
    return path.stat().st_blocks * 512


def _chroot(merged: Path, *argv: str) -> list[str]:
    return ["chroot", str(merged), *argv]


def _install(merged: Path, progress: Progress, lock_fd: int) -> None:
    last = [0.0]

    def on_line(line: str) -> None:
        now = time.monotonic()
        if line.startswith(("Setting up ", "Get:", "Fetched ", "E:", "W:", "update-initramfs")) and now - last[0] >= 3:
            last[0] = now
            progress.log(f"  apt: {line.strip()[:100]}")

    progress.log("apt-get update (in the chroot)")
    run(_chroot(merged, "apt-get", *APT_OPTS, "update"), UPDATE_TIMEOUT, what="apt-get update", keep_fds=(lock_fd,))
    progress.log(f"apt-get install --no-install-recommends {' '.join(PACKAGES)} (the initrd too) ...")
    run(
        _chroot(merged, "apt-get", *APT_OPTS, "-y", "--no-install-recommends", "install", *PACKAGES),
        INSTALL_TIMEOUT,
        what=f"apt-get install {' '.join(PACKAGES)}",
        keep_fds=(lock_fd,),
        on_line=on_line,
    )


def configure(root: Path) -> None:
    """The image's changes to what the packages installed (the module docstring's list),
    applied to the merged tree ``root`` after the install."""
    conf = root / REDIS_CONF
    conf.write_text(open_redis(conf.read_text()))
    unit = root / NETWORK_FILE
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(NETWORK_UNIT)
    (root / "etc/hostname").write_text(HOSTNAME)
    # lexists: the link is absolute, it points into the image, not the host
    if not os.path.lexists(root / "etc/systemd/system/multi-user.target.wants" / SERVICE):
        raise TinyxError(f"{SERVICE} is not enabled after its install: the package changed; look at it")
    for rel in LEFTOVERS:
        (root / rel).unlink(missing_ok=True)
    remove_tree(root / "var/lib/apt/lists")
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def make_disk(tree: Path, image: Path) -> int:
    """``tree`` as a raw ext4 disk at ``image`` (sparse; ``mkfs.ext4 -d``, no mount); returns
    its apparent size."""
    size = disk_size(tree_bytes(tree))
    with open(image, "wb") as f:
        f.truncate(size)
    run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-E", "root_owner=0:0", "-d", tree, image],
        MKFS_TIMEOUT,
        what=f"mkfs.ext4 -d {tree.name}",
    )
    return size


def _build(base: Base, tmp: Path, progress: Progress, lock_fd: int) -> dict[str, Any]:
    upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    prepare_upper(upper, base.tree)
    opts = f"lowerdir={base.tree},upperdir={upper},workdir={work}"
    with mounted(merged, ["-t", "overlay", "overlay", "-o", opts], "mount the overlay"):
        try:
            run(["mount", "-t", "proc", "proc", merged / "proc"], 60, what="mount /proc in the chroot")
            run(["mount", "--bind", "/dev", merged / "dev"], 60, what="bind /dev into the chroot")
            _install(merged, progress, lock_fd)
            run(_chroot(merged, "systemctl", "enable", "systemd-networkd.service"), 60, what="enable networkd")
        finally:
            unmount_under(merged / "dev")  # before mkfs -d reads the tree, and on every path
            unmount_under(merged / "proc")
        configure(merged)
        kernel, initrd = boot_files(merged / "boot")
        shutil.copyfile(kernel, tmp / "vmlinuz")
        shutil.copyfile(initrd, tmp / "initrd.img")
        progress.log("mkfs.ext4 -d: the root disk")
        apparent = make_disk(merged, tmp / "root.img")
        installed = _dpkg_versions(merged)
    remove_tree(merged)
    remove_tree(work)
    remove_tree(upper)  # the disk holds it all
    return {
        "kernel": kernel.name,
        "initrd": initrd.name,
        "disk_apparent_bytes": apparent,
        "versions": {p: installed.get(p, "?") for p in PACKAGES},
        "kernel_package": next((p for p in installed if p.startswith("linux-image-") and p[12].isdigit()), "?"),
    }


def _dpkg_versions(root: Path) -> dict[str, str]:
    from tinyx.image.install import parse_status

    return parse_status((root / "var/lib/dpkg/status").read_text(errors="replace"))


def ensure_stock(progress: Progress, lock_fd: int, root: Path = cache.BUILD) -> Stock:
    """The cached stock image, built first if absent (minutes: debootstrap, apt, initrd)."""
    base = ensure_base(progress, lock_fd, variant=VARIANT, root=root)
    versions = host_candidates(*PACKAGES)
    missing = [p for p, v in versions.items() if v == "(none)"]
    if missing:
        raise TinyxError(f"the host's apt does not know {', '.join(missing)}: run apt-get update")
    k = stock_key(base.key, versions)
    path = cache.entry("stock", k, root)
    meta = cache.read_meta(path)
    if meta is not None and all((path / f).is_file() for f in ("vmlinuz", "initrd.img", "root.img")):
        progress.hit("stock image", "cached", path.name)
        return Stock(path, k, meta)
    progress.hit("stock image", "building", ", ".join(f"{p} {v}" for p, v in versions.items()))
    t0 = time.monotonic()
    tmp = cache.begin(path)
    try:
        meta = {"base": base.key, "candidates": versions, "layout": LAYOUT, **_build(base, tmp, progress, lock_fd)}
        meta["seconds"] = round(time.monotonic() - t0, 1)
        cache.publish(tmp, path, meta)
    except BaseException:
        remove_tree(tmp)
        raise
    progress.log(f"stock image built in {meta['seconds']:.0f}s: {path.name}")
    return Stock(path, k, meta)


def build() -> Stock:
    """Lock the cache, clear a killed build's leftovers, ensure the stock image."""
    if os.geteuid() != 0:
        raise TinyxError("building the stock image needs root (debootstrap, chroot, overlayfs mounts)")
    progress = Progress()
    with cache.locked(cache.BUILD, progress) as fd:
        cache.clean_stale(cache.BUILD, progress)
        return ensure_stock(progress, fd)


def main() -> int:
    """``python -m tinyx.image.stock``: build (or find) the stock image; print its folder."""
    import signal
    import sys

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind like Ctrl-C: the build's .tmp and mounts are removed

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        stock = build()
    except TinyxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(stock.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``lightvm image build|list|rm``: Tinyx images (a Linux kernel + an app's initramfs).

The builder lives in tinyx.image and is imported only when a command runs: parsing
the command line (``lightvm --help``, every other command) must not pay for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BUILD = (
    "Build a Tinyx image of APP: a recipe name (tinyx/apps/APP.toml), a recipe file (.toml), any Debian "
    "package (its command is guessed, and said so), or a path to an ELF executable (taken with its "
    "libraries from this host). Writes DIR/{vmlinux, initramfs.cpio.lz4, APP.toml, report.json, report.txt} "
    "and, for an app with a port, DIR/snapshot (the VM booted once, what creates start from); "
    "DIR defaults to the image store's APP folder. Needs root (debootstrap, chroot, overlayfs mounts) "
    "and apt access to deb.debian.org for the first build; later builds reuse tinyx/build/."
)
IMAGE = (
    "Tinyx images: one application as a minimal Linux VM (the LightVM paper's Tinyx). `build` "
    "makes one from a Debian package (its files and the libraries it needs, BusyBox, lightvm's "
    "init) with a kernel trimmed for QEMU's microvm, and writes a VM config next to them, so "
    "`lightvm create DIR/APP.toml` boots it; lightvmd can pool it like a unikernel. "
    "The image store: $LIGHTVM_IMAGE_DIR, else /var/lib/lightvm/images as root, else "
    "${XDG_DATA_HOME:-~/.local/share}/lightvm/images."
)
LIST = "List the images of the image store: name, size on disk, app, when built."
RM = "Remove an image folder from the image store."
LOOP = (
    "The kernel trimming loop for APP (a recipe with a port and a [probe]): boot APP's image with the "
    "platform kernel, add options from tinyx/kconfig/loop-candidates.txt while the probe fails, then "
    "remove options while it passes; writes tinyx/kconfig/APP.config (used by `image build APP` from then "
    "on) and its report APP.loop.txt/.json. Each step is an incremental kernel build (one object tree per "
    "app) and a boot; every step is cached. Needs root, like image build. Same as python -m tinyx.kernel.loop."
)


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``image build|list|rm`` to the CLI's subparsers. ``parent`` (--state-dir) is
    not added: images live in the image store, not in a VM state dir."""
    image = sub.add_parser("image", help="build, list and remove Tinyx images (Linux + one app)", description=IMAGE)
    isub = image.add_subparsers(dest="image_command", metavar="{build,list,rm,kernel-loop}", required=True)
    store_help = "image store (default: $LIGHTVM_IMAGE_DIR, /var/lib/lightvm/images as root, else ~/.local/share/...)"

    p = isub.add_parser("build", help="build an image of a package, recipe or ELF file", description=BUILD)
    p.add_argument("app", metavar="APP", help="recipe name, recipe .toml, Debian package or ELF path")
    p.add_argument("-o", "--output", type=Path, metavar="DIR", help="the image folder (default: STORE/APP)")
    compress = (
        "initramfs compression (default lz4: half the size of none and as fast to boot under TCG; "
        "creates from the snapshot never unpack it; gzip is smaller and boots slower)"
    )
    p.add_argument("--compress", choices=("none", "gzip", "lz4"), default="lz4", help=compress)
    p.add_argument("--rebuild", action="store_true", help="reinstall the package instead of using its cache")
    p.add_argument("--init", type=Path, metavar="LVINIT", help="use this static init instead of building tinyx/init")
    p.add_argument("--json", action="store_true", help="print the build report as JSON on stdout")
    no_snapshot = "do not boot the image once to keep it as DIR/snapshot (what one-shot creates start from)"
    p.add_argument("--no-snapshot", action="store_true", help=no_snapshot)
    accel = "the snapshot's accelerator: its VMs must run under the same (default: auto, as create)"
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help=accel)
    p.set_defaults(func=cmd_build)

    p = isub.add_parser("list", help="list built images", description=LIST)
    p.add_argument("--store", type=Path, metavar="DIR", help=store_help)
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_list)

    p = isub.add_parser("rm", help="remove an image", description=RM)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--store", type=Path, metavar="DIR", help=store_help)
    p.set_defaults(func=cmd_rm)

    p = isub.add_parser("kernel-loop", help="trim APP's kernel config with boots and its probe", description=LOOP)
    p.add_argument("app", metavar="APP", help="recipe name (tinyx/apps/APP.toml) with a port and a [probe]")
    p.add_argument("--image", type=Path, metavar="DIR", help="an image folder of APP (default: build one)")
    p.add_argument("--max-trims", type=int, metavar="N", help="try at most N trim candidates (bounds the time)")
    p.add_argument("--jobs", type=int, default=2, help="make -j (default 2)")
    p.set_defaults(func=cmd_kernel_loop)


def cmd_build(args: argparse.Namespace) -> int:
    from tinyx.image.build import Options, build

    folder, report = build(
        Options(
            app=args.app,
            out=args.output,
            compress=args.compress,
            rebuild=args.rebuild,
            init=args.init,
            quiet=args.quiet,  # the global -q: no progress lines on stderr
            snapshot=not args.no_snapshot,
            accel=args.accel,
        )
    )
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    ini = report["initramfs"]
    print(f"{report['name']}: {folder}")
    ker = report["kernel"]
    print(
        f"  kernel     {ker['bytes'] / 1e6:7.2f} MB  vmlinux, packed (linked: {ker['vmlinux_bytes'] / 1e6:.2f} MB; "
        f"QEMU loads {ker['loaded_bytes'] / 1e6:.2f} MB)"
    )
    print(f"  initramfs  {ini['bytes'] / 1e6:7.2f} MB  {ini['file']} ({ini['members']} members)")
    print(f"  together   {report['kernel_plus_initramfs_bytes'] / 1e6:7.2f} MB")
    print(f"  packages   {len(report['packages'])}, libraries {len(report['libraries'])}")
    cache = ", ".join(f"{k} {v}" for k, v in report["cache"].items())
    print(f"  built in   {report['total_seconds']:.1f} s (cache: {cache})")
    if report["guessed"]:
        print("  GUESSED (see report.txt): " + "; ".join(report["guessed"]), file=sys.stderr)
    snap = report.get("snapshot") or {}
    if snap.get("folder"):
        print(
            f"  snapshot   {snap['folder']}/: booted once ({snap['accel']}, READY in {snap['boot_ready_ms']:.0f} ms),"
            f" {snap['ram_used_bytes'] / 2**20:.0f} MiB of RAM kept; creates start from it"
        )
    else:
        print(f"  snapshot   none ({snap.get('why', 'not made')})")
    print(f"  boot it:   lightvm create {folder / (report['name'] + '.toml')}")
    return 0


def cmd_kernel_loop(args: argparse.Namespace) -> int:
    from tinyx.kernel.loop import main

    argv = [args.app, "--jobs", str(args.jobs)]
    if args.image is not None:
        argv += ["--image", str(args.image)]
    if args.max_trims is not None:
        argv += ["--max-trims", str(args.max_trims)]
    return main(argv)


def _store(args: argparse.Namespace) -> Path:
    from tinyx.image import store

    return Path(args.store) if args.store else store.default_dir()


def cmd_list(args: argparse.Namespace) -> int:
    from tinyx.image import store

    images = store.list_images(_store(args))
    if args.json:
        print(json.dumps(images, indent=1))
        return 0
    if not images:
        print(f"no images in {_store(args)}")
        return 0
    print(f"{'NAME':<24} {'SIZE':>9} {'INITRAMFS':>10}  {'APP':<36} BUILT")
    for i in images:
        ini = f"{i['initramfs_bytes'] / 1e6:.2f}M" if i.get("initramfs_bytes") else "-"
        print(f"{i['name']:<24} {i['bytes'] / 1e6:8.2f}M {ini:>10}  {i['app']:<36} {i['built_at']}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from tinyx.image import store

    folder = store.remove(_store(args), args.name)
    print(
        json.dumps({"name": args.name, "action": "removed", "folder": str(folder)})
        if args.json
        else f"removed {folder}"
    )
    return 0

"""The image build pipeline: APP -> DIR/{vmlinux, initramfs.cpio, APP.toml, report.*}.

    recipe -> init -> kernel -> base tree -> apt install -> busybox -> assemble -> pack -> output -> snapshot

The last step boots the image once and keeps that VM, serving, as DIR/snapshot
(lightvm/mobility/snapshot.py): a one-shot ``lightvm create`` starts from it instead of
booting. Apps without a port (run to completion) get none, nor does ``--no-snapshot``.

Each cached step says "cached" or "building" on stderr and in the report. The cache
steps (kernel, base tree, apt install, busybox) run under the cache lock; assembly
mounts the app's layer over the base tree read-only (overlayfs, upper:base as lower
layers) to resolve libraries in the merged tree, and always unmounts it again.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError, TinyxError
from tinyx.image import appconf, cache, kpack, pack, store
from tinyx.image.assemble import Assembled, assemble, owners_of
from tinyx.image.base import Base, ensure_base
from tinyx.image.busybox import PACKAGE as BUSYBOX
from tinyx.image.busybox import ensure_busybox
from tinyx.image.install import App, ensure_app, host_candidates
from tinyx.image.kernel import platform_kernel
from tinyx.image.mounts import mounted, remove_tree
from tinyx.image.output import begin, check_dest, publish, spec_text, write_report
from tinyx.image.owners import Owners
from tinyx.image.proc import Progress
from tinyx.image.recipe import Recipe, complete_generated, resolve


@dataclass(frozen=True)
class Options:
    app: str
    out: Path | None = None
    compress: str = pack.DEFAULT  # the initramfs format (lz4; pack.py says why)
    rebuild: bool = False
    init: Path | None = None  # an lvinit binary to use instead of building tinyx/init
    quiet: bool = False
    snapshot: bool = True  # boot the image once and keep it as DIR/snapshot (an app with a port)
    accel: str = "auto"  # the snapshot's accelerator: the one its VMs will run under


def init_binary(override: Path | None) -> Path:
    """The static init: ``override`` if given, else tinyx/init's build_init()."""
    if override is not None:
        if not override.is_file():
            raise TinyxError(f"--init {override}: no such file")
        return override
    try:
        from tinyx.init import build_init  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise TinyxError(
            f"the Tinyx init is not available ({e}); this checkout needs tinyx/init (build_init), "
            "or pass --init PATH to a static lvinit"
        ) from e
    try:
        path: Path = build_init()
    except LightVMError:
        raise  # tinyx.init's own error (a LightVMError) already says what to do
    except Exception as e:  # anything else: one line that says what to do
        raise TinyxError(f"building the Tinyx init failed: {e}; run make -C tinyx/init to see why") from e
    return Path(path)


def _cache_steps(
    recipe: Recipe, opts: Options, progress: Progress, fd: int, versions: dict[str, str]
) -> tuple[Base | None, App | None]:
    if recipe.package is None:
        return None, None
    with progress.step("base tree"):
        base = ensure_base(progress, fd)
    with progress.step("apt install"):
        app = ensure_app(base, recipe.package, progress, fd, opts.rebuild, versions[recipe.package])
    return base, app


def _assemble_and_pack(
    recipe: Recipe,
    base: Base | None,
    app: App | None,
    progress: Progress,
    tmp_out: Path,
    compress: str,
    init: Path,
    busybox_version: str | None,
) -> tuple[Assembled, list[dict[str, Any]], Path, int]:
    bb = None
    if busybox_version is not None:  # None: the recipe says busybox = false
        with progress.step("busybox"):
            bb = ensure_busybox(progress, version=busybox_version)
    work = cache.BUILD / f"assemble-{os.getpid()}.tmp"
    remove_tree(work)
    merged = work / "merged"
    merged.mkdir(parents=True)
    try:
        ctx: AbstractContextManager[Path]
        if base is not None and app is not None:
            lower = f"lowerdir={app.upper}:{base.tree}"
            ctx = mounted(merged, ["-t", "overlay", "overlay", "-o", f"ro,{lower}"], "mount the merged tree")
            users, groups = list(app.meta.get("users", [])), list(app.meta.get("groups", []))
        else:
            ctx = nullcontext(Path("/"))
            users, groups = [], []
        with ctx as root:
            with progress.step("assemble"):
                owners = Owners(app.upper, base.tree) if app and base else Owners(Path("/"))
                installed = dict(app.meta.get("installed", {})) if app else {}
                done = assemble(recipe, root, app.upper if app else None, bb, init, users, groups, owners, installed)
                libs = owners_of(done.closure, owners)
                if recipe.host_elf is not None:
                    done.host_owner = owners.describe(str(recipe.host_elf))
            progress.log(
                f"image tree: {len(done.tree.items)} members, {len(done.elves)} ELF files, "
                f"{len(libs)} libraries, {done.pruned} pruned paths"
            )
            with progress.step("pack"):
                raw = tmp_out / "initramfs.cpio"
                raw_bytes = pack.write_cpio(done.tree, raw)
            progress.log(f"initramfs.cpio: {raw_bytes / 1e6:.2f} MB")
    finally:
        remove_tree(work)
    with progress.step("compress"):
        initrd = pack.compress(raw, compress)
    if compress != "none":
        progress.log(f"{initrd.name}: {initrd.stat().st_size / 1e6:.2f} MB")
    return done, libs, initrd, raw_bytes


def _report(
    recipe: Recipe,
    app: App | None,
    base: Base | None,
    done: Assembled,
    libs: list[dict[str, Any]],
    initrd: Path,
    raw_bytes: int,
    kernel: Path,
    ksizes: dict[str, int],
    progress: Progress,
) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    by_origin: dict[str, int] = {}
    for it in done.tree.items.values():
        kinds[it.kind] = kinds.get(it.kind, 0) + 1
        by_origin[it.origin] = by_origin.get(it.origin, 0) + it.nbytes
    installed = dict(app.meta.get("installed", {})) if app else {}
    return {
        "name": recipe.name,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "app": {
            "origin": recipe.origin,
            "package": recipe.package,
            "version": installed.get(recipe.package or "", None),
            "host_file_owner": done.host_owner,
            "command": list(recipe.command),
            "port": recipe.port,
            "probe": {"send": recipe.probe.send, "expect": recipe.probe.expect} if recipe.probe else None,
            "memory": recipe.memory,
            "busybox": recipe.busybox,
            "app_conf_name": appconf.app_name(recipe.name),
        },
        "guessed": list(recipe.guessed),
        "notes": [*progress.notes, *done.tree.notes],
        # bytes: the shipped file (kpack: no symbols, no padding); vmlinux_bytes: the
        # kernel as linked; loaded_bytes: what QEMU copies into guest memory from the file
        "kernel": {
            "source": str(kernel),
            "bytes": ksizes["file_bytes"],
            "vmlinux_bytes": ksizes["vmlinux_bytes"],
            "loaded_bytes": ksizes["loaded_bytes"],
            "vmlinux_loaded_bytes": ksizes["vmlinux_loaded_bytes"],
        },
        "kernel_plus_initramfs_bytes": ksizes["file_bytes"] + initrd.stat().st_size,
        "initramfs": {
            "file": initrd.name,
            "bytes": initrd.stat().st_size,
            "uncompressed_bytes": raw_bytes,
            "sha256": pack.sha256(initrd),
            "members": len(done.tree.items),
            "kinds": dict(sorted(kinds.items())),
            "bytes_by_origin": dict(sorted(by_origin.items(), key=lambda kv: -kv[1])),
            "elf_files": done.elves,
            "busybox_applet_links": done.applets,
            "pruned_paths": done.pruned,
        },
        "packages": installed,
        "libraries": libs,
        "users": list(app.meta.get("users", [])) if app else [],
        "base": {"key": base.key, **(cache.read_meta(base.path) or {})} if base else None,
        "app_cache": app.path.name if app else None,
        "steps": dict(progress.steps),
        "cache": dict(progress.cache),
        "total_seconds": round(time.monotonic() - progress.start, 2),
    }


def _snapshot(opts: Options, recipe: Recipe, spec: Path, progress: Progress) -> dict[str, Any]:
    """Boot the image's VM once from ``spec`` and keep it as ``snapshot/`` beside it; what the
    report says of it (``folder`` absent: none made, and ``why``).

    :raise TinyxError: the boot or the snapshot failed (the caller removes the partial image).
    """
    if not opts.snapshot:
        return {"why": "--no-snapshot"}
    if not recipe.port:
        return {"why": "the app has no port: a VM that runs to completion starts from its boot"}
    from lightvm.mobility.snapshot import SNAPSHOT, make_snapshot

    progress.log(f"snapshot: booting the image once ({opts.accel}), to keep it serving as {SNAPSHOT}/")
    with progress.step("snapshot"):
        try:
            probe = (recipe.port, recipe.probe.send.encode(), recipe.probe.expect.encode()) if recipe.probe else None
            made = make_snapshot(spec, spec.parent / SNAPSHOT, accel=opts.accel, probe=probe)
        except LightVMError as exc:
            hint = "`lightvm image build --no-snapshot` builds the image without one"
            raise TinyxError(f"snapshot: {exc} ({hint})") from exc
    progress.log(
        f"snapshot: READY in {made['boot_ready_ms']:.0f} ms, kept in {made['seconds']:.1f} s "
        f"({made['ram_used_bytes'] / 2**20:.0f} MiB of RAM written)"
    )
    return made


def build(opts: Options) -> tuple[Path, dict[str, Any]]:
    """Build the image of ``opts.app``; returns (its folder, the report)."""
    progress = Progress(quiet=opts.quiet)
    pack.check_tool(opts.compress)  # before minutes of work
    with progress.step("recipe"):
        recipe = resolve(opts.app)
    progress.log(f"{recipe.name}: {recipe.origin}" + (f", package {recipe.package}" if recipe.package else ""))
    dest = (opts.out or store.default_dir() / recipe.name).absolute()
    check_dest(dest)  # before minutes of work, and again when writing
    if recipe.package is not None and os.geteuid() != 0:
        raise TinyxError(
            f"building an image of package {recipe.package} needs root (debootstrap, chroot, overlayfs mounts): "
            "run lightvm image build as root"
        )
    with cache.locked(cache.BUILD, progress) as fd:
        cache.clean_stale(cache.BUILD, progress)
        with progress.step("init"):  # first: a missing init fails before minutes of apt
            init = init_binary(opts.init)
        with progress.step("kernel"):
            kernel, _ = platform_kernel(progress, recipe.name)
        with progress.step("kernel pack"):
            shipped, ksizes, state = kpack.packed_kernel(kernel, cache.BUILD)
            progress.cache["kernel pack"] = state
        with progress.step("apt-cache policy"):
            versions = host_candidates(*(p for p in (recipe.package, BUSYBOX if recipe.busybox else None) if p))
        base, app = _cache_steps(recipe, opts, progress, fd, versions)
        if recipe.generated:
            assert app is not None
            recipe = complete_generated(recipe, app.upper)
        for g in recipe.guessed:  # the report lists them under "guessed"
            progress.note(g, record=False)
        tmp_out = begin(dest)
        try:
            done, libs, initrd, raw_bytes = _assemble_and_pack(
                recipe, base, app, progress, tmp_out, opts.compress, init, versions.get(BUSYBOX)
            )
            with progress.step("output"):
                shutil.copyfile(shipped, tmp_out / "vmlinux")
                spec = tmp_out / f"{recipe.name}.toml"
                what = f"package {recipe.package}" if recipe.package else f"host file {recipe.host_elf}"
                text = spec_text(recipe.name, what, dest / spec.name, initrd.name, recipe.memory, recipe.port)
                spec.write_text(text)
            snap = _snapshot(opts, recipe, spec, progress)
            if snap.get("folder"):
                spec.write_text(spec_text(recipe.name, what, dest / spec.name, initrd.name, recipe.memory,
                                          recipe.port, snapshot=snap["folder"]))  # fmt: skip
            report = _report(recipe, app, base, done, libs, initrd, raw_bytes, kernel, ksizes, progress)
            report["snapshot"] = snap
            write_report(tmp_out, report)
            publish(tmp_out, dest)
        except BaseException:
            remove_tree(tmp_out)
            raise
    progress.log(
        f"done in {report['total_seconds']:.1f}s: {dest} (initramfs {report['initramfs']['bytes'] / 1e6:.2f} MB, "
        f"kernel {report['kernel']['bytes'] / 1e6:.2f} MB)"
    )
    return dest, report

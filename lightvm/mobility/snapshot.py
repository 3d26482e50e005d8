"""Image snapshots: a VM booted once to READY and kept as a template beside its image, so
that a create starts the app already serving instead of booting it again.

Why: under TCG a Tinyx redis takes ~0.9 s from create to serving, because every
instruction of Linux and of redis runs for the first time and is translated first
(docs/tinyx-size.md). A template of that VM once booted (lightvm/mobility/template.py)
starts by mapping its RAM file private and loading ~80 KB of device state: the guest goes
on where the snapshot left it, with the app accepting connections.

``lightvm image build`` makes one (``DIR/snapshot``, :func:`make_snapshot`) unless told
``--no-snapshot``, and the VM spec it writes names it (``snapshot = "snapshot"``). A
one-shot ``lightvm create`` of a spec with a snapshot starts from it when it fits
(:func:`create_from_snapshot`: "path: snapshot"); when it does not, the create boots and
says why ("path: cold (snapshot not used: ...)"); ``--no-snapshot`` boots anyway. What must
fit, checked before anything is spawned (:func:`unfit_reason`, then the template's own
check):

- the image's files: the kernel, initramfs and firmware of the spec have the digests the
  snapshot was made with (its own folder's files, wherever the folder has moved);
- the QEMU binary this host runs is the one that made it (its device state loads only there);
- memory, vCPUs and command line as made; the same number of NICs; no disks;
- user NICs without a fixed address or MAC; NICs on a lightvm network or bridge only when
  the snapshot's guest configures a NIC again after a page rewrite (the header's note
  :data:`TAKES_VIFS`, which ``lightvm image build`` sets: lvinit does);
- the accelerator: the one this create would run is the one the snapshot was made under.

Each VM from the snapshot gets its own name, uuid and the spec's ``publish`` forwards (on
user networking the snapshot's MAC: every VM has a network of its own); on a tap network
its own tap, leased address and MAC, made as a create makes them (the stream's state of
the snapshot's user netdev goes into a restricted netdev with no device:
:func:`_slirp_sinks`). The page's generation moves, so the Tinyx init re-bases the wall
clock, takes the hostname, reseeds the kernel's random state from the page's new uuid and
gives each changed NIC its new address, gateway, MTU and MAC (tinyx/init/main.c
``take_identity``) before it acknowledges. What VMs started from one snapshot
still share is the app's own state from before the snapshot: redis's hash seed and run id,
for one (docs/tinyx.md, "Snapshots"). ``--no-snapshot`` (or an image built with it) boots a
VM of its own from scratch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError, SpecError
from lightvm.mobility.clone import PREPARE_JOBS, start_all
from lightvm.mobility.format import CheckpointError, read_layout
from lightvm.mobility.restore import PreparedRestore
from lightvm.mobility.template import (
    STATE,
    TemplateError,
    create_template,
    image_files,
    is_template,
    prepare_from_template,
    remembered_digests,
    without_forwards,
)
from lightvm.spec import VMSpec
from lightvm.toolstack import Toolstack
from lightvm.util import owner_gone

SNAPSHOT = "snapshot"  # the folder beside an image's files, and the spec key's value
# In the template header's note: the snapshot's guest (lvinit) configures a NIC again when
# a page rewrite changes its vif, so a VM from it may get a tap, an address and a MAC of its own.
TAKES_VIFS = "guest_takes_vifs"


class SnapshotUnfit(LightVMError):
    """The spec's snapshot cannot start this create (the message says why); it boots instead."""


def unfit_reason(spec: VMSpec, meta: dict[str, Any], accel: str) -> str | None:
    """Why the snapshot whose header is ``meta`` cannot start a VM of ``spec`` under
    ``accel`` (the accelerator this create runs), or None when it fits as far as the
    header tells (the files' digests are the template check's part)."""
    saved = meta.get("spec") or {}
    if spec.disks:
        return "the VM has disks, and a snapshot holds none"
    for key, want in (("memory", spec.memory_mib), ("vcpus", spec.vcpus), ("cmdline", spec.cmdline)):
        if saved.get(key) != want:
            return f"{key} is {want!r} here, {saved.get(key)!r} in the snapshot"
    mine = set(image_files(spec.to_dict()))
    theirs = set(image_files(saved))
    if mine != theirs:
        return f"the image has {', '.join(sorted(mine))}, the snapshot was made of {', '.join(sorted(theirs))}"
    vifs = list(meta.get("vifs") or [])
    if len(vifs) != len(spec.vifs):
        return f"{len(spec.vifs)} NICs here, {len(vifs)} in the snapshot"
    takes_vifs = bool(((meta.get("template") or {}).get("note") or {}).get(TAKES_VIFS))
    for i, (vif, made) in enumerate(zip(spec.vifs, vifs, strict=True)):
        if made.get("mode") != "user":
            return f"vif {i} was on a tap network when the snapshot was made (a snapshot is made on user networking)"
        if vif.network or vif.bridge:
            if not takes_vifs:
                return (
                    f"vif {i} is on a tap network, and this snapshot's guest does not take a new address after"
                    " its start (made by an older lightvm: build the image again)"
                )
            continue  # its own tap, lease and MAC: the guest takes them from its page (tinyx/init)
        if vif.ip or vif.gateway:
            return f"vif {i} sets an address; user networking gives the guest {made.get('ip')}"
        if vif.mac:
            return f"vif {i} sets a MAC; on user networking a VM from a snapshot keeps the snapshot's"
        if vif.mtu is not None and vif.mtu != made.get("mtu") and not takes_vifs:
            return f"vif {i} MTU is {vif.mtu} here, {made.get('mtu')} in the snapshot"
    if meta.get("accel") != accel:
        return f"it was made under {meta.get('accel')}, this create runs {accel}"
    if meta.get("paused"):
        return "it was saved paused"
    return None


def _with_forwards(meta: dict[str, Any], spec: VMSpec) -> dict[str, Any]:
    """``meta`` (a clone's header: no forwards) with the spec's ``publish`` forwards on
    each user netdev, in QEMU's args and in the device entries the VM's record keeps."""
    from lightvm.devices.net import parse_publish

    args = list(meta.get("qemu_args") or [])
    netdevs = [j for j in range(1, len(args)) if args[j - 1] == "-netdev" and args[j].startswith("user,")]
    for i, vif in enumerate(spec.vifs):
        forwards = [parse_publish(p, f"vifs[{i}].publish") for p in vif.publish]
        if forwards and i < len(netdevs):
            args[netdevs[i]] = ",".join([args[netdevs[i]], *(f.hostfwd() for f in forwards)])
        meta["vifs"][i]["publish"] = [asdict(f) for f in forwards]
    meta["qemu_args"] = args
    return meta


def _slirp_sinks(meta: dict[str, Any]) -> list[str]:
    """A netdev-only user network per user NIC of the snapshot, restricted (no traffic in or
    out) and attached to no device: QEMU saved each user netdev's state ("slirp" sections)
    in the stream and refuses a stream with a section nothing here loads ("Invalid
    argument"). Measured: a VM on a tap network does not start from the snapshot without them."""
    users = [v for v in meta.get("vifs") or [] if v.get("mode") == "user"]
    return [a for i in range(len(users)) for a in ("-netdev", f"user,id=snapshot-slirp{i},restrict=on")]


def _page_takes_devices(prepared: PreparedRestore, meta: dict[str, Any]) -> None:
    """The page of a VM from the snapshot whose NICs were made as a create makes them: each
    vif's address, gateway, MTU and MAC from its new device, and as ``dev_mac`` the MAC the
    snapshot's guest gave its NIC (lvinit finds the NIC by it and changes it)."""
    from lightvm.mobility.format import vif_config
    from lightvm.noxs import parse_mac

    made = list(prepared.record.devices.get("vifs") or [])
    old = [parse_mac(str(v["mac"])) for v in meta["vifs"]]
    vifs = [dataclasses.replace(vif_config(d), dev_mac=old[i]) for i, d in enumerate(made)]
    prepared.page = dataclasses.replace(prepared.page, vifs=vifs)


def _network_line(meta: dict[str, Any]) -> str:
    """The create's networking line (lightvm/devices/net.py ``summary``'s shape), from the header."""
    from lightvm.devices.net import PortForward

    parts = []
    for vif in meta.get("vifs") or []:
        fwd = ", ".join(str(PortForward(**p)) for p in vif.get("publish") or [])
        parts.append(
            f"vif{vif['index']}: {vif['ip']}/{vif['prefix']} gw {vif['gateway']} mac {vif['mac']} "
            f"(user networking{', publish ' + fwd if fwd else ''})"
        )
    return "networking: user; " + "; ".join(parts) if parts else "networking: none (no vifs)"


def create_from_snapshot(
    toolstack: Toolstack,
    spec: VMSpec,
    name: str | None = None,
    count: int = 1,
    accel: str = "auto",
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Start ``count`` VMs of ``spec`` from its snapshot, named as ``Toolstack.create``
    names them; all or none. Results have ``create``'s shape plus ``path: snapshot``.

    :raise SnapshotUnfit: the snapshot is missing, damaged or does not fit (nothing spawned).
    :raise ExistsError: a name is taken.
    :raise LightVMError: a VM failed to come back (none of this call is left).
    """
    from lightvm import accel as accelmod
    from lightvm.spec import create_names

    folder = spec.snapshot
    if folder is None or not is_template(folder):
        raise SnapshotUnfit(f"no snapshot at {folder} (`lightvm image build` makes one)")
    names = create_names(name or spec.name, count)
    choice = accelmod.select(accel)
    try:
        meta, layout = read_layout(folder / STATE)
    except CheckpointError as exc:
        raise SnapshotUnfit(str(exc)) from exc
    reason = unfit_reason(spec, meta, choice.accel)
    if reason is not None:
        raise SnapshotUnfit(reason)
    image = image_files(spec.to_dict())
    taps = any(v.network or v.bridge for v in spec.vifs)
    vms = []
    for vm_name in names:
        # The header keeps the snapshot's name: restore gives a VM named otherwise a new uuid.
        one = copy.deepcopy(meta)
        one["spec"] = spec.with_name(vm_name).to_dict()
        if taps:  # devices made as a create makes them (taps, leases, MACs, forwards), not the snapshot's
            one["vifs"], one["qemu_args"] = [], []
            one["qemu_args_extra"] = _slirp_sinks(meta)
        else:
            # User networking: the snapshot's MAC is kept (every VM has a network of its own;
            # a MAC change is ~25 ms of guest code run for the first time under TCG).
            one["qemu_args"] = without_forwards(list(one.get("qemu_args") or []))
            one = _with_forwards(one, spec)
        vms.append((vm_name, one))
    networks: dict[str, str] = {}

    def prepare(tdir: Path, vm_name: str, one: dict[str, Any]) -> PreparedRestore:
        prepared = prepare_from_template(toolstack, tdir, vm_name, timeout, meta=one, image=image)[0]
        if taps:
            _page_takes_devices(prepared, meta)
            networks[vm_name] = str(prepared.record.devices.get("summary", ""))
        return prepared

    toolstack.state.ensure()
    with remembered_digests(toolstack.state.root):
        try:
            made = start_all(toolstack, folder, vms, int(layout.offset), PREPARE_JOBS, prepare)
        except TemplateError as exc:  # refused by the check, before any QEMU started
            raise SnapshotUnfit(str(exc)) from exc
    return [
        {
            "name": r.name,
            "id": r.id,
            "accel": choice.accel,
            "pid": r.pid,
            "app": r.app,
            "network": networks.get(r.name) or _network_line(one),
            "boot_ms": {"ready": round(r.restore_ms, 3), "restore": round(r.restore_ms, 3)},
            "accel_reason": choice.reason,
            "path": "snapshot",
            "path_reason": str(folder),
        }
        for r, (_, one) in zip(made, vms, strict=True)
    ]


def create_or_boot(
    toolstack: Toolstack,
    spec: VMSpec,
    name: str | None = None,
    count: int = 1,
    accel: str = "auto",
    timeout: float = 10.0,
    jobs: int | None = None,
    use_snapshot: bool = True,
    progress: Callable[[dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """A create of a spec that names a snapshot, one-shot or in lightvmd when no shell
    served it: from the snapshot when it fits (``path: snapshot``), else booted by
    ``Toolstack.create`` (``path: cold``, ``path_reason`` saying why the snapshot was not
    used). ``progress(result, done, count)`` as ``Toolstack.create``'s, with dicts.

    :raise ExistsError, SpecError, LightVMError: as ``Toolstack.create``.
    """
    why = "--no-snapshot"
    if use_snapshot:
        try:
            started = create_from_snapshot(toolstack, spec, name, count, accel, timeout)
        except SnapshotUnfit as exc:
            why = str(exc)
        else:
            for i, result in enumerate(started):
                if progress is not None:
                    progress(result, i + 1, len(started))
            return started
    said = {"path": "cold", "path_reason": f"snapshot not used: {why}"}
    booted = toolstack.create(
        spec,
        name=name,
        count=count,
        accel=accel,
        jobs=jobs,
        progress=(lambda r, done, n: progress({**r.as_dict(), **said}, done, n)) if progress is not None else None,
    )
    return [{**r.as_dict(), **said} for r in booted]


BOOT_PREFIX = "lightvm-snapshot-"  # + the building process's pid + "-": its private state dir


def clean_stale_boots() -> list[str]:
    """Destroy the VMs of snapshot boots whose building process is gone (killed with -9
    mid-boot: its ``finally`` never ran) and remove their state dirs; the names removed."""
    gone = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            pid = entry.name[len(BOOT_PREFIX) :].split("-", 1)[0]
            if not (entry.name.startswith(BOOT_PREFIX) and entry.is_dir(follow_symlinks=False)):
                continue
            if not owner_gone(pid):
                continue  # its builder is alive (another build running now)
            with contextlib.suppress(LightVMError, OSError):
                Toolstack(Path(entry.path)).destroy_all()
            shutil.rmtree(entry.path, ignore_errors=True)
            gone.append(entry.name)
    return gone


def make_snapshot(
    spec_path: Path,
    dest: Path,
    accel: str = "auto",
    timeout: float = 60.0,
    probe: tuple[int, bytes, bytes] | None = None,
) -> dict[str, Any]:
    """Boot the VM of ``spec_path`` once in a private state dir, wait for READY (the app
    serving) and keep it as the template ``dest``; the VM and its state dir are removed on
    every path. Returns what the image report keeps (sizes, times, accelerator).

    ``probe`` (guest port, request, expected answer: the recipe's): answered once through
    a forward on 127.0.0.1 before the snapshot is taken, so that what a first client costs
    the guest once (its ARP entry for the gateway, the app's first connection) is behind
    every VM started from it. A snapshot holds no host port: each VM started from it gets
    the ones its own spec publishes.

    :raise SpecError: the spec cannot make a snapshot (a tap network, disks).
    :raise LightVMError: the boot, the probe or the template failed (``dest`` is not left).
    """
    from lightvm.spec import load_spec
    from lightvm.tcpprobe import free_port, wait_serving

    spec = load_spec(spec_path)
    if spec.disks or any(v.network or v.bridge for v in spec.vifs):
        raise SpecError(f"{spec_path}: a snapshot is made of a VM on user networking without disks")
    clean_stale_boots()
    host_port = 0
    if probe is not None and spec.vifs:
        host_port = free_port()
        spec = spec.with_publish([f"127.0.0.1:{host_port}:{probe[0]}"])
    state = Path(tempfile.mkdtemp(prefix=f"{BOOT_PREFIX}{os.getpid()}-"))
    t0 = time.perf_counter()
    try:
        ts = Toolstack(state, boot_timeout=timeout)
        (booted,) = ts.create(spec, accel=accel)
        t_ready = time.perf_counter()
        try:
            if probe is not None and host_port:
                wait_serving(host_port, probe[1], probe[2], t_ready, timeout)
            made = create_template(ts, booted.name, dest, timeout=timeout, note={TAKES_VIFS: True})
        finally:
            with contextlib.suppress(LightVMError, OSError):
                ts.destroy(booted.name)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return {
        "folder": dest.name,
        "accel": booted.accel,
        "boot_ready_ms": round(booted.boot_ms.get("ready") or 0.0, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "template_ms": round(made.build_ms, 1),
        "ram_bytes": made.ram_bytes,
        "ram_used_bytes": os.stat(dest / "ram").st_blocks * 512,
        "state_bytes": made.state_bytes,
        "boot_seconds": round(t_ready - t0, 2),
        "probed": bool(host_port),
    }


__all__ = [
    "SNAPSHOT",
    "SnapshotUnfit",
    "clean_stale_boots",
    "create_from_snapshot",
    "create_or_boot",
    "make_snapshot",
    "unfit_reason",
]

"""The image folder: vmlinux, the initramfs, a lightvm VM spec and the build report.

The folder is written as DIR.tmp and renamed into place at the end; an existing DIR
(an older build) is swapped out only then, so a failed or interrupted build leaves the
previous image intact and no half-written folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightvm.errors import TinyxError
from tinyx.image.mounts import remove_tree

SPEC = """\
# lightvm VM spec of the Tinyx image {name} ({what}), written by `lightvm image build`.
# Boot it with: lightvm create {path}
name = "{name}"
kernel = "vmlinux"
initrd = "{initrd}"
memory = "{memory}M"
{snapshot}
# A NIC, so that the host can reach the app{port_note}. As it is, QEMU user
# networking (rootless): publish the port with `lightvm create ... --publish{publish}`.
# On a lightvm network instead (root), name it here:
#   network = "lightvm0"      # made with: lightvm network create lightvm0 --subnet 10.10.0.0/24
#   ip = "10.10.0.2"          # optional: else the network's allocator picks one
[[vifs]]
"""


SNAPSHOT_NOTE = """# The image's VM booted once and kept serving (`lightvm create` starts from it when the VM
# fits it: user networking, this memory; else it boots and says why; --no-snapshot boots).
snapshot = "{folder}"
"""


def spec_text(name: str, what: str, path: Path, initrd: str, memory: int, port: int, snapshot: str = "") -> str:
    port_note = f" (it serves TCP port {port})" if port else ""
    publish = f" 127.0.0.1:{port}:{port}" if port else " HOSTPORT:GUESTPORT"
    snap = SNAPSHOT_NOTE.format(folder=snapshot) if snapshot else ""
    return SPEC.format(
        name=name, what=what, path=path, initrd=initrd, memory=memory, port_note=port_note, publish=publish,
        snapshot=snap,
    )  # fmt: skip


IMAGE_FILES = ("report.json", "report.txt", "vmlinux")


def check_dest(dest: Path) -> None:
    """Refuse to replace a folder that is not an image folder: ``-o ~`` must not move a
    home directory away. An empty folder, or one holding an earlier report.json, is fine."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise TinyxError(f"{dest} exists and is not a folder; give the path of a new or an image folder")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "report.json").is_file():
        raise TinyxError(
            f"{dest} is a folder that holds no Tinyx image (no report.json) and would be replaced; "
            "give a new folder (or an image's folder) with -o"
        )


def begin(dest: Path) -> Path:
    check_dest(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, dest: Path) -> None:
    """Swap ``tmp`` in as ``dest``; the old ``dest`` is removed only once the new one is in."""
    old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        if old.exists() and not dest.exists():
            os.rename(old, dest)
        raise
    remove_tree(old)


def _mb(n: int | None) -> str:
    return f"{n / 1e6:.2f} MB" if n is not None else "-"


def _snapshot_line(snap: dict[str, Any]) -> str:
    if not snap.get("folder"):
        return f"snapshot:   none ({snap.get('why', 'not made')})"
    return (
        f"snapshot:   {snap['folder']}/, the VM booted once under {snap['accel']} (READY in "
        f"{snap['boot_ready_ms']:.0f} ms): {_mb(snap['ram_used_bytes'])} of RAM written, "
        f"{_mb(snap['state_bytes'])} of device state; one-shot creates start from it"
    )


def report_text(r: dict[str, Any]) -> str:
    """The human-readable report.txt."""
    app, ini, ker = r["app"], r["initramfs"], r["kernel"]
    version = app.get("version") or app.get("host_file_owner") or ""
    lines = [
        f"Tinyx image {r['name']}, built {r['built_at']} in {r['total_seconds']:.1f} s",
        "",
        f"app:        {app.get('package') or 'host ELF'} {version}".rstrip(),
        f"recipe:     {app['origin']}",
        f"command:    {' '.join(repr(a) if (not a or ' ' in a) else a for a in app['command'])}",
        f"port:       {app['port'] or '0 (READY when started)'}",
        f"probe:      {app['probe'] or '-'}",
        f"memory:     {app['memory']} MiB",
        f"busybox:    {'yes' if app.get('busybox', True) else 'no (the recipe says busybox = false)'}",
        f"kernel:     {_mb(ker['bytes'])} vmlinux (packed: no symbols, no padding; QEMU loads "
        f"{_mb(ker['loaded_bytes'])} of it)",
        f"            as linked {_mb(ker['vmlinux_bytes'])} ({ker['source']}; PT_LOAD bytes "
        f"{_mb(ker['vmlinux_loaded_bytes'])})",
        f"initramfs:  {_mb(ini['bytes'])} {ini['file']}  (uncompressed {_mb(ini['uncompressed_bytes'])}, "
        f"{ini['members']} members: {', '.join(f'{v} {k}s' for k, v in ini['kinds'].items())})",
        "            by origin: " + ", ".join(f"{k} {_mb(v)}" for k, v in ini["bytes_by_origin"].items()),
        f"            sha256 {ini['sha256']}",
        f"kernel + initramfs: {_mb(r['kernel_plus_initramfs_bytes'])} (the two files lightvm ships)",
        _snapshot_line(r.get("snapshot") or {}),
        "",
    ]
    if r["guessed"]:
        lines += ["GUESSED:", *(f"  {g}" for g in r["guessed"]), ""]
    if r["notes"]:
        lines += ["notes:", *(f"  {n}" for n in r["notes"]), ""]
    lines += [f"packages the app brought ({len(r['packages'])}):"]
    lines += [f"  {p:<32} {v}" for p, v in r["packages"].items()] or ["  (none: a host file)"]
    lines += ["", f"libraries ({len(r['libraries'])}):"]
    lines += [f"  {lib['path']:<52} {lib['owner']}" for lib in r["libraries"]]
    if r["users"]:
        lines += ["", "users created by the package: " + ", ".join(u.split(":", 1)[0] for u in r["users"])]
    lines += ["", "steps (s):"]
    lines += [f"  {k:<17} {v:8.2f}  {r['cache'].get(k, '')}" for k, v in r["steps"].items()]
    lines += ["", "cache: " + ", ".join(f"{k} {v}" for k, v in r["cache"].items())]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict[str, Any]) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.txt").write_text(report_text(report))

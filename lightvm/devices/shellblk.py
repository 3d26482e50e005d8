"""Disks of lightvmd's prepared shells: a virtio-blk device made at prepare, its image given at execute.

QEMU's microvm has no hotplug: a virtio-mmio device exists from QEMU's start or never.
But a virtio-blk device only needs *a* block node under it, and QEMU (since 6.1) can swap
a node's child at run time with ``blockdev-reopen``. So:

* prepare (:func:`shell_args`): per disk of the flavour, a placeholder (``null-co``, 512
  bytes of zeroes) under a ``raw`` format node ``d<i>``, and the virtio-blk device on
  ``d<i>``. Whether the device is read-only is fixed here: QEMU offers VIRTIO_BLK_F_RO
  from the backend's state when the device is plugged, so the flavour names each disk's
  ``readonly`` and a read-write image never lands on a read-only device or the reverse.
* execute (:func:`attach`): per disk, the image opened here and passed to QEMU
  (``add-fd``: a jailed QEMU can open no host file, lightvm/jail.py), ``blockdev-add`` of a
  ``file`` node on ``/dev/fdset/N`` and ``blockdev-reopen`` of ``d<i>`` onto it
  (pipelined: one wait for all of them);
  the guest reads the capacity from the device's config space when its driver starts,
  after the wait point (images/apps/disk.c opens its disk in app_main), and QEMU answers
  that read from the current node, so it sees the image's size. The placeholders are
  deleted after the reply (:func:`drop_placeholders`), off the create's path.
* the VM's record gets the command line a cold VM of the same spec has (:func:`vm_argv`):
  a checkpoint rebuilds its QEMU from it (lightvm/mobility/format.py).

docs/lightvmd.md ("Disks of prepared shells") has the measured cost.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightvm.devices import blk
from lightvm.errors import LightVMError, QMPError

if TYPE_CHECKING:
    from lightvm.machine import Machine

PLACEHOLDER_BYTES = 512
FDSET_BASE = 100  # disk i's image is fd set FDSET_BASE + i (a shell has no other fd set)


def _ro(readonly: bool) -> str:
    return ",read-only=on" if readonly else ""


def shell_args(readonly: Sequence[bool]) -> list[str]:
    """The QEMU args of a shell's disks, one per entry (``True``: a read-only disk)."""
    args: list[str] = []
    for i, ro in enumerate(readonly):
        args += [
            "-blockdev",
            f"driver=null-co,node-name=ph{i},size={PLACEHOLDER_BYTES},read-zeroes=on{_ro(ro)}",
            "-blockdev",
            f"driver=raw,node-name=d{i},file=ph{i}{_ro(ro)}",
            "-device",
            f"virtio-blk-device,drive=d{i}",
        ]
    return args


def attach(machine: Machine, disks: Sequence[blk.PreparedDisk], timeout: float = 5.0) -> None:
    """Put each image under its shell device (the guest has not started its driver yet).

    :raise LightVMError: QEMU refused an image (its message, naming the file).
    """
    qmp = machine.qmp
    sent = []
    fds: list[int] = []
    try:
        for disk in disks:
            try:
                fd = os.open(disk.path, (os.O_RDONLY if disk.readonly else os.O_RDWR) | os.O_CLOEXEC)
            except OSError as exc:
                raise LightVMError(f"disks[{disk.index}] {disk.path}: {exc.strerror or exc}") from exc
            fds.append(fd)
            node, fdset = f"f{disk.index}", FDSET_BASE + disk.index
            add = {"driver": "file", "node-name": node, "filename": f"/dev/fdset/{fdset}", "read-only": disk.readonly}
            reopen = {"driver": "raw", "node-name": f"d{disk.index}", "file": node, "read-only": disk.readonly}
            sent.append((disk, "add-fd", qmp.send_with_fd("add-fd", {"fdset-id": fdset}, fd)))
            sent.append((disk, "blockdev-add", qmp.send("blockdev-add", add)))
            sent.append((disk, "blockdev-reopen", qmp.send("blockdev-reopen", {"options": [reopen]})))
        for disk, command, ident in sent:
            try:
                qmp.wait(ident, timeout, command)
            except QMPError as exc:
                raise LightVMError(f"disks[{disk.index}] {disk.path}: QEMU cannot use it: {exc}") from exc
    finally:
        for fd in fds:  # QEMU holds its own copies
            os.close(fd)


def drop_placeholders(machine: Machine, count: int, timeout: float = 5.0) -> None:
    """Delete the placeholder nodes the images replaced (nothing refers to them now), and
    the fd sets: the file nodes keep the descriptors they took from them."""
    idents = [machine.qmp.send("blockdev-del", {"node-name": f"ph{i}"}) for i in range(count)]
    idents += [machine.qmp.send("remove-fd", {"fdset-id": FDSET_BASE + i}) for i in range(count)]
    for ident in idents:
        machine.qmp.wait(ident, timeout, "blockdev-del/remove-fd")


def vm_argv(argv: list[str], disks: Sequence[blk.PreparedDisk]) -> list[str]:
    """``argv`` with the shell's placeholder disk args replaced by a cold VM's (blk.qemu_args)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-blockdev" and i + 1 < len(argv) and argv[i + 1].startswith("driver=null-co,node-name=ph"):
            index = int(argv[i + 1].split("node-name=ph", 1)[1].split(",", 1)[0])
            out += blk.qemu_args(disks[index])
            i += 6  # the placeholder, its raw node and the device
            continue
        out.append(arg)
        i += 1
    return out


__all__ = ["PLACEHOLDER_BYTES", "attach", "drop_placeholders", "shell_args", "vm_argv"]

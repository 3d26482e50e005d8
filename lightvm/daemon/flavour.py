"""What a prepared shell is for: its :class:`Flavour` (what a create must match to take
it) and :func:`poolable` (why a spec cannot use one).

Apart from :mod:`lightvm.daemon.pool`, which prepares and keeps the shells, so that the
matching rule reads on its own (lightvmd's start-up checks its ``--pool`` configs with it;
the pool keys its shells by it and asks it at every take).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm import jail
from lightvm.daemon import pool_nics
from lightvm.daemon.shells import SHELL_OVERHEAD_MIB
from lightvm.spec import VMSpec


@dataclass(frozen=True)
class Flavour:
    """What a shell must match to serve a create."""

    kernel: str
    firmware: str
    memory_mib: int
    vcpus: int
    cmdline: str
    accel: str
    nics: int = 0  # NICs, made at prepare; their bridge, address and forwards are the VM's, set at execute
    nic_mode: str = ""  # "tap" or "user" (with nics)
    initrd: str = ""  # a Linux guest's initramfs (a Tinyx image): one kernel serves many images
    disks: tuple[bool, ...] = ()  # per disk: read-only? (fixed at prepare); the images are the VM's, set at execute
    # Tap NICs whose vifs name a network and nothing else (pool_nics.pre_leasable): per
    # NIC, the network its shell leases an address on and joins at prepare.
    networks: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: VMSpec, accel: str, net_mode: str = "tap") -> Flavour:
        return cls(
            # normpath, not resolve(): no syscalls on the execute path; both sides agree.
            kernel=os.path.normpath(os.path.abspath(spec.kernel)),
            firmware=os.path.normpath(os.path.abspath(spec.firmware)) if spec.firmware else "",
            memory_mib=spec.memory_mib,
            vcpus=spec.vcpus,
            cmdline=spec.cmdline,
            accel=accel,
            nics=len(spec.vifs),
            nic_mode=vif_kind(spec.vifs[0], net_mode) if spec.vifs else "",
            initrd=os.path.normpath(os.path.abspath(spec.initrd)) if spec.initrd else "",
            disks=tuple(d.readonly for d in spec.disks),
            networks=_pre_leased_networks(spec, net_mode),
        )

    def label(self) -> str:
        nics = f"/{self.nics}{self.nic_mode}" if self.nics else ""
        if self.networks:
            nics += f"@{','.join(self.networks)}"
        image = f"+{Path(self.initrd).parent.name or Path(self.initrd).name}" if self.initrd else ""
        disks = f"/{len(self.disks)}disk({','.join('ro' if ro else 'rw' for ro in self.disks)})" if self.disks else ""
        return f"{Path(self.kernel).name}{image}/{self.memory_mib}M/{self.vcpus}cpu/{self.accel}{nics}{disks}"

    def cost_mib(self) -> int:
        return self.memory_mib + SHELL_OVERHEAD_MIB


def _pre_leased_networks(spec: VMSpec, net_mode: str) -> tuple[str, ...]:
    """Per tap vif, its network, if a shell can lease every vif's address at prepare."""
    vifs = spec.vifs
    if not vifs or vif_kind(vifs[0], net_mode) != "tap" or not all(pool_nics.pre_leasable(v) for v in vifs):
        return ()
    return tuple(str(v.network) for v in vifs)


MIXED_NICS_REASON = "vifs of both kinds, taps and user networking (a shell's NICs are of one kind)"


def vif_kind(vif: Any, net_mode: str) -> str:
    """``tap`` or ``user``: what a vif gets in a daemon with ``net_mode`` networking (a
    vif with neither network nor bridge is user networking everywhere: net.prepare)."""
    return "tap" if net_mode == "tap" and (vif.network or vif.bridge) else "user"


def poolable(spec: VMSpec, net_mode: str = "tap") -> str | None:
    """Why ``spec`` cannot use a shell, or None if it can. ``net_mode``: the networking
    the daemon has (``tap`` with CAP_NET_ADMIN, else ``user``: lightvm/devices/net.py).

    Vifs are poolable, all taps (made at prepare, on a bridge at execute) or all user
    networking (forwards added at execute): lightvm/devices/shellnet.py. Disks too (a
    placeholder at prepare, the image at execute): lightvm/devices/shellblk.py.
    """
    if len({vif_kind(v, net_mode) for v in spec.vifs}) > 1:
        return MIXED_NICS_REASON
    return unpoolable_forwards(spec)


def unpoolable_forwards(spec: VMSpec) -> str | None:
    """The part of :func:`poolable` that looks at the vifs' ``--publish`` forwards."""
    if jail.layers_drop_root() and any(_host_port(p) < 1024 for v in spec.vifs for p in v.publish):
        return "a published host port below 1024 (a shell's QEMU adds it after its jail dropped root)"
    return None


def _host_port(publish: str) -> int:
    """HOSTPORT of ``[addr:]HOSTPORT:GUESTPORT[/proto]`` (0 if unreadable: net.parse_publish says why)."""
    parts = publish.split("/", 1)[0].rsplit(":", 2)
    return int(parts[-2]) if len(parts) >= 2 and parts[-2].isdigit() else 0


__all__ = ["MIXED_NICS_REASON", "Flavour", "poolable", "unpoolable_forwards", "vif_kind"]

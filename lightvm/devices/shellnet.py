"""NICs of lightvmd's prepared shells: a tap made at prepare, given to its VM at execute.

A create shell (lightvm/daemon/pool.py) is spawned before anyone knows which VM it will
become, but QEMU opens its tap and fixes its virtio-net device's MAC at spawn. So:

* prepare (:func:`make_taps`): one persistent tap per NIC, named after the *shell*
  (``lv<6 hex of the shell id>-<i>``, alias ``lightvm:vm=<shell id>/<i>``, on no bridge):
  a shell killed with its daemon is cleaned like any half-made VM, by the tap name its
  record names or by that alias (:func:`lightvm.instance.destroy`). QEMU gets
  ``-netdev tap`` with it and a virtio-net device with a MAC of its own
  (:func:`device_mac`), which never appears on the wire.
* execute (:func:`hand_over`): the vif's address exactly as on the cold path
  (:func:`lightvm.devices.net.address`: a lease from its network, under the VM's name, or
  the spec's address on a plain bridge), then one netlink request puts the tap on the
  VM's bridge with the vif's MTU and the VM's alias. The NoXS page carries the vif's MAC
  and the device's (``dev_mac``): the guest pairs its device by ``dev_mac`` and sends and
  answers as the vif's MAC, which QEMU lets through because virtio-net stays promiscuous
  unless the driver negotiates VIRTIO_NET_F_CTRL_RX (docs/qemu-notes.md, "NICs of
  prepared shells"); the bridge learns the vif's MAC from the guest's first frame.
* ... or already at prepare, when the pool knows the VM's network (every vif names a
  network and nothing else: lightvm.daemon.pool_nics.pre_leasable): the shell leases its
  address under the shell's id and joins the bridge then (:func:`lease_taps`), its guest
  is given that address on its placeholder page (a Linux guest configures it at its wait
  point), and an execute only checks the lease is still the shell's
  (:func:`keep_leases`); the lease becomes the VM's, and the tap takes its alias, after
  the reply (:func:`hand_leases`). Until then a destroy finds the leases by the VM's id,
  which is the shell's (lightvm.instance.release_vifs).

User networking (QEMU's slirp: no host resources) is simpler: the shell gets
``-netdev user`` at prepare (:func:`user_nics`), and its placeholder page carries the
address every user vif has, which a Linux guest sets up at its wait point. At execute the
vif gets the device's MAC unless the spec names one (a cold VM's comes from its name:
:func:`lightvm.devices.net.user_vif`), so that such a guest has nothing left to configure,
and its ``--publish`` forwards over QMP, HMP ``hostfwd_add`` (:func:`queue_forwards`),
sent right after the guest is woken: QEMU adds them while the guest wakes, and the
create answers once both are done. Only a create that publishes pays that QMP round trip.

Why not set the device's MAC from the guest instead: a VIRTIO 1.0 device's config-space
MAC is read-only (QEMU writes it back only for legacy devices), and the control queue's
MAC_ADDR_SET means a control virtqueue in a guest driver that has none, for a MAC that
only QEMU would look at.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from lightvm.devices import net
from lightvm.devices.devd import tap_alias
from lightvm.errors import AddressExhaustedError, ForeignLinkError, NetworkError
from lightvm.undo import UndoStack

if TYPE_CHECKING:
    from lightvm.devices.ipam import LeaseStore
    from lightvm.machine import Machine

SHELL_TAP_MTU = 1500  # until execute sets the vif's
# A shell leases at prepare only while its network keeps this many addresses free beyond
# what it takes: a small network's last addresses stay for VMs (a one-shot create, a
# cold path), not held by shells that may never be used.
PRE_LEASE_RESERVE = 8


def device_mac(shell_id: str, index: int) -> str:
    """The MAC of a shell's virtio-net device ``index``: locally administered (0x5a) and
    unicast, from the shell id, so that two shells' devices differ."""
    digest = hashlib.sha256(f"shell/{shell_id}/{index}".encode()).digest()
    return "5a:" + ":".join(f"{b:02x}" for b in digest[:5])


def make_taps(shell_id: str, count: int, ctx: net.NetContext, undo: UndoStack) -> list[net.PreparedVif]:
    """Create ``count`` taps for shell ``shell_id`` (each undo on ``undo``), up, on no bridge.

    :raise ForeignLinkError: every candidate name of a tap is taken by something not ours.
    :raise NetworkError: the kernel refused.
    """
    devd = ctx.devd()
    made: list[net.PreparedVif] = []
    for index in range(count):
        alias = tap_alias(shell_id, index)
        for attempt in range(net.TAP_NAME_ATTEMPTS):
            name = net.tap_name(shell_id, index, attempt)
            try:
                devd.create_tap(name, SHELL_TAP_MTU, None, owner_uid=ctx.tap_owner, alias=alias, undo=undo)
            except ForeignLinkError:
                if attempt == net.TAP_NAME_ATTEMPTS - 1:
                    raise
                continue
            made.append(
                net.PreparedVif(
                    index, net.NetMode.TAP, device_mac(shell_id, index), "0.0.0.0", 0, "0.0.0.0", SHELL_TAP_MTU, name
                )
            )
            break
    return made


def user_nics(shell_id: str, count: int) -> list[net.PreparedVif]:
    """``count`` user-networking NICs for shell ``shell_id`` (no forwards: those are the VM's)."""
    return [
        net.PreparedVif(
            i, net.NetMode.USER, device_mac(shell_id, i), net.USER_IP, net.USER_PREFIX, net.USER_GATEWAY, net.USER_MTU
        )
        for i in range(count)
    ]


def hand_over_user(
    vifs: Sequence[net.ValidVif], nics: Sequence[net.PreparedVif], vm_name: str
) -> list[net.PreparedVif]:
    """Give a shell's user-networking ``nics`` to VM ``vm_name``: the vifs' addresses as on
    the cold path, and as MAC the spec's, else the shell device's own: the guest then keeps
    the MAC, address and route it set at its wait point
    (lightvm.daemon.pool_nics.placeholder_vifs), where a MAC from the VM's name (the cold
    path's) would cost a Linux guest its `ip` step under TCG, a MAC change through
    virtio-net's control queue (docs/tinyx-bench.md). Nothing but QEMU's slirp sees a user
    vif's MAC. Their forwards are QEMU's to add: :func:`forward_rules`.

    :raise NetworkError: the vifs do not match the shell's NICs.
    """
    if len(vifs) != len(nics):
        raise NetworkError(f"{vm_name}: {len(vifs)} vif(s) for a shell with {len(nics)} NIC(s)")
    pairs = enumerate(zip(vifs, nics, strict=True))
    return [net.user_vif(vif, vm_name, i, vif.publish, default_mac=nic.mac) for i, (vif, nic) in pairs]


# A forward to add to a running user netdev: (netdev id, hostfwd rule, what an error names).
ForwardRule = tuple[str, str, str]


def forward_rules(prepared: Sequence[net.PreparedVif]) -> list[ForwardRule]:
    """The ``--publish`` forwards of user vifs ``prepared``, as :func:`queue_forwards` takes
    them (the same rule syntax as ``-netdev user,hostfwd=``)."""
    return [
        (
            vif.netdev_id,
            f"{forward.proto}:{forward.host_addr}:{forward.host_port}-:{forward.guest_port}",
            f"vif {vif.index}: cannot publish {forward}",
        )
        for vif in prepared
        for forward in vif.publish
    ]


def queue_forwards(machine: Machine, rules: Sequence[ForwardRule]) -> list[tuple[str, int]]:
    """Send HMP ``hostfwd_add`` for each rule without waiting: QEMU adds them while the
    caller does other work (a pool shell's guest wakes meanwhile: QEMU's main loop runs
    the command, its vCPU thread the guest). :func:`check_forwards` collects the answers.

    :raise QMPError: the QMP socket is closed.
    """
    qmp = machine.qmp
    return [
        (what, qmp.send("human-monitor-command", {"command-line": f"hostfwd_add {netdev} {rule}"}))
        for netdev, rule, what in rules
    ]


def check_forwards(machine: Machine, queued: Sequence[tuple[str, int]], timeout: float = 5.0) -> None:
    """Wait for the answers to :func:`queue_forwards`. HMP answers errors as text, not as
    a QMP error: anything it prints is one.

    :raise NetworkError: QEMU refused a forward.
    :raise QMPError: no answer within ``timeout`` seconds, or QEMU exited.
    """
    for what, cmd_id in queued:
        said = machine.qmp.wait(cmd_id, timeout, "hostfwd_add")
        if isinstance(said, str) and said.strip():
            raise NetworkError(f"{what}: {said.strip()}; is the host port free?")


def vm_argv(argv: Sequence[str], vifs: Sequence[net.PreparedVif], nics: Sequence[net.PreparedVif]) -> list[str]:
    """A shell's QEMU command line as the VM's record should give it: each NIC's
    ``-netdev`` value as the VM's vif would have had it (a user netdev's forwards, added
    at execute), so a checkpoint's device arguments rebuild the same netdevs on restore
    (lightvm/mobility/format.py, device_args). The devices keep the shell's MACs: they
    are what the guest's driver holds."""
    out = list(argv)
    for vif, nic in zip(vifs, nics, strict=True):
        old = net.qemu_args(nic)[1]
        new = net.qemu_args(replace(vif, tap=nic.tap))[1]
        out = [new if a == old else a for a in out]
    return out


def hand_over(
    vifs: Sequence[net.ValidVif], taps: Sequence[net.PreparedVif], vm_name: str, ctx: net.NetContext, undo: UndoStack
) -> list[net.PreparedVif]:
    """Give a shell's ``taps`` to VM ``vm_name`` with the spec's ``vifs``: their addresses
    (leases pushed on ``undo``), bridges, MTUs. The taps themselves go with the shell if
    a later step fails (it is discarded).

    :raise SpecError: a vif is not a tap vif, or its fixed address is taken.
    :raise NetworkError: its bridge is missing or the kernel refused.
    """
    if len(vifs) != len(taps):
        raise NetworkError(f"{vm_name}: {len(vifs)} vif(s) for a shell with {len(taps)} NIC(s)")
    devd = ctx.devd()
    out = []
    for index, (vif, tap) in enumerate(zip(vifs, taps, strict=True)):
        if vif.publish or not (vif.network or vif.bridge):
            raise NetworkError(f"vif {index}: a pooled NIC is a tap on a bridge; this vif needs the cold path")
        prepared = net.address(vif, vm_name, index, ctx, undo)
        devd.hand_over(tap.tap, prepared.bridge, prepared.mtu, tap_alias(vm_name, index))
        out.append(replace(prepared, tap=tap.tap))
    return out


def lease_taps(
    taps: Sequence[net.PreparedVif], networks: Sequence[str], shell_id: str, ctx: net.NetContext, undo: UndoStack
) -> list[net.PreparedVif]:
    """At prepare: lease tap ``i`` an address on ``networks[i]`` under the shell's id (undo
    on ``undo``: release) and put it on that network's bridge now, so that an execute
    for a VM on those networks leases nothing and joins nothing (:func:`keep_leases`,
    then :func:`hand_leases` after the reply). The VM's vifs, as the page will say them.

    :raise NotFoundError: a network does not exist (nothing leased or joined).
    :raise AddressExhaustedError: a network is full, or would keep fewer than
        :data:`PRE_LEASE_RESERVE` free addresses (likewise).
    :raise NetworkError: the kernel refused (likewise).
    """
    devd, store = ctx.devd(), ctx.store()
    for network in set(networks):
        record = store.get(network)  # every lease read: at prepare, not on a create's path
        free = record.capacity - len(record.leases) - list(networks).count(network)
        if free < PRE_LEASE_RESERVE:
            raise AddressExhaustedError(
                f"network {network}: {free} addresses would stay free; its last {PRE_LEASE_RESERVE} are for VMs"
            )
    out = []
    mine = UndoStack()  # all or nothing: a failure leaves the taps unleased and on no bridge
    try:
        for tap, network in zip(taps, networks, strict=True):
            prepared = net.address(net.ValidVif(network=network), shell_id, tap.index, ctx, mine)
            devd.hand_over(tap.tap, prepared.bridge, prepared.mtu, tap_alias(shell_id, tap.index))
            mine.push(f"detach {tap.tap}", functools.partial(devd.detach, tap.tap))
            out.append(replace(prepared, tap=tap.tap))
    except BaseException:
        mine.unwind()
        raise
    mine.commit()
    undo.push(f"leases of shell {shell_id}", lambda: store.release(shell_id))
    return out


def keep_leases(
    vifs: Sequence[net.ValidVif], leased: Sequence[net.PreparedVif], shell_id: str, vm_name: str, store: LeaseStore
) -> list[net.PreparedVif]:
    """At execute: the vifs a shell leased at prepare (:func:`lease_taps`), as VM
    ``vm_name``'s, once each is checked to be what the spec's vif asks (its network,
    nothing fixed) and still the shell's in ``store`` (one readlink each, no lock, no
    netlink: a network deleted and made again since would hand the address out anew).

    :raise NetworkError: a vif asks for something else, or a lease is gone.
    """
    if len(vifs) != len(leased):
        raise NetworkError(f"{vm_name}: {len(vifs)} vif(s) for a shell with {len(leased)} NIC(s)")
    for index, (vif, mine) in enumerate(zip(vifs, leased, strict=True)):
        if vif != net.ValidVif(network=mine.network):
            raise NetworkError(f"vif {index}: the shell's NIC is on network {mine.network} with its own address")
        assert mine.network is not None
        if not store.holds(mine.network, shell_id, mine.index, mine.ip):
            raise NetworkError(f"vif {index}: the shell's lease of {mine.ip} on network {mine.network} is gone")
    return list(leased)


def hand_leases(leased: Sequence[net.PreparedVif], shell_id: str, vm_name: str, ctx: net.NetContext) -> None:
    """After an execute's reply: the leases the shell made become ``vm_name``'s (same
    address and MAC: ipam.LeaseStore.hand_lease) and its taps take the VM's alias, so that
    the VM is found by its name like any other (``lightvm network show``, forget_vm).

    :raise NetworkError: a lease is gone, or the kernel refused.
    """
    store, devd = ctx.store(), ctx.devd()
    for vif in leased:
        assert vif.network is not None
        store.hand_lease(vif.network, shell_id, vif.index, vm_name)
        devd.hand_over(vif.tap, vif.bridge, vif.mtu, tap_alias(vm_name, vif.index))


def delete_taps(taps: Sequence[net.PreparedVif], ctx: net.NetContext) -> None:
    """Delete a discarded shell's taps (missing is fine)."""
    devd = ctx.devd()
    for tap in taps:
        devd.delete_tap(tap.tap)


__all__ = [
    "PRE_LEASE_RESERVE",
    "SHELL_TAP_MTU",
    "ForwardRule",
    "check_forwards",
    "delete_taps",
    "device_mac",
    "forward_rules",
    "hand_leases",
    "hand_over",
    "hand_over_user",
    "keep_leases",
    "lease_taps",
    "make_taps",
    "queue_forwards",
    "user_nics",
    "vm_argv",
]

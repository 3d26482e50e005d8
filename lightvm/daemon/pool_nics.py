"""The NIC half of a create shell's prepare and execute (lightvm/daemon/pool.py), over
lightvm/devices/shellnet.py: what the placeholder page says about the shell's NICs, how
an execute gives them to the VM, and what the VM's page and record then say.

Apart from pool.py so that each stays one concern (and under the size rule); the
device modules are imported on first use, as everywhere on the create path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm.noxs import VifConfig, parse_mac
from lightvm.undo import UndoStack

if TYPE_CHECKING:
    from lightvm.devices.net import NetContext, PreparedVif

NetContextFactory = Callable[[], contextlib.AbstractContextManager["NetContext"]]


PRE_LEASE_BLOCKERS = ("bridge", "ip", "gateway", "mac", "mtu", "publish")
PRE_LEASE_KEYS = ("network", *PRE_LEASE_BLOCKERS)


def pre_leasable(vif: Any) -> bool:
    """Whether a shell can lease tap vif ``vif``'s address at prepare: it names a network
    and nothing else (a spec vif or a mapping; pure, on the execute path). A fixed address,
    MAC, MTU or gateway is the VM's own, known only at execute."""
    table: dict[str, Any] = vif if isinstance(vif, dict) else {k: getattr(vif, k, None) for k in PRE_LEASE_KEYS}
    return bool(table.get("network")) and not any(table.get(key) for key in PRE_LEASE_BLOCKERS)


def placeholder_vifs(
    shell_id: str, count: int, mode: str = "tap", leased: Sequence[PreparedVif] = ()
) -> list[VifConfig]:
    """The placeholder page's vifs of a shell with ``count`` NICs: each names its device
    (``dev_mac``, and as ``mac``: a valid vif), so that a guest asleep on the console bell
    brings the device up at its wait point (images/net/netif.c, noxs_vif_prewarm): probing,
    resetting and setting up the device, and QEMU translating that code, are then off the
    create's path (docs/lightvmd.md, the figures). User networking (``mode`` "user"): also
    the address, prefix, gateway and MTU every such VM gets (lightvm.devices.net.user_vif),
    which a Linux guest configures there (tinyx/init/main.c, prewarm_nics); a tap's
    address is its VM's lease, known at prepare only when the shell ``leased`` it then
    (shellnet.lease_taps), else at execute."""
    if not count:
        return []
    from lightvm.devices import net, shellnet

    if leased:  # the VM's addresses already: its page will say exactly this
        return [net.noxs_config(v, dev_mac=shellnet.device_mac(shell_id, v.index)) for v in leased]
    if mode == "user":  # the shell's own user NICs, as the page of a VM that keeps them says them
        return [net.noxs_config(n, dev_mac=n.mac) for n in shellnet.user_nics(shell_id, count)]
    macs = [parse_mac(shellnet.device_mac(shell_id, i)) for i in range(count)]
    return [VifConfig(mac=m, dev_mac=m) for m in macs]


def hand_over(
    nics: Sequence[PreparedVif],
    state_root: Path | None,
    spec_vifs: Sequence[Any],
    name: str,
    net_context: NetContextFactory | None,
    undo: UndoStack,
) -> list[PreparedVif]:
    """A shell's ``nics`` given to VM ``name`` with the spec's vifs: user vifs their
    addresses (shellnet.hand_over_user; their forwards are the caller's to add:
    shellnet.forward_rules); taps their bridges and leases (leases' undo on ``undo``;
    shellnet.hand_over), in the context ``net_context()`` lends (the
    pool's, kept open), else in one opened for this call (~1 ms more: a netlink socket,
    in the namespace if there is one).

    :raise SpecError, NetworkError: as the cold path's vif preparation.
    """
    from lightvm.devices import net, shellnet

    valid = [net.validate(v, f"vifs[{i}]") for i, v in enumerate(spec_vifs)]
    if not nics[0].tap:
        return shellnet.hand_over_user(valid, nics, name)
    with _context(net_context, state_root) as ctx:
        return shellnet.hand_over(valid, nics, name, ctx, undo)


def _context(
    net_context: NetContextFactory | None, state_root: Path | None
) -> contextlib.AbstractContextManager[NetContext]:
    """The pool's kept context, else one opened for the call (in ``state_root``)."""
    if net_context is not None:
        return net_context()
    from lightvm.devices import net

    assert state_root is not None
    return net.NetContext.open(state_root)


def keep_leases(
    leased: Sequence[PreparedVif], spec_vifs: Sequence[Any], shell_id: str, name: str, state_root: Path
) -> list[PreparedVif]:
    """The execute of a shell that leased its taps' addresses at prepare: they are VM
    ``name``'s vifs once checked (shellnet.keep_leases) in ``state_root``'s allocator;
    nothing to lease or join, so neither the pool's networking context (its lock, its
    namespace) nor netlink.

    :raise SpecError, NetworkError: a vif is malformed or asks for something else.
    """
    from lightvm.devices import net, shellnet
    from lightvm.devices.network import NetworkStore

    valid = [net.validate(v, f"vifs[{i}]") for i, v in enumerate(spec_vifs)]
    return shellnet.keep_leases(valid, leased, shell_id, name, NetworkStore(state_root))


def hand_leases(
    leased: Sequence[PreparedVif],
    shell_id: str,
    name: str,
    net_context: NetContextFactory | None,
    state_root: Path | None,
) -> None:
    """After the reply: the shell's leases and taps become VM ``name``'s
    (shellnet.hand_leases). :raise LightVMError: as that."""
    from lightvm.devices import shellnet

    with _context(net_context, state_root) as ctx:
        shellnet.hand_leases(leased, shell_id, name, ctx)


def page_vifs(vifs: Sequence[PreparedVif], nics: Sequence[PreparedVif]) -> list[VifConfig]:
    """The VM's vif pages: its addresses, with each shell device's MAC as ``dev_mac``."""
    from lightvm.devices import net

    return [net.noxs_config(v, dev_mac=n.mac) for v, n in zip(vifs, nics, strict=True)]


def record_vifs(
    devices: dict[str, Any], argv: list[str], vifs: Sequence[PreparedVif], nics: Sequence[PreparedVif]
) -> list[str]:
    """Make a VM record's ``devices`` say its vifs (destroy releases their leases and
    taps by them; no longer pending) and return its argv with the VM's netdevs
    (shellnet.vm_argv: a checkpoint rebuilds them)."""
    from lightvm.devices import net, shellnet

    devices["vifs"] = [v.to_dict() for v in vifs]
    devices["summary"] = net.summary(vifs)
    devices.pop("vifs_pending", None)
    return shellnet.vm_argv(argv, vifs, nics)


def summary(vifs: Sequence[PreparedVif]) -> str:
    """The create's one networking line (empty without vifs)."""
    if not vifs:
        return ""
    from lightvm.devices import net

    return net.summary(vifs)


__all__ = [
    "NetContextFactory",
    "hand_leases",
    "hand_over",
    "keep_leases",
    "page_vifs",
    "placeholder_vifs",
    "pre_leasable",
    "record_vifs",
    "summary",
]

"""devd in a private network namespace: bridges, taps, ownership, idempotence, undo."""

from __future__ import annotations

import errno
import ipaddress
import multiprocessing
import os
import socket

import pytest
from pyroute2 import IPRoute

from lightvm.devices.devd import Devd, bridge_alias, tap_alias
from lightvm.errors import CapabilityError, ForeignLinkError, NetworkError
from lightvm.undo import UndoStack

pytestmark = pytest.mark.root


def _names(devd: Devd) -> set[str]:
    return {info.name for info in devd.links()} - {"lo"}


def test_bridge_create_is_idempotent_and_ours(devd: Devd) -> None:
    undo = UndoStack()
    index = devd.ensure_bridge("lvbr", 1400, bridge_alias("n1"), undo=undo)
    info = devd.link("lvbr")
    assert info is not None
    assert (info.index, info.kind, info.mtu, info.up, info.alias) == (index, "bridge", 1400, True, "lightvm:net=n1")
    assert len(undo) == 1
    assert devd.ensure_bridge("lvbr", 1400, bridge_alias("n1"), undo=undo) == index
    assert len(undo) == 1  # nothing new created, nothing new to undo
    with pytest.raises(ForeignLinkError, match="lightvm:net=n1"):
        devd.ensure_bridge("lvbr", 1400, bridge_alias("n2"))  # another network's bridge
    assert devd.delete_bridge("lvbr") is True
    assert devd.delete_bridge("lvbr") is False
    assert _names(devd) == set()


def _mac(devd: Devd, name: str) -> str:
    info = devd.link(name)
    assert info is not None, name
    return info.mac


def test_a_bridge_given_a_mac_keeps_it_as_ports_come_and_go(devd: Devd) -> None:
    """Without a MAC of its own a bridge takes its ports' lowest and changes it when that
    port leaves: guests that resolved the gateway then send to a MAC nobody has."""
    devd.ensure_bridge("lvbr", 1500, bridge_alias("n"))
    devd.create_tap("lvt-0", 1500, "lvbr", alias=tap_alias("vm", 0))
    port = devd.link("lvt-0")
    assert port is not None and _mac(devd, "lvbr") == port.mac
    devd.delete_tap("lvt-0")
    devd.delete_bridge("lvbr")
    mac = "52:54:0a:01:00:01"
    devd.ensure_bridge("lvbr", 1500, bridge_alias("n"), mac=mac)
    for i, low in enumerate(("02:00:00:00:00:01", "02:00:00:00:00:02")):
        devd.create_tap(f"lvt-{i}", 1500, "lvbr", alias=tap_alias("vm", i))
        devd.ipr.link("set", index=devd.ifindex(f"lvt-{i}"), address=low)
        assert _mac(devd, "lvbr") == mac
    devd.delete_tap("lvt-0")
    assert _mac(devd, "lvbr") == mac
    # An existing bridge with another MAC gets the one asked for.
    devd.ipr.link("set", index=devd.ifindex("lvbr"), address="02:00:00:00:00:09")
    devd.ensure_bridge("lvbr", 1500, bridge_alias("n"), mac=mac)
    assert _mac(devd, "lvbr") == mac
    devd.delete_tap("lvt-1")
    devd.delete_bridge("lvbr")


def test_foreign_links_are_never_adopted_or_deleted(devd: Devd, nsname: str) -> None:
    with IPRoute(netns=nsname) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname="lvtap-0", kind="veth", peer="lvtap-peer")
    for call in (
        lambda: devd.ensure_bridge("br0", 1500, bridge_alias("n")),
        lambda: devd.delete_bridge("br0"),
        lambda: devd.create_tap("lvtap-0", 1500, alias=tap_alias("vm", 0)),
        lambda: devd.delete_tap("lvtap-0"),
        lambda: devd.delete_tap("br0"),
    ):
        with pytest.raises(ForeignLinkError, match="not created by lightvm"):
            call()
    assert _names(devd) == {"br0", "lvtap-0", "lvtap-peer"}
    info = devd.link("br0")
    assert info is not None and info.alias == "" and not info.up  # untouched


def test_tap_create_attach_up_mtu_and_delete(devd: Devd) -> None:
    bridge = devd.ensure_bridge("lvbr", 9000, bridge_alias("n"))
    index = devd.create_tap("lvt-0", 9000, "lvbr", alias=tap_alias("vm", 0))
    info = devd.link("lvt-0")
    assert info is not None
    assert (info.index, info.kind, info.master, info.mtu, info.up) == (index, "tun", bridge, 9000, True)
    assert info.alias == "lightvm:vm=vm/0"
    assert devd.ports("lvbr") == ["lvt-0"]
    # Idempotent: the same call again changes nothing; a changed MTU is applied.
    assert devd.create_tap("lvt-0", 9000, "lvbr", alias=tap_alias("vm", 0)) == index
    devd.create_tap("lvt-0", 1500, "lvbr", alias=tap_alias("vm", 0))
    info = devd.link("lvt-0")
    assert info is not None and info.mtu == 1500
    with pytest.raises(ForeignLinkError, match="vm=vm/0"):
        devd.create_tap("lvt-0", 1500, "lvbr", alias=tap_alias("other", 0))
    devd.detach("lvt-0")
    assert devd.ports("lvbr") == []
    devd.attach("lvt-0", "lvbr")
    devd.attach("lvt-0", "lvbr")
    assert devd.ports("lvbr") == ["lvt-0"]
    assert devd.delete_tap("lvt-0") is True
    assert devd.delete_tap("lvt-0") is False
    assert devd.ports("lvbr") == []
    devd.delete_bridge("lvbr")
    assert _names(devd) == set()


def test_tap_without_bridge_and_missing_bridge(devd: Devd) -> None:
    devd.create_tap("lvt-1", 1500, alias=tap_alias("vm", 1))
    info = devd.link("lvt-1")
    assert info is not None and info.master == 0 and info.up
    with pytest.raises(NetworkError, match="does not exist"):
        devd.create_tap("lvt-2", 1500, "nosuchbr", alias=tap_alias("vm", 2))
    assert devd.link("lvt-2") is None  # nothing created before the check failed
    devd.delete_tap("lvt-1")


def test_failed_setup_unwinds_completely(devd: Devd) -> None:
    with pytest.raises(RuntimeError, match="boom"), UndoStack() as undo:
        devd.ensure_bridge("lvbr", 1500, bridge_alias("n"), undo=undo)
        devd.ensure_address("lvbr", ipaddress.IPv4Interface("10.9.0.1/24"), undo=undo)
        for i in range(3):
            devd.create_tap(f"lvt-{i}", 1500, "lvbr", alias=tap_alias("vm", i), undo=undo)
        assert len(devd.ports("lvbr")) == 3
        raise RuntimeError("boom")
    assert _names(devd) == set()
    assert devd.addresses() == [("lo", ipaddress.IPv4Interface("127.0.0.1/8"))]


def test_undo_keeps_what_existed_before(devd: Devd) -> None:
    devd.ensure_bridge("lvbr", 1500, bridge_alias("n"))
    with pytest.raises(RuntimeError), UndoStack() as undo:
        devd.ensure_bridge("lvbr", 1500, bridge_alias("n"), undo=undo)  # existed: no undo step
        devd.create_tap("lvt-0", 1500, "lvbr", alias=tap_alias("vm", 0), undo=undo)
        raise RuntimeError
    assert _names(devd) == {"lvbr"}
    devd.delete_bridge("lvbr")


def test_addresses_idempotent_and_bridge_with_ports(devd: Devd) -> None:
    devd.ensure_bridge("lvbr", 1500, bridge_alias("n"))
    gw = ipaddress.IPv4Interface("10.9.0.1/24")
    devd.ensure_address("lvbr", gw)
    devd.ensure_address("lvbr", gw)
    assert ("lvbr", gw) in devd.addresses()
    devd.create_tap("lvt-0", 1500, "lvbr", alias=tap_alias("vm", 0))
    with pytest.raises(NetworkError, match="still has ports lvt-0"):
        devd.delete_bridge("lvbr")
    devd.delete_bridge("lvbr", force=True)
    assert devd.link("lvt-0") is not None  # the kernel only detached it
    assert devd.link("lvt-0").master == 0  # type: ignore[union-attr]
    devd.delete_tap("lvt-0")
    devd.delete_address("lvbr", gw)  # bridge gone: fine


def test_inside_runs_sockets_in_the_namespace(devd: Devd) -> None:
    devd.ensure_bridge("lvbr", 1500, bridge_alias("n"))
    with devd.inside():
        names = {name for _, name in socket.if_nameindex()}
    assert "lvbr" in names
    assert "lvbr" not in {name for _, name in socket.if_nameindex()}
    devd.delete_bridge("lvbr")


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(NetworkError, match="no-such-ns"):
        Devd(netns="no-such-ns")


def test_undo_still_works_after_close(nsname: str) -> None:
    # The toolstack closes its devd before a later step fails: the undo must reopen it,
    # in the same namespace (never the host's).
    undo = UndoStack()
    devd = Devd(netns=nsname)
    devd.ensure_bridge("lvbr", 1500, bridge_alias("n"), undo=undo)
    devd.create_tap("lvt-0", 1500, "lvbr", alias=tap_alias("vm", 0), undo=undo)
    devd.close()
    assert undo.unwind() == []
    with Devd(netns=nsname) as fresh:
        assert _names(fresh) == set()
    devd.close()


def _as_nobody(out: multiprocessing.Queue[list[str]]) -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # drops every capability
    results = []
    with Devd() as d:
        for attempt in (lambda: d.ensure_bridge("lvx", 1500), lambda: d.create_tap("lvx-0", 1500)):
            try:
                attempt()
                results.append("created")
            except CapabilityError as exc:
                results.append(f"CapabilityError {exc}")
    out.put(results)


def test_without_cap_net_admin_errors_name_the_capability(need_net_admin: None) -> None:
    # A forked child running as nobody: every attempt is refused before anything exists.
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    child = ctx.Process(target=_as_nobody, args=(out,))
    child.start()
    try:
        lines = out.get(timeout=30)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    assert all(line.startswith("CapabilityError") for line in lines) and len(lines) == 2, lines
    assert all("CAP_NET_ADMIN" in line for line in lines), lines


def test_hand_over_joins_the_bridge_in_one_request(devd: Devd) -> None:
    """A pooled shell's tap (made on no bridge, at MTU 1500) given to a VM: the
    hand-encoded request (lightvm/devices/rtlink.py) sets master, MTU, alias and up, in
    the devd's namespace; a missing bridge or an index gone since fails clearly."""
    bridge = devd.ensure_bridge("lvbr", 1400, bridge_alias("n"))
    devd.create_tap("lvs-0", 1500, None, alias=tap_alias("shell1", 0))
    devd.hand_over("lvs-0", "lvbr", 1400, tap_alias("vm1", 0))
    info = devd.link("lvs-0")
    assert info is not None
    assert (info.master, info.mtu, info.alias, info.up) == (bridge, 1400, "lightvm:vm=vm1/0", True)
    devd.hand_over("lvs-0", "lvbr", 1400, tap_alias("vm2", 0))  # again (another VM's alias): still one request
    info = devd.link("lvs-0")
    assert info is not None and info.alias == "lightvm:vm=vm2/0"
    with pytest.raises(NetworkError, match="lvnone does not exist"):
        devd.hand_over("lvs-0", "lvnone", 1400, tap_alias("vm3", 0))
    from lightvm.devices import rtlink

    assert devd._rt is not None
    with pytest.raises(OSError) as refused:
        rtlink.set_link(devd._rt, 999_999, bridge, 1400, "x")  # no such index: the kernel's errno
    assert refused.value.errno == errno.ENODEV
    assert devd.delete_tap("lvs-0") is True

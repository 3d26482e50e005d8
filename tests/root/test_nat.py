"""NAT end to end: a guest's UDP datagrams leave a ``--nat`` network masqueraded.

Two namespaces the test makes: "host" (the ``nsname`` fixture: lightvm's networks and
VMs) and "outside", joined by a veth pair on TEST-NET-2 addresses (198.51.100.1/30 on
the host side, 198.51.100.2/30 outside; the host's default route points outside). The
``udpping`` guest sends datagrams whose payload names its own address. One VM sits on a
``--nat`` network, one on a plain network; the outside has a route back to BOTH
subnets, so the only difference between the two is the masquerade rule: the NAT VM's
datagrams must arrive from 198.51.100.1, the plain VM's from its private address.
No traffic touches any interface but the ones made here.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from lightvm.devices import net
from lightvm.devices.devd import Devd
from lightvm.util import Deadline

pytestmark = pytest.mark.root

UDPPING = Path(__file__).resolve().parents[2] / "images" / "build" / "udpping.elf"
HOST_UPLINK, OUTSIDE_ADDR = "198.51.100.1", "198.51.100.2"  # TEST-NET-2 (RFC 5737)
NAT_SUBNET, PLAIN_SUBNET = "10.203.0.0/24", "10.204.0.0/24"
NAT_PORT, PLAIN_PORT = 7777, 7778
WANTED = 5  # datagrams per VM before judging


@pytest.fixture
def outside(nsname: str) -> Iterator[str]:
    """A second namespace joined to ``nsname`` by a veth; ``nsname`` routes everything to it."""
    name = f"{nsname}-out"
    netns.create(name)
    try:
        with IPRoute(netns=nsname) as ipr:
            ipr.link("add", ifname="lvnat-up", kind="veth", peer={"ifname": "lvnat-out", "net_ns_fd": name})
            up = ipr.link_lookup(ifname="lvnat-up")[0]
            ipr.addr("add", index=up, address=HOST_UPLINK, prefixlen=30)
            ipr.link("set", index=up, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=OUTSIDE_ADDR)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            out = ipr.link_lookup(ifname="lvnat-out")[0]
            ipr.addr("add", index=out, address=OUTSIDE_ADDR, prefixlen=30)
            ipr.link("set", index=out, state="up")
            for subnet in (NAT_SUBNET, PLAIN_SUBNET):  # a way back to both: only NAT differs
                ipr.route("add", dst=subnet, gateway=HOST_UPLINK)
        yield name
    finally:
        netns.remove(name)  # takes the veth pair (both ends) with it


@pytest.fixture
def ctx(nsname: str, state_dir: Path) -> Iterator[net.NetContext]:
    with net.NetContext.open(state_dir, mode="tap", netns=nsname) as c:
        try:
            yield c
        finally:
            for record in c.store().networks(with_leases=False):  # even on failure: NAT tables, bridges
                c.store().delete(record.name, force=True)


def _udpping_toml(tmp: Path, name: str, network: str, port: int) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nkernel = "{UDPPING}"\nmemory = 16\n'
        f'cmdline = "dst={OUTSIDE_ADDR}:{port} count=300"\n[[vifs]]\nnetwork = "{network}"\n'
    )
    return path


def _listen(outside: str, ports: tuple[int, ...]) -> list[socket.socket]:
    with Devd(netns=outside) as there, there.inside():  # sockets belong to the namespace they were made in
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in ports]
    for sock, port in zip(socks, ports, strict=True):
        sock.bind((OUTSIDE_ADDR, port))
        sock.setblocking(False)
    return socks


def _collect(socks: list[socket.socket], timeout: float) -> dict[int, list[tuple[str, str]]]:
    """(source address, payload) per local port, until each port has WANTED datagrams or the deadline."""
    got: dict[int, list[tuple[str, str]]] = {s.getsockname()[1]: [] for s in socks}
    deadline = Deadline(timeout)
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while not deadline.expired() and any(len(v) < WANTED for v in got.values()):
            for key, _ in sel.select(timeout=min(0.5, max(deadline.remaining(), 0.01))):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data, (src, _sport) = sock.recvfrom(2048)
                got[sock.getsockname()[1]].append((src, data.decode(errors="replace")))
    return got


def test_nat_network_masquerades_a_guests_traffic_and_a_plain_one_does_not(
    ctx: net.NetContext, nsname: str, outside: str, state_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from lightvm.spec import load_spec
    from lightvm.toolstack import Toolstack

    if not UDPPING.exists():
        pytest.skip(f"needs {UDPPING} (make -C images)")
    store = ctx.store()
    store.create("masq", NAT_SUBNET, nat=True)
    store.create("plain", PLAIN_SUBNET)
    with ctx.devd().inside():  # --nat turned forwarding on, for the whole namespace: both VMs get it
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    monkeypatch.setenv("LIGHTVM_NETNS", nsname)
    monkeypatch.setenv("LIGHTVM_NET_MODE", "tap")
    ts = Toolstack(state_dir)
    with contextlib.ExitStack() as cleanup:  # every callback runs, even if an earlier one raises
        socks = _listen(outside, (NAT_PORT, PLAIN_PORT))
        for sock in socks:
            cleanup.callback(sock.close)
        for name, network, port in (("pinger-nat", "masq", NAT_PORT), ("pinger-plain", "plain", PLAIN_PORT)):
            (result,) = ts.create(load_spec(_udpping_toml(tmp_path, name, network, port)))
            cleanup.callback(ts.destroy, result.name)  # QEMU gone before the namespaces go
        (nat_lease,) = store.get("masq").leases
        (plain_lease,) = store.get("plain").leases
        got = _collect(socks, timeout=30)
    nat_got, plain_got = got[NAT_PORT], got[PLAIN_PORT]
    assert len(nat_got) >= WANTED and len(plain_got) >= WANTED, got
    # The NAT VM's datagrams say who sent them, but arrive from the host's uplink: masqueraded.
    assert all(payload.startswith(f"udpping {nat_lease.ip} ") for _, payload in nat_got), nat_got
    assert {src for src, _ in nat_got} == {HOST_UPLINK}, nat_got
    # Control: same route back, no --nat: the private source address reaches the outside as is.
    assert all(payload.startswith(f"udpping {plain_lease.ip} ") for _, payload in plain_got), plain_got
    assert {src for src, _ in plain_got} == {plain_lease.ip}, plain_got
    # Everything lightvm made in the host namespace goes away with its networks.
    store.delete("masq")
    store.delete("plain")
    devd = ctx.devd()
    assert "lightvm_" not in devd.run(["nft", "list", "ruleset"])
    assert {info.name for info in devd.links()} == {"lo", "lvnat-up"}

"""The network store and its address allocator, without root: a fake devd, a tmp state dir."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
from pathlib import Path

import pytest

from lightvm.devices.ipam import check_mac, mac_for_ip
from lightvm.devices.network import NetworkStore, parse_subnet
from lightvm.errors import (
    AddressExhaustedError,
    ExistsError,
    ForeignLinkError,
    NetworkError,
    NotFoundError,
    SpecError,
    SubnetConflictError,
)
from lightvm.undo import UndoStack

Host = list[tuple[str, ipaddress.IPv4Interface]]


class FakeOps:
    """Records what a real Devd would have done; can be told to fail a step."""

    def __init__(self, fail: str | None = None, foreign: set[str] | None = None) -> None:
        self.bridges: dict[str, str] = {}
        self.macs: dict[str, str | None] = {}
        self.addrs: set[tuple[str, str]] = set()
        self.commands: list[list[str]] = []
        self.fail = fail
        self.foreign = foreign or set()

    def ensure_bridge(
        self, name: str, mtu: int = 1500, alias: str = "", undo: UndoStack | None = None, mac: str | None = None
    ) -> int:
        if name in self.foreign:
            raise ForeignLinkError(f"{name} is not ours")
        if self.fail == "bridge":
            raise NetworkError("bridge refused")
        self.macs[name] = mac
        if name not in self.bridges:
            self.bridges[name] = alias
            if undo is not None:
                undo.push(f"bridge {name}", lambda: self.delete_bridge(name, force=True))
        return 1

    def delete_bridge(self, name: str, force: bool = False) -> bool:
        return self.bridges.pop(name, None) is not None

    def ensure_address(self, ifname: str, iface: ipaddress.IPv4Interface, undo: UndoStack | None = None) -> None:
        if self.fail == "address":
            raise NetworkError("address refused")
        self.addrs.add((ifname, str(iface)))
        if undo is not None:
            undo.push("addr", lambda: self.addrs.discard((ifname, str(iface))))

    def addresses(self) -> Host:
        return []

    def ports(self, bridge: str) -> list[str]:
        return []

    def ifindex(self, name: str) -> int | None:
        return 1 if name in self.bridges else None

    def write_sysctl(self, key: str, value: str) -> None:
        pass

    def run(self, argv: list[str], stdin: str = "", timeout: float = 5.0) -> str:
        if self.fail == "nft":
            raise NetworkError("nft failed")
        self.commands.append(argv)
        return ""


def store(tmp_path: Path, ops: FakeOps | None = None, host: Host | None = None) -> NetworkStore:
    return NetworkStore(tmp_path, ops=ops or FakeOps(), host_addresses=lambda: list(host or []))


def test_create_persists_and_builds_the_bridge(tmp_path: Path) -> None:
    ops = FakeOps()
    net = store(tmp_path, ops).create("default", "10.128.0.0/16", mtu=1400)
    assert (net.bridge, net.gateway, net.prefix, net.mtu) == ("lv-default", "10.128.0.1", 16, 1400)
    assert ops.bridges == {"lv-default": "lightvm:net=default"}
    assert ops.addrs == {("lv-default", "10.128.0.1/16")}
    # The bridge's MAC is fixed (not the lowest of its ports) and is what a vif at the
    # gateway's address would get: no VM has it, and a re-made bridge gets it again.
    assert ops.macs == {"lv-default": "52:54:0a:80:00:01"} and net.gateway_mac == mac_for_ip("10.128.0.1")
    again = store(tmp_path).get("default")  # a fresh store: state comes from disk
    assert again.subnet == "10.128.0.0/16" and again.capacity == 65533
    assert [n.name for n in store(tmp_path).networks()] == ["default"]


def test_lease_sequence_mac_and_idempotence(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    a = s.lease("n", "vm1", 0)
    b = s.lease("n", "vm1", 1)
    c = s.lease("n", "vm2", 0)
    assert [a.ip, b.ip, c.ip] == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert (a.prefix, a.gateway, a.mtu, a.bridge) == (24, "10.1.0.1", 1500, "lv-n")
    assert a.mac == "52:54:0a:01:00:02" == mac_for_ip("10.1.0.2")
    assert s.lease("n", "vm1", 0) == a  # same vif asks again: same lease
    assert len({x.mac for x in (a, b, c)}) == 3


def test_release_frees_and_round_robin_delays_reuse(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    first = s.lease("n", "vm1", 0)
    assert s.release("vm1") == 1
    assert s.get("n").leases == []
    assert s.lease("n", "vm2", 0).ip != first.ip  # the cursor moved on
    assert s.release("nobody") == 0


def test_leases_survive_a_restart(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    ips = {s.lease("n", f"vm{i}", 0).ip for i in range(5)}
    fresh = NetworkStore(tmp_path)  # no devd at all: lease/release never need one
    assert {lease.ip for lease in fresh.get("n").leases} == ips
    new = fresh.lease("n", "vm9", 0)
    assert new.ip not in ips


def test_exhaustion_is_a_clear_error_and_release_recovers(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("tiny", "10.2.0.0/29")  # .1 gateway, .2-.6 for VMs
    got = [s.lease("tiny", f"vm{i}", 0).ip for i in range(5)]
    assert got == [f"10.2.0.{i}" for i in range(2, 7)]
    with pytest.raises(AddressExhaustedError, match=r"tiny .*full.*5"):
        s.lease("tiny", "vm5", 0)
    assert len(s.get("tiny").leases) == 5  # the failed lease left nothing
    s.release("vm2")
    assert s.lease("tiny", "vm5", 0).ip == "10.2.0.4"


def test_overlap_with_another_network_creates_nothing(tmp_path: Path) -> None:
    ops = FakeOps()
    s = store(tmp_path, ops)
    s.create("a", "10.128.0.0/16")
    with pytest.raises(SubnetConflictError, match="overlaps network 'a'"):
        s.create("b", "10.128.42.0/24")
    with pytest.raises(SubnetConflictError):
        s.create("c", "10.0.0.0/8")
    assert list(ops.bridges) == ["lv-a"]
    assert [n.name for n in s.networks()] == ["a"]


def test_overlap_with_a_host_address_creates_nothing(tmp_path: Path) -> None:
    ops = FakeOps()
    host = [("eth0", ipaddress.IPv4Interface("192.168.1.10/24")), ("lo", ipaddress.IPv4Interface("127.0.0.1/8"))]
    s = store(tmp_path, ops, host)
    with pytest.raises(SubnetConflictError, match="eth0"):
        s.create("lan", "192.168.0.0/16")
    assert ops.bridges == {} and s.networks() == []
    s.create("ok", "192.169.0.0/16")


def test_duplicate_name_and_bad_input(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    with pytest.raises(ExistsError):
        s.create("n", "10.9.0.0/24")
    for bad in ("10.3.0.1/24", "10.3.0.0", "10.3.0.0/30", "300.1.0.0/16", "127.0.0.0/8", "224.0.0.0/8"):
        with pytest.raises(NetworkError):
            s.create("x", bad)
    with pytest.raises(NetworkError, match="name"):
        s.create("Bad Name", "10.4.0.0/24")
    with pytest.raises(NetworkError, match="longer than 15"):
        s.create("averyverylongname", "10.4.0.0/24")
    with pytest.raises(NotFoundError):
        s.lease("missing", "vm", 0)
    assert parse_subnet("10.5.0.0/16").num_addresses == 65536


def test_foreign_bridge_and_failed_steps_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ForeignLinkError):
        store(tmp_path, FakeOps(foreign={"lv-n"})).create("n", "10.1.0.0/24")
    ops = FakeOps(fail="address")
    with pytest.raises(NetworkError, match="address refused"):
        store(tmp_path, ops).create("n", "10.1.0.0/24")
    assert ops.bridges == {}  # the bridge made before the failure was undone
    ops = FakeOps(fail="nft")
    with pytest.raises(NetworkError, match="nft"):
        store(tmp_path, ops).create("n", "10.1.0.0/24", nat=True)
    assert ops.bridges == {} and ops.addrs == set()
    assert store(tmp_path).networks() == []


def test_nat_runs_nft_and_delete_removes_it(tmp_path: Path) -> None:
    ops = FakeOps()
    s = store(tmp_path, ops)
    s.create("n", "10.1.0.0/24", nat=True)
    assert ops.commands == [["nft", "-f", "-"]]
    s.delete("n")
    assert ops.commands[-1] == ["nft", "delete", "table", "ip", "lightvm_n"]
    assert ops.bridges == {}


def test_delete_refuses_while_leased_unless_forced(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    s.lease("n", "vm1", 0)
    with pytest.raises(NetworkError, match="vm1"):
        s.delete("n")
    s.delete("n", force=True)
    with pytest.raises(NotFoundError):
        s.get("n")


def test_fixed_ip_and_mac_rules(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    fixed = s.lease("n", "vm1", 0, ip="10.1.0.50", mac="02:00:00:00:00:01")
    assert (fixed.ip, fixed.mac) == ("10.1.0.50", "02:00:00:00:00:01")
    for ip in ("10.1.0.50", "10.1.0.1", "10.1.0.0", "10.1.0.255", "10.2.0.5"):
        with pytest.raises(SpecError):
            s.lease("n", "vm2", 0, ip=ip)
    with pytest.raises(SpecError, match="already used"):
        s.lease("n", "vm2", 0, mac="02:00:00:00:00:01")
    for mac in ("01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "52:54:00:12:34", "zz:54:00:12:34:56"):
        with pytest.raises(SpecError):
            check_mac(mac)
    assert check_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"
    assert len(s.get("n").leases) == 1


def _lease_many(state_dir: str, worker: int, out: multiprocessing.Queue[list[str]]) -> None:
    s = NetworkStore(state_dir)
    out.put([s.lease("n", f"w{worker}-{i}", 0).ip for i in range(15)])


def test_concurrent_leases_never_collide(tmp_path: Path) -> None:
    store(tmp_path).create("n", "10.1.0.0/24")
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_lease_many, args=(str(tmp_path), w, out)) for w in range(4)]
    for p in procs:
        p.start()
    ips = [ip for _ in procs for ip in out.get(timeout=30)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(ips) == 60 and len(set(ips)) == 60
    assert len(NetworkStore(tmp_path).get("n").leases) == 60


def test_layout_is_one_entry_per_lease(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    s.lease("n", "vm1", 0)
    s.lease("n", "vm1", 1, mac="02:00:00:00:00:07")
    root = tmp_path / "networks" / "n"
    assert os.readlink(root / "ip" / "10.1.0.2") == "vm1#0#52:54:0a:01:00:02#0"
    assert os.readlink(root / "vm" / "vm1#1") == "10.1.0.3"
    assert os.readlink(root / "mac" / "02:00:00:00:00:07") == "10.1.0.3"
    assert s.lease_count("n") == 2
    assert s.release("vm1") == 2
    assert [sorted(os.listdir(root / d)) for d in ("ip", "vm", "mac")] == [[], [], []]


def test_a_shell_s_lease_is_handed_to_its_vm_whole(tmp_path: Path) -> None:
    # lightvmd's shells lease at prepare under their id; the VM they become takes it over.
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    shell = s.lease("n", "0123456789abcdef", 0)
    other = s.lease("n", "vm9", 0)
    assert s.holds("n", "0123456789abcdef", 0, shell.ip) and not s.holds("n", "vm1", 0, shell.ip)
    assert s.hand_lease("n", "0123456789abcdef", 0, "vm1") == shell.ip
    root = tmp_path / "networks" / "n"
    assert os.readlink(root / "ip" / shell.ip) == f"vm1#0#{shell.mac}#0"  # same address, same MAC
    assert sorted(os.listdir(root / "vm")) == ["vm1#0", "vm9#0"]
    assert sorted(os.listdir(root / "ip")) == sorted([shell.ip, other.ip])  # nothing staged is left
    assert s.holds("n", "vm1", 0, shell.ip) and not s.holds("n", "0123456789abcdef", 0, shell.ip)
    assert s.lease("n", "vm1", 0) == shell  # asking again: the lease it holds
    assert s.release("0123456789abcdef") == 0
    # Only what is held can be handed, and never over a lease the new owner has.
    with pytest.raises(NetworkError, match="holds no lease"):
        s.hand_lease("n", "0123456789abcdef", 0, "vm2")
    with pytest.raises(NetworkError, match="holds a lease already"):
        s.hand_lease("n", "vm1", 0, "vm9")
    assert s.holds("n", "vm1", 0, shell.ip) and s.holds("n", "vm9", 0, other.ip)
    assert s.release("vm1") == 1 and s.lease_count("n") == 1


def test_a_staged_entry_left_by_a_crash_is_not_a_lease(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    held = s.lease("n", "shell", 0)
    os.symlink(f"vm1#0#{held.mac}#0", tmp_path / "networks" / "n" / "ip" / f".{held.ip}.vm1")
    assert s.lease_count("n") == 1 and [x.vm for x in s.get("n").leases] == ["shell"]
    assert s.hand_lease("n", "shell", 0, "vm1") == held.ip  # and a new hand-over replaces it
    assert [x.vm for x in s.get("n").leases] == ["vm1"]


def test_thorough_release_finds_a_lease_whose_index_was_lost(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    s.lease("n", "vm1", 0)
    (tmp_path / "networks" / "n" / "vm" / "vm1#0").unlink()  # a crash between the two symlinks
    assert s.release("vm1") == 0
    assert s.release("vm1", thorough=True) == 1
    assert s.get("n").leases == []


def test_a_fixed_mac_may_not_shadow_a_derived_one(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    s.lease("n", "vm1", 0)  # 10.1.0.2, MAC 52:54:0a:01:00:02
    with pytest.raises(SpecError, match="vm1"):
        s.lease("n", "vm2", 0, mac="52:54:0a:01:00:02")
    s.lease("n", "vm3", 0, ip="10.1.0.10", mac="52:54:0a:01:00:04")  # the MAC 10.1.0.4 would derive
    with pytest.raises(SpecError, match="vm3"):
        s.lease("n", "vm4", 0, ip="10.1.0.4")
    assert s.lease("n", "vm4", 0).ip == "10.1.0.3"
    assert s.lease("n", "vm5", 0).ip == "10.1.0.5"  # the allocator skips .4


def test_bad_vm_names_cannot_escape_the_state_dir(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("n", "10.1.0.0/24")
    for bad in ("../x", "a/b", ".hidden", "a#b", ""):
        with pytest.raises(NetworkError):
            s.lease("n", bad, 0)
    with pytest.raises(NetworkError):
        s.lease("n", "vm", 32)

"""Pooled NICs without QEMU or root: which specs a NIC shell serves (the flavour, and
whether its shell can lease at prepare), why the others go cold, the shell device's MAC,
and the vif page's dev_mac."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from lightvm.daemon import pool_nics
from lightvm.daemon.flavour import MIXED_NICS_REASON, Flavour, poolable
from lightvm.devices import net, shellnet
from lightvm.devices.ipam import mac_for_ip
from lightvm.errors import NetworkError
from lightvm.noxs import NoxsError, NoxsRegion, PageConfig, VifConfig, VifCtrl, parse_mac
from lightvm.spec import VMSpec, parse_spec
from lightvm.undo import UndoStack


def spec(tmp_path: Path, **extra: Any) -> VMSpec:
    data: dict[str, Any] = {"name": "day", "kernel": "/k/daytime.elf", "memory": "4M", **extra}
    return parse_spec(data, tmp_path / "day.toml", check_kernel=False)


def test_a_nic_flavour_counts_nics_and_names_a_network_only_when_it_can_lease_there(tmp_path: Path) -> None:
    on_a = spec(tmp_path, vifs=[{"network": "a"}])
    fixed_ip = spec(tmp_path, vifs=[{"network": "b", "ip": "10.0.0.9"}], name="other")
    fixed_mtu = spec(tmp_path, vifs=[{"network": "a", "mtu": 1400}])
    bridged = spec(tmp_path, vifs=[{"bridge": "br0", "ip": "10.1.0.2/24"}])
    flavour = Flavour.of(on_a, "tcg")
    # Only the network named: the shell leases its address there at prepare.
    assert flavour.nics == 1 and flavour.networks == ("a",) and flavour.label() == "daytime.elf/4M/1cpu/tcg/1tap@a"
    assert Flavour.of(spec(tmp_path, vifs=[{"network": "b"}]), "tcg").networks == ("b",)
    # Anything fixed is the VM's, set at execute: one plain tap shell serves all of those.
    plain = Flavour.of(fixed_ip, "tcg")
    assert plain.networks == () and plain.label() == "daytime.elf/4M/1cpu/tcg/1tap"
    assert plain == Flavour.of(fixed_mtu, "tcg") == Flavour.of(bridged, "tcg") != flavour
    assert Flavour.of(spec(tmp_path), "tcg") != flavour  # no NIC: another shell
    assert Flavour.of(spec(tmp_path), "tcg").label() == "daytime.elf/4M/1cpu/tcg"
    # All vifs or none: one vif with an address of its own keeps the whole shell plain.
    two = spec(tmp_path, vifs=[{"network": "a"}, {"network": "b", "mac": "52:54:00:00:00:09"}])
    assert Flavour.of(two, "tcg").networks == ()
    assert Flavour.of(spec(tmp_path, vifs=[{"network": "a"}, {"network": "b"}]), "tcg").networks == ("a", "b")
    assert Flavour.of(on_a, "tcg", net_mode="user").networks == ()  # a rootless daemon has no taps


def test_pre_leasable_reads_specs_and_mappings_alike(tmp_path: Path) -> None:
    assert pool_nics.pre_leasable({"network": "a"})
    assert pool_nics.pre_leasable(spec(tmp_path, vifs=[{"network": "a"}]).vifs[0])
    for extra in ({"ip": "10.0.0.9"}, {"mac": "52:54:00:00:00:09"}, {"mtu": 1400}, {"gateway": "10.0.0.1"}):
        assert not pool_nics.pre_leasable({"network": "a", **extra}), extra
        assert not pool_nics.pre_leasable(spec(tmp_path, vifs=[{"network": "a", **extra}]).vifs[0]), extra
    assert not pool_nics.pre_leasable({"bridge": "br0", "ip": "10.1.0.2/24"})
    assert not pool_nics.pre_leasable({})


def test_a_pre_leased_placeholder_page_says_the_vm_s_address_and_the_device_s_mac() -> None:
    leased = [net.PreparedVif(0, net.NetMode.TAP, "52:54:0a:d5:1f:07", "10.213.31.7", 24, "10.213.31.1", 1500, "lvx-0")]
    (vif,) = pool_nics.placeholder_vifs("0123456789abcdef", 1, "tap", leased)
    assert (vif.ip, vif.prefix, vif.gateway, vif.mtu) == ("10.213.31.7", 24, "10.213.31.1", 1500)
    assert vif.mac == parse_mac("52:54:0a:d5:1f:07")
    assert vif.dev_mac == parse_mac(shellnet.device_mac("0123456789abcdef", 0))
    # The execute's page for that VM says the same: a guest configured at its wait point keeps it.
    nic = net.PreparedVif(0, net.NetMode.TAP, shellnet.device_mac("0123456789abcdef", 0), "0.0.0.0", 0, "0.0.0.0", 1500)
    assert pool_nics.page_vifs(leased, [nic]) == [vif]
    (plain,) = pool_nics.placeholder_vifs("0123456789abcdef", 1, "tap")
    assert plain.ip == "0.0.0.0" and plain.mac == plain.dev_mac == vif.dev_mac


def test_user_networking_is_a_flavour_of_its_own(tmp_path: Path) -> None:
    user = spec(tmp_path, vifs=[{"publish": ["8013:13"]}])
    assert Flavour.of(user, "tcg").label() == "daytime.elf/4M/1cpu/tcg/1user"
    assert Flavour.of(user, "tcg") == Flavour.of(spec(tmp_path, vifs=[{}]), "tcg")  # forwards are set at execute
    on_a = spec(tmp_path, vifs=[{"network": "a"}])
    assert Flavour.of(on_a, "tcg") != Flavour.of(user, "tcg")
    assert Flavour.of(on_a, "tcg", net_mode="user") == Flavour.of(user, "tcg")  # a rootless daemon: user for all


def test_vifs_of_one_kind_are_poolable_mixed_are_not(tmp_path: Path) -> None:
    assert poolable(spec(tmp_path, vifs=[{"network": "a"}])) is None
    assert poolable(spec(tmp_path, vifs=[{"bridge": "br0", "ip": "10.1.0.2/24"}])) is None
    assert poolable(spec(tmp_path, vifs=[{}])) is None  # neither network nor bridge: user networking
    assert poolable(spec(tmp_path, vifs=[{"publish": ["8013:13"]}])) is None
    assert poolable(spec(tmp_path, vifs=[{"network": "a"}, {}])) == MIXED_NICS_REASON
    assert poolable(spec(tmp_path, vifs=[{"network": "a"}, {}]), net_mode="user") is None  # rootless: both user
    (tmp_path / "d.img").write_bytes(bytes(512))
    with_disks = spec(tmp_path, disks=[{"path": "d.img", "readonly": True}, {"path": "d.img"}], vifs=[{"network": "a"}])
    assert poolable(with_disks) is None  # disks too: lightvm/devices/shellblk.py
    flavour = Flavour.of(with_disks, "tcg")
    assert flavour.disks == (True, False) and flavour.label().endswith("/1tap@a/2disk(ro,rw)")


def test_shell_device_macs_are_unicast_local_and_distinct() -> None:
    macs = {shellnet.device_mac(s, i) for s in ("0123456789abcdef", "fedcba9876543210") for i in (0, 1)}
    assert len(macs) == 4
    for mac in macs:
        raw = parse_mac(mac)
        assert not raw[0] & 1 and raw[0] & 2, mac  # unicast, locally administered


def test_hand_over_refuses_a_shell_with_another_nic_count() -> None:
    tap = net.PreparedVif(0, net.NetMode.TAP, "5a:00:00:00:00:01", "0.0.0.0", 0, "0.0.0.0", 1500, "lv000000-0")
    with pytest.raises(NetworkError, match="2 vif"):
        shellnet.hand_over(
            [net.ValidVif(network="a"), net.ValidVif(network="a")], [tap], "vm", cast(net.NetContext, None), UndoStack()
        )


def test_dev_mac_goes_into_the_vif_page(tmp_path: Path) -> None:
    vif = VifConfig(
        mac=parse_mac("52:54:00:0a:0b:0c"), ip="10.0.0.2", prefix=24, dev_mac=parse_mac("5a:01:02:03:04:05")
    )
    plain = VifConfig(mac=parse_mac("52:54:00:0a:0b:0d"), ip="10.0.0.3", prefix=24)
    with NoxsRegion.create(tmp_path / "region", 3) as region:
        region.write_config(PageConfig(name="vm", vifs=[vif, plain]))
        buf = region._buf
        first = VifCtrl.from_buffer_copy(buf, 2 * 4096)
        second = VifCtrl.from_buffer_copy(buf, 3 * 4096)
    assert bytes(first.dev_mac) == parse_mac("5a:01:02:03:04:05") and bytes(first.mac) == vif.mac
    assert bytes(second.dev_mac) == bytes(6)  # an old page's value: pair the device by mac


@pytest.mark.parametrize("bad", ["01:00:5e:00:00:01", "00:00:00:00:00:00"])
def test_dev_mac_must_be_unicast_and_set(bad: str) -> None:
    with pytest.raises(NoxsError, match="device MAC"):
        VifConfig(mac=parse_mac("52:54:00:0a:0b:0c"), dev_mac=parse_mac(bad))


def test_noxs_config_carries_the_shell_device_mac() -> None:
    vif = net.PreparedVif(0, net.NetMode.TAP, "52:54:00:0a:0b:0c", "10.0.0.2", 24, "10.0.0.1", 1400, "lvx-0", "br")
    assert net.noxs_config(vif).dev_mac == b""
    assert net.noxs_config(vif, dev_mac="5a:01:02:03:04:05").dev_mac == parse_mac("5a:01:02:03:04:05")


class FakeQMP:
    """Queues commands as QEMU would and answers each with ``answer`` when waited for."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.lines: list[str] = []
        self.waited: list[int] = []

    def send(self, command: str, arguments: dict[str, Any]) -> int:
        assert command == "human-monitor-command"
        self.lines.append(arguments["command-line"])
        return len(self.lines)

    def wait(self, cmd_id: int, timeout: float, command: str) -> str:
        assert command == "hostfwd_add" and timeout > 0
        self.waited.append(cmd_id)
        return self.answer


class FakeMachine:
    def __init__(self, answer: str = "") -> None:
        self.qmp = FakeQMP(answer)


PUBLISH = (net.parse_publish("127.0.0.1:8013:13"), net.parse_publish("5353:53/udp"))


def test_a_user_vif_keeps_the_shell_address_and_device_mac() -> None:
    (vif,) = shellnet.hand_over_user([net.ValidVif(publish=PUBLISH)], shellnet.user_nics("0123456789abcdef", 1), "web")
    # The address as cold; the shell device's MAC (the guest set it all at its wait point).
    assert (vif.mac, vif.ip, vif.mode) == (shellnet.device_mac("0123456789abcdef", 0), net.USER_IP, net.NetMode.USER)
    assert vif.publish == PUBLISH
    (pinned,) = shellnet.hand_over_user(
        [net.ValidVif(mac="52:54:00:12:34:56")], shellnet.user_nics("0123456789abcdef", 1), "web"
    )
    assert pinned.mac == "52:54:00:12:34:56"  # the spec's MAC wins
    assert shellnet.forward_rules([pinned]) == []
    with pytest.raises(NetworkError, match=r"2 vif\(s\) for a shell with 1 NIC"):
        shellnet.hand_over_user([net.ValidVif(), net.ValidVif()], shellnet.user_nics("0123456789abcdef", 1), "web")


def test_forwards_are_queued_on_the_vifs_netdev_then_checked() -> None:
    machine = FakeMachine()
    vifs = shellnet.hand_over_user(
        [net.ValidVif(), net.ValidVif(publish=PUBLISH)], shellnet.user_nics("0123456789abcdef", 2), "web"
    )
    queued = shellnet.queue_forwards(cast(Any, machine), shellnet.forward_rules(vifs))
    # Sent, not yet waited for: QEMU adds them while the caller's guest wakes.
    assert machine.qmp.lines == ["hostfwd_add n1 tcp:127.0.0.1:8013-:13", "hostfwd_add n1 udp::5353-:53"]
    assert machine.qmp.waited == []
    shellnet.check_forwards(cast(Any, machine), queued)
    assert machine.qmp.waited == [1, 2]


def test_a_refused_forward_fails_the_check() -> None:
    machine = FakeMachine("Could not set up host forwarding rule 'tcp::8013-:13'\r\n")
    vifs = shellnet.hand_over_user(
        [net.ValidVif(publish=(net.parse_publish("8013:13"),))], shellnet.user_nics("0123456789abcdef", 1), "web"
    )
    queued = shellnet.queue_forwards(cast(Any, machine), shellnet.forward_rules(vifs))
    with pytest.raises(NetworkError, match=r"vif 0: cannot publish 8013->13/tcp: Could not set up .*host port free"):
        shellnet.check_forwards(cast(Any, machine), queued)


def test_the_vm_record_names_its_forwards_on_the_netdev() -> None:
    (nic,) = shellnet.user_nics("0123456789abcdef", 1)
    argv = ["qemu", "-mon", "x", *net.qemu_args(nic), "-S"]
    (vif,) = shellnet.hand_over_user([net.ValidVif(publish=(net.parse_publish("8013:13"),))], [nic], "web")
    out = shellnet.vm_argv(argv, [vif], [nic])
    assert out[4] == "user,id=n0,net=10.0.2.0/24,hostfwd=tcp::8013-:13"
    assert out[6] == f"virtio-net-device,netdev=n0,mac={nic.mac}"  # the device keeps the shell's MAC


def test_the_placeholder_page_names_each_shell_device() -> None:
    from lightvm.daemon.pool_nics import placeholder_vifs

    assert placeholder_vifs("0123456789abcdef", 0) == []
    vifs = placeholder_vifs("0123456789abcdef", 2)
    assert [v.dev_mac for v in vifs] == [parse_mac(shellnet.device_mac("0123456789abcdef", i)) for i in (0, 1)]
    assert all(v.mac == v.dev_mac and v.ip == "0.0.0.0" for v in vifs)  # a valid vif with no address
    # User networking: every VM's address, set up by the guest at its wait point.
    (user,) = placeholder_vifs("0123456789abcdef", 1, "user")
    assert (user.mac, user.ip, user.prefix, user.gateway, user.mtu) == (
        vifs[0].mac, net.USER_IP, net.USER_PREFIX, net.USER_GATEWAY, 1500
    )  # fmt: skip


def test_low_published_ports_take_the_cold_path_when_the_jail_drops_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell's QEMU adds a create's forwards after its jail gave up root, so it cannot
    bind a host port below 1024: such a VM takes the cold path and says why."""
    from lightvm import jail

    low = spec(tmp_path, vifs=[{"publish": ["127.0.0.1:80:13"]}])
    high = spec(tmp_path, vifs=[{"publish": ["8013:13"]}])
    monkeypatch.setattr(jail, "layers_drop_root", lambda: True)
    assert "below 1024" in (poolable(low) or "") and poolable(high) is None
    monkeypatch.setattr(jail, "layers_drop_root", lambda: False)  # rootless or LIGHTVM_JAIL=off
    assert poolable(low) is None


class _Ops:
    """The bridge side a NetworkStore drives, faked (no netlink, no root)."""

    def ensure_bridge(
        self, name: str, mtu: int = 1500, alias: str = "", undo: UndoStack | None = None, mac: str | None = None
    ) -> int:
        return 1

    def ensure_address(self, ifname: str, iface: object, undo: UndoStack | None = None) -> None:
        pass

    def addresses(self) -> list[Any]:
        return []

    def ifindex(self, name: str) -> int | None:
        return 1

    def write_sysctl(self, key: str, value: str) -> None:
        pass

    def run(self, argv: list[str], stdin: str = "", timeout: float = 5.0) -> str:
        return ""


class _Devd:
    """Where each tap was put (bridge, MTU, alias), as Devd.hand_over would."""

    def __init__(self) -> None:
        self.on: dict[str, tuple[str, int, str]] = {}

    def ifindex(self, name: str) -> int | None:
        return 1

    def hand_over(self, tap: str, bridge: str, mtu: int, alias: str) -> None:
        self.on[tap] = (bridge, mtu, alias)

    def detach(self, tap: str) -> None:
        self.on.pop(tap, None)


class _Ctx:
    def __init__(self, store: Any) -> None:
        self._store, self._devd = store, _Devd()

    def store(self) -> Any:
        return self._store

    def devd(self) -> _Devd:
        return self._devd


def _net_ctx(tmp_path: Path, subnets: dict[str, str]) -> _Ctx:
    """A real allocator over ``subnets`` in ``tmp_path``, with the netlink side faked."""
    from lightvm.devices.network import NetworkStore

    store = NetworkStore(tmp_path, ops=cast(Any, _Ops()), host_addresses=lambda: [])
    for name, subnet in subnets.items():
        store.create(name, subnet)
    return _Ctx(store)


def _taps(shell: str, count: int) -> list[net.PreparedVif]:
    return [
        net.PreparedVif(i, net.NetMode.TAP, shellnet.device_mac(shell, i), "0.0.0.0", 0, "0.0.0.0", 1500, f"lvt-{i}")
        for i in range(count)
    ]


def test_a_shell_leases_at_prepare_and_its_vm_takes_the_lease_over(tmp_path: Path) -> None:
    ctx = _net_ctx(tmp_path, {"a": "10.9.0.0/24"})
    store, shell = ctx.store(), "0123456789abcdef"
    undo = UndoStack()
    (vif,) = shellnet.lease_taps(_taps(shell, 1), ["a"], shell, cast(Any, ctx), undo)
    assert (vif.network, vif.tap, vif.bridge) == ("a", "lvt-0", "lv-a") and vif.mac == mac_for_ip(vif.ip)
    assert ctx.devd().on == {"lvt-0": ("lv-a", 1500, f"lightvm:vm={shell}/0")}  # on the bridge, as the shell
    assert [(x.vm, x.ip) for x in store.get("a").leases] == [(shell, vif.ip)]
    # The execute: checked, nothing leased; a vif asking for more is refused.
    assert shellnet.keep_leases([net.ValidVif(network="a")], [vif], shell, "web", ctx.store()) == [vif]
    with pytest.raises(NetworkError, match="its own address"):
        shellnet.keep_leases([net.ValidVif(network="a", mtu=1400)], [vif], shell, "web", ctx.store())
    # After the reply: the VM's name holds the same address, the tap carries its alias.
    shellnet.hand_leases([vif], shell, "web", cast(Any, ctx))
    assert [(x.vm, x.ip, x.mac) for x in store.get("a").leases] == [("web", vif.ip, vif.mac)]
    assert ctx.devd().on["lvt-0"] == ("lv-a", 1500, "lightvm:vm=web/0")
    undo.unwind()  # a shell's undo after the hand-over releases nothing of the VM's
    assert [x.vm for x in store.get("a").leases] == ["web"]


def test_a_lease_gone_since_prepare_fails_the_execute(tmp_path: Path) -> None:
    ctx = _net_ctx(tmp_path, {"a": "10.9.0.0/24"})
    shell = "0123456789abcdef"
    (vif,) = shellnet.lease_taps(_taps(shell, 1), ["a"], shell, cast(Any, ctx), UndoStack())
    ctx.store().release(shell)  # e.g. the network deleted and made again
    with pytest.raises(NetworkError, match="is gone"):
        shellnet.keep_leases([net.ValidVif(network="a")], [vif], shell, "web", ctx.store())


def test_pre_leasing_is_all_or_nothing_and_leaves_a_small_network_s_last_addresses(tmp_path: Path) -> None:
    from lightvm.errors import AddressExhaustedError, NotFoundError

    ctx = _net_ctx(tmp_path, {"a": "10.9.0.0/24", "small": "10.9.1.0/28"})  # /28: 13 VM addresses
    store, shell = ctx.store(), "0123456789abcdef"
    with pytest.raises(NotFoundError):  # the second network does not exist: the first tap's lease goes too
        shellnet.lease_taps(_taps(shell, 2), ["a", "nope"], shell, cast(Any, ctx), UndoStack())
    assert store.get("a").leases == [] and ctx.devd().on == {}
    for i in range(13 - shellnet.PRE_LEASE_RESERVE):
        store.lease("small", f"vm{i}", 0)
    with pytest.raises(AddressExhaustedError, match="are for VMs"):
        shellnet.lease_taps(_taps(shell, 1), ["small"], shell, cast(Any, ctx), UndoStack())
    assert shell not in {x.vm for x in store.get("small").leases} and ctx.devd().on == {}
    store.release("vm0")
    (vif,) = shellnet.lease_taps(_taps(shell, 1), ["small"], shell, cast(Any, ctx), UndoStack())
    assert vif.network == "small"

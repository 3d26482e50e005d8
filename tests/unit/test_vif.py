"""The vif device module without root: validation, QEMU args, NoXS config, user networking."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lightvm.cli import network
from lightvm.devices import net
from lightvm.devices.devd import check_ifname
from lightvm.errors import CapabilityError, NetworkError, SpecError
from lightvm.noxs import VifConfig
from lightvm.undo import UndoStack


def test_validate_accepts_the_table_keys() -> None:
    v = net.validate({"network": "default", "ip": "10.128.0.9", "mac": "52:54:00:AA:BB:CC", "mtu": 1400})
    assert (v.network, v.ip, v.mac, v.mtu) == ("default", "10.128.0.9", "52:54:00:aa:bb:cc", 1400)
    b = net.validate({"bridge": "br0", "ip": "192.168.5.7/24", "gateway": "192.168.5.1"})
    assert (b.bridge, b.ip, b.gateway) == ("br0", "192.168.5.7/24", "192.168.5.1")
    u = net.validate({"publish": ["8013:13", "127.0.0.1:8080:80/tcp", "5353:53/udp"]})
    assert [p.hostfwd() for p in u.publish] == [
        "hostfwd=tcp::8013-:13",
        "hostfwd=tcp:127.0.0.1:8080-:80",
        "hostfwd=udp::5353-:53",
    ]
    assert net.validate(net.validate({"network": "n"})) == net.validate({"network": "n"})


class _SpecLike:  # the attributes lightvm.spec.VifSpec has
    network = "n"
    bridge = None
    ip = None
    gateway = None
    mac = None
    mtu = 9000


def test_validate_takes_spec_objects() -> None:
    assert net.validate(_SpecLike()) == net.ValidVif(network="n", mtu=9000)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"network": "a", "bridge": "b"}, "either"),
        ({"bridge": "br0"}, "needs 'ip'"),
        ({"bridge": "br0", "ip": "10.0.0.5"}, "prefix"),
        ({"network": "n", "mac": "01:00:5e:00:00:01"}, "multicast"),
        ({"network": "n", "mac": "ff:ff:ff:ff:ff:ff"}, "multicast"),
        ({"network": "n", "mtu": 20}, "68..9000"),
        ({"network": "n", "ip": "10.0.0.300"}, "ip"),
        ({"network": "n", "colour": "red"}, "unknown key"),
        ({"publish": ["8013"]}, "HOSTPORT:GUESTPORT"),
        ({"publish": ["70000:13"]}, "1..65535"),
        ({"bridge": "a/b", "ip": "10.0.0.5/24"}, "interface name"),
    ],
)
def test_validate_rejects_bad_entries(entry: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        net.validate(entry, "vifs[0]")


def test_tap_names_fit_ifnamsiz_and_differ() -> None:
    names = {net.tap_name(f"vm-{i}", 0) for i in range(500)}
    assert len(names) == 500
    for name in names:
        check_ifname(name)
        assert name.startswith("lv") and len(name) <= 15
    assert net.tap_name("x" * 48, 31) != net.tap_name("x" * 48, 31, attempt=1)
    assert len(net.tap_name("x" * 48, 999)) <= 15


def _tap_vif(index: int = 0) -> net.PreparedVif:
    return net.PreparedVif(
        index, net.NetMode.TAP, "52:54:0a:80:00:02", "10.128.0.2", 16, "10.128.0.1", 1500, "lvabcdef-0", "lv-default"
    )


def test_qemu_args_per_machine_and_mode() -> None:
    tap = _tap_vif()
    assert net.qemu_args(tap) == [
        "-netdev",
        "tap,id=n0,ifname=lvabcdef-0,script=no,downscript=no",
        "-device",
        "virtio-net-device,netdev=n0,mac=52:54:0a:80:00:02",
    ]
    assert net.qemu_args(tap, machine="microvm,pcie=on")[3].startswith("virtio-net-device,")
    assert net.qemu_args(tap, machine="q35")[3] == "virtio-net-pci,netdev=n0,mac=52:54:0a:80:00:02,romfile="
    assert net.qemu_args(tap, machine="microvm", transport="pci")[3].startswith("virtio-net-pci,")
    with pytest.raises(SpecError):
        net.qemu_args(tap, transport="isa")


def test_user_mode_prepare_needs_no_host_resources(tmp_path: Path) -> None:
    ctx = net.NetContext(tmp_path, net.NetMode.USER)
    specs = [net.validate({"network": "default"}), net.validate({})]
    with UndoStack() as undo:
        vifs = net.prepare_all(specs, "daytime", ctx, undo, publish=["8013:13"])
    assert len(undo) == 0  # nothing on the host to undo
    first, second = vifs
    assert (first.mode, first.ip, first.prefix, first.gateway) == (net.NetMode.USER, "10.0.2.15", 24, "10.0.2.2")
    assert net.qemu_args(first)[1] == "user,id=n0,net=10.0.2.0/24,hostfwd=tcp::8013-:13"
    assert net.qemu_args(second)[1] == "user,id=n1,net=10.0.2.0/24"
    assert first.mac != second.mac and int(first.mac[:2], 16) & 1 == 0
    cfg = net.noxs_config(first)
    assert cfg == VifConfig(bytes.fromhex(first.mac.replace(":", "")), "10.0.2.15", 24, "10.0.2.2", 1500, "")
    assert "user" in ctx.describe()
    line = net.summary(vifs)
    assert line.startswith("networking: user") and "8013->13/tcp" in line and "vif1: 10.0.2.15/24" in line
    assert net.summary([]) == "networking: none (no vifs)"
    with ctx.inside():  # no namespace: a no-op that opens nothing
        assert ctx._devd is None
    net.release(first, "daytime", ctx)  # nothing to do, must not fail
    assert not (tmp_path / "networks").exists() or not list((tmp_path / "networks").glob("*.json"))


def test_publish_rules(tmp_path: Path) -> None:
    ctx = net.NetContext(tmp_path, net.NetMode.USER)
    with pytest.raises(SpecError, match="needs a vif"):
        net.prepare_all([], "vm", ctx, UndoStack(), publish=["8013:13"])
    with pytest.raises(SpecError, match="twice"):
        net.prepare_all([net.validate({"publish": ["8013:13"]})], "vm", ctx, UndoStack(), publish=["8013:14"])
    tap_ctx = net.NetContext(tmp_path, net.NetMode.TAP)
    with pytest.raises(SpecError, match="user networking"):
        net.prepare(net.validate({"network": "n"}), "vm", 0, tap_ctx, UndoStack(), publish=["8013:13"])


def test_prepared_vif_round_trips_through_json() -> None:
    vif = net.PreparedVif(
        1,
        net.NetMode.USER,
        "52:54:00:01:02:03",
        "10.0.2.15",
        24,
        "10.0.2.2",
        1500,
        publish=(net.PortForward(8013, 13),),
    )
    assert net.PreparedVif.from_dict(vif.to_dict()) == vif
    assert net.PreparedVif.from_dict(_tap_vif().to_dict()) == _tap_vif()


def test_choose_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "has_cap_net_admin", lambda: False)
    assert net.choose_mode("auto") is net.NetMode.USER
    assert net.choose_mode("user") is net.NetMode.USER
    with pytest.raises(CapabilityError):
        net.choose_mode("tap")
    monkeypatch.setattr(net, "has_cap_net_admin", lambda: True)
    assert net.choose_mode("auto") is net.NetMode.TAP
    with pytest.raises(SpecError):
        net.choose_mode("bridge")
    monkeypatch.setenv("LIGHTVM_NET_MODE", "user")
    assert net.NetContext.open("/nonexistent").mode is net.NetMode.USER
    assert net.NetContext.open("/nonexistent", mode="tap").mode is net.NetMode.TAP


def test_check_ifname() -> None:
    for bad in ("", "a" * 16, "a/b", "a:b", "a b"):
        with pytest.raises(NetworkError):
            check_ifname(bad)


def test_network_cli_registers_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="lightvm")
    parser.add_argument("--state-dir")
    network.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["--state-dir", str(tmp_path), "network", "list"])
    assert args.func(args) == 0
    assert "no networks" in capsys.readouterr().out
    args = parser.parse_args(["--state-dir", str(tmp_path), "network", "list", "--json"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == "[]"
    args = parser.parse_args(["network", "create", "n", "--subnet", "10.1.0.0/24", "--nat", "--mtu", "1400"])
    assert (args.name, args.subnet, args.nat, args.mtu, args.func) == (
        "n",
        "10.1.0.0/24",
        True,
        1400,
        network.cmd_create,
    )
    args = parser.parse_args(["network", "delete", "n", "--force"])
    assert args.force and args.func is network.cmd_delete

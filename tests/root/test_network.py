"""Networks and vifs end to end in a private namespace: bridge, IPAM, taps, NAT, QEMU on the tap."""

from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import qemu_pids_mentioning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functional"))
from netclient import parse_daytime, read_daytime
from pyroute2 import IPRoute

from lightvm.devices import net
from lightvm.devices.devd import Devd, has_cap_net_admin
from lightvm.errors import AddressExhaustedError, ForeignLinkError, NotFoundError, SpecError, SubnetConflictError
from lightvm.qemubin import qemu_binary
from lightvm.undo import UndoStack
from lightvm.util import wait_until

pytestmark = pytest.mark.root

QEMU = qemu_binary("microvm")  # BASE runs -M microvm


@pytest.fixture
def ctx(nsname: str, state_dir: Path) -> Iterator[net.NetContext]:
    with net.NetContext.open(state_dir, mode="tap", netns=nsname) as c:
        yield c


def _taps(ctx: net.NetContext) -> list[str]:
    return sorted(info.name for info in ctx.devd().links() if info.kind == "tun")


def _create_vm(ctx: net.NetContext, name: str, entries: list[dict[str, object]]) -> list[net.PreparedVif]:
    specs = [net.validate(e, f"vifs[{i}]") for i, e in enumerate(entries)]
    with UndoStack() as undo:
        vifs = net.prepare_all(specs, name, ctx, undo)
        undo.commit()
    return vifs


def _destroy_vm(ctx: net.NetContext, name: str, vifs: list[net.PreparedVif]) -> None:
    for vif in vifs:
        net.release(net.PreparedVif.from_dict(vif.to_dict()), name, ctx)  # as if read back from disk


def test_network_with_nat_and_delete(ctx: net.NetContext) -> None:
    store, devd = ctx.store(), ctx.devd()
    record = store.create("web", "10.128.0.0/16", nat=True)
    info = devd.link("lv-web")
    assert info is not None and info.kind == "bridge" and info.up and info.alias == "lightvm:net=web"
    assert ("lv-web", ipaddress.IPv4Interface("10.128.0.1/16")) in devd.addresses()
    assert "ip saddr 10.128.0.0/16 ip daddr != 10.128.0.0/16 masquerade" in devd.run(["nft", "list", "ruleset"])
    with devd.inside():
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert record.capacity == 65533
    store.delete("web")
    assert devd.link("lv-web") is None
    assert "lightvm_web" not in devd.run(["nft", "list", "ruleset"])
    assert store.networks() == []


def test_subnet_on_a_host_interface_is_refused(ctx: net.NetContext, nsname: str) -> None:
    with IPRoute(netns=nsname) as ipr:
        ipr.link("add", ifname="uplink", kind="veth", peer="uplink-p")
        ipr.addr("add", index=ipr.link_lookup(ifname="uplink")[0], address="10.50.0.1", prefixlen=24)
    with pytest.raises(SubnetConflictError, match="uplink"):
        ctx.store().create("lan", "10.50.0.0/16")
    assert ctx.devd().link("lv-lan") is None and ctx.store().networks() == []


def test_foreign_bridge_name_is_refused_and_untouched(ctx: net.NetContext, nsname: str) -> None:
    with IPRoute(netns=nsname) as ipr:
        ipr.link("add", ifname="lv-foo", kind="bridge")
    with pytest.raises(ForeignLinkError):
        ctx.store().create("foo", "10.60.0.0/24")
    info = ctx.devd().link("lv-foo")
    assert (
        info is not None
        and info.alias == ""
        and ctx.devd().addresses() == [("lo", ipaddress.IPv4Interface("127.0.0.1/8"))]
    )
    assert ctx.store().networks() == []


def test_exhausted_subnet_creates_no_tap(ctx: net.NetContext) -> None:
    ctx.store().create("tiny", "10.70.0.0/29")
    vms = {f"vm{i}": _create_vm(ctx, f"vm{i}", [{"network": "tiny"}]) for i in range(5)}
    assert sorted(v[0].ip for v in vms.values()) == [f"10.70.0.{i}" for i in range(2, 7)]
    with pytest.raises(AddressExhaustedError, match="tiny"):
        _create_vm(ctx, "vm5", [{"network": "tiny"}])
    assert len(_taps(ctx)) == 5 and len(ctx.store().get("tiny").leases) == 5
    for name, vifs in vms.items():
        _destroy_vm(ctx, name, vifs)
    assert _taps(ctx) == [] and ctx.store().get("tiny").leases == []


def test_non_unicast_mac_is_refused_before_anything_exists(ctx: net.NetContext) -> None:
    ctx.store().create("n", "10.71.0.0/24")
    with pytest.raises(SpecError, match="unicast"):
        _create_vm(ctx, "vm", [{"network": "n", "mac": "03:00:00:00:00:01"}])
    assert _taps(ctx) == [] and ctx.store().get("n").leases == []


def test_two_vifs_on_two_networks(ctx: net.NetContext) -> None:
    store = ctx.store()
    store.create("outside", "10.80.0.0/24")
    store.create("inside", "10.81.0.0/24", mtu=1400)
    vifs = _create_vm(ctx, "firewall", [{"network": "outside"}, {"network": "inside", "ip": "10.81.0.254"}])
    assert [(v.ip, v.bridge, v.mtu) for v in vifs] == [
        ("10.80.0.2", "lv-outside", 1500),
        ("10.81.0.254", "lv-inside", 1400),
    ]
    devd = ctx.devd()
    assert devd.ports("lv-outside") == [vifs[0].tap] and devd.ports("lv-inside") == [vifs[1].tap]
    pages = [net.noxs_config(v) for v in vifs]
    assert [(p.ip, p.prefix, p.gateway, p.mtu, p.bridge) for p in pages] == [
        ("10.80.0.2", 24, "10.80.0.1", 1500, "lv-outside"),
        ("10.81.0.254", 24, "10.81.0.1", 1400, "lv-inside"),
    ]
    args = [a for v in vifs for a in net.qemu_args(v)]
    assert args.count("-netdev") == 2 and f"ifname={vifs[1].tap}" in args[5]
    _destroy_vm(ctx, "firewall", vifs)
    assert _taps(ctx) == [] and devd.ports("lv-outside") == devd.ports("lv-inside") == []


def test_a_failed_vm_setup_unwinds_every_vif(ctx: net.NetContext) -> None:
    ctx.store().create("n", "10.82.0.0/24")
    with pytest.raises(NotFoundError, match="nope"):
        _create_vm(ctx, "vm", [{"network": "n"}, {"network": "n"}, {"network": "nope"}])
    assert _taps(ctx) == [] and ctx.store().get("n").leases == []


def test_200_vms_then_destroy_all_leaves_nothing(ctx: net.NetContext) -> None:
    ctx.store().create("big", "10.90.0.0/16")
    vms = {f"daytime-{i}": _create_vm(ctx, f"daytime-{i}", [{"network": "big"}]) for i in range(200)}
    ips = {v[0].ip for v in vms.values()}
    macs = {v[0].mac for v in vms.values()}
    assert len(ips) == len(macs) == 200
    assert len(ctx.devd().ports("lv-big")) == 200
    for name, vifs in vms.items():
        _destroy_vm(ctx, name, vifs)
    assert _taps(ctx) == [] and ctx.devd().ports("lv-big") == [] and ctx.store().get("big").leases == []
    ctx.store().delete("big")
    assert {info.name for info in ctx.devd().links()} == {"lo"}


def test_restart_keeps_leases_and_rebuilds_a_lost_bridge(ctx: net.NetContext, nsname: str, state_dir: Path) -> None:
    ctx.store().create("n", "10.91.0.0/24")
    first = _create_vm(ctx, "vm1", [{"network": "n"}])
    ctx.devd().delete_bridge("lv-n", force=True)  # as after a host reboot
    ctx.devd().delete_tap(first[0].tap)
    with net.NetContext.open(state_dir, mode="tap", netns=nsname) as again:
        second = _create_vm(again, "vm2", [{"network": "n"}])
        assert second[0].ip != first[0].ip  # vm1's lease survived the "restart"
        assert again.devd().ports("lv-n") == [second[0].tap]
        assert again.devd().addresses()[-1] == ("lv-n", ipaddress.IPv4Interface("10.91.0.1/24"))
        assert net.forget_vm("vm1", again) == 1
        assert net.forget_vm("vm2", again) == 2  # its lease and its tap, found without saved state
        assert _taps(again) == [] and again.store().get("n").leases == []


def test_vif_on_a_users_own_bridge(ctx: net.NetContext, nsname: str) -> None:
    with IPRoute(netns=nsname) as ipr:
        ipr.link("add", ifname="br0", kind="bridge", mtu=1450)
    vifs = _create_vm(ctx, "vm", [{"bridge": "br0", "ip": "192.168.7.5/24", "gateway": "192.168.7.1"}])
    vif = vifs[0]
    assert (vif.ip, vif.prefix, vif.gateway, vif.mtu, vif.mac) == (
        "192.168.7.5",
        24,
        "192.168.7.1",
        1450,
        "52:54:c0:a8:07:05",
    )
    assert ctx.devd().ports("br0") == [vif.tap]
    _destroy_vm(ctx, "vm", vifs)
    assert ctx.devd().link("br0") is not None and ctx.devd().ports("br0") == []


# ---- QEMU on the result: the args work and the tap gets a reader ----


@pytest.fixture
def qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        pytest.skip(f"needs {QEMU} (missing)")
    return path


def _spawn(argv: list[str], ctx: net.NetContext, user: int | None = None) -> subprocess.Popen[bytes]:
    def drop() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)

    with ctx.devd().inside():  # QEMU must open the tap / bind its port inside the namespace
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=drop
        )


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out.decode(errors="replace")


BASE = ["-M", "microvm", "-accel", "tcg", "-S", "-nodefaults", "-no-user-config", "-display", "none", "-m", "16M"]


def test_qemu_attaches_to_the_tap(ctx: net.NetContext, qemu: str, nsname: str) -> None:
    ctx.store().create("n", "10.92.0.0/24")
    vifs = _create_vm(ctx, "vm", [{"network": "n"}])
    proc = _spawn([qemu, *BASE, *net.qemu_args(vifs[0])], ctx)
    try:
        with IPRoute(netns=nsname) as ipr:

            def carrier() -> bool:
                return bool(ipr.link("get", ifname=vifs[0].tap)[0].get("IFLA_CARRIER")) or proc.poll() is not None

            assert wait_until(carrier, timeout=10)
            assert proc.poll() is None, "QEMU exited"
    finally:
        log = _stop(proc)
    assert "error" not in log.lower(), log
    _destroy_vm(ctx, "vm", vifs)
    assert _taps(ctx) == []


def test_rootless_user_networking_publishes_the_port(tmp_path: Path, qemu: str, nsname: str) -> None:
    # As an unprivileged user (nobody) inside the test's namespace: QEMU's
    # hostfwd listens on the host port without any capability.
    with net.NetContext.open(tmp_path, mode="user", netns=nsname) as ctx:
        assert "user" in ctx.describe()
        vifs = net.prepare_all(
            [net.validate({"network": "default"})], "daytime", ctx, UndoStack(), ["127.0.0.1:18013:13"]
        )
        assert net.noxs_config(vifs[0]).ip == "10.0.2.15"
        proc = _spawn([qemu, *BASE, *net.qemu_args(vifs[0])], ctx, user=65534)
        try:

            def listening() -> bool:
                with ctx.devd().inside():
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.settimeout(1)
                    return sock.connect_ex(("127.0.0.1", 18013)) == 0 or proc.poll() is not None
                finally:
                    sock.close()

            assert wait_until(listening, timeout=10)
            assert proc.poll() is None, "QEMU exited"
            status = Path(f"/proc/{proc.pid}/status").read_text()
            assert "Uid:\t65534" in status
        finally:
            log = _stop(proc)
        assert "error" not in log.lower(), log


def test_vif_mtu_above_the_network_is_refused_and_unwound(ctx: net.NetContext) -> None:
    ctx.store().create("n", "10.93.0.0/24", mtu=1400)
    with pytest.raises(SpecError, match="exceeds"):
        _create_vm(ctx, "vm", [{"network": "n", "mtu": 9000}])
    assert _taps(ctx) == [] and ctx.store().get("n").leases == []
    vifs = _create_vm(ctx, "vm", [{"network": "n", "mtu": 1280}])
    link = ctx.devd().link(vifs[0].tap)
    assert link is not None and link.mtu == 1280 == net.noxs_config(vifs[0]).mtu
    _destroy_vm(ctx, "vm", vifs)


def test_parallel_creates_from_threads_never_collide(nsname: str, state_dir: Path, ctx: net.NetContext) -> None:
    # The toolstack creates VMs from a thread pool, each thread with its own context.
    from concurrent.futures import ThreadPoolExecutor

    ctx.store().create("par", "10.94.0.0/24")

    def create(worker: int) -> list[net.PreparedVif]:
        with net.NetContext.open(state_dir, mode="tap", netns=nsname) as own:
            return [_create_vm(own, f"w{worker}-{i}", [{"network": "par"}])[0] for i in range(10)]

    def destroy(vifs: list[net.PreparedVif]) -> None:
        with net.NetContext.open(state_dir, mode="tap", netns=nsname) as own:
            for vif in vifs:
                _destroy_vm(own, next(lease.vm for lease in leases if lease.ip == vif.ip), [vif])

    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(create, range(8)))
    ips = [vif.ip for vifs in made for vif in vifs]
    assert len(set(ips)) == 80 and len(set(vif.tap for vifs in made for vif in vifs)) == 80
    assert len(ctx.devd().ports("lv-par")) == 80
    leases = ctx.store().get("par").leases
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(destroy, made))
    assert _taps(ctx) == [] and ctx.store().get("par").leases == []


# ---- a real guest: daytime answers on the address its NoXS vif page gave it ----

DAYTIME = Path(__file__).resolve().parents[2] / "images" / "build" / "daytime.elf"


def _daytime_toml(tmp: Path, vif: str) -> Path:
    path = tmp / "daytime.toml"
    path.write_text(f'name = "daytime"\nkernel = "{DAYTIME}"\nmemory = 16\n[[vifs]]\n{vif}\n')
    return path


def _read_daytime(devd_inside: Any, host: str, port: int) -> str:
    """netclient's daytime client, run in the namespace ``devd_inside`` enters; "" if nothing answered."""
    with devd_inside():
        return read_daytime(host, port, timeout=10) or ""


def test_daytime_answers_on_its_leased_address(
    ctx: net.NetContext, nsname: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightvm.spec import load_spec
    from lightvm.toolstack import Toolstack

    monkeypatch.setenv("LIGHTVM_NETNS", nsname)
    monkeypatch.setenv("LIGHTVM_NET_MODE", "tap")
    ctx.store().create("dt", "10.96.0.0/24")
    ts = Toolstack(state_dir)
    (result,) = ts.create(load_spec(_daytime_toml(tmp_path, 'network = "dt"')))
    try:
        (lease,) = ctx.store().get("dt").leases
        text = _read_daytime(ctx.devd().inside, lease.ip, 13)
        assert abs(parse_daytime(text) - time.time()) < 60, text
    finally:
        ts.destroy(result.name)
    assert _taps(ctx) == [] and ctx.store().get("dt").leases == []


def _rootless_daytime(nsname: str, state: str, config: str, port: int, out: multiprocessing.Queue[str]) -> None:
    # In a forked child: enter the test's namespace while still root, then become nobody.
    from pyroute2.netns import setns

    from lightvm.spec import load_spec
    from lightvm.toolstack import Toolstack

    setns(nsname, flags=0)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        if has_cap_net_admin():
            raise RuntimeError("still holds CAP_NET_ADMIN after dropping to nobody")
        ts = Toolstack(Path(state))
        (result,) = ts.create(load_spec(config))
        try:
            out.put(read_daytime("127.0.0.1", port, timeout=10) or "")
        finally:
            ts.destroy(result.name)
    except Exception as exc:
        out.put(f"ERROR {type(exc).__name__}: {exc}")


def test_rootless_daytime_answers_on_the_published_port(nsname: str) -> None:
    # Imported as root, before the fork drops privileges: nobody cannot read this Python's
    # modules under /root (run alone, the child failed with "unknown encoding: idna").
    import encodings.idna  # noqa: F401

    import lightvm.toolstack  # noqa: F401

    base = Path(tempfile.mkdtemp(prefix="lvrootless-"))  # not under pytest's root-only tmp dir
    try:
        base.chmod(0o777)
        config = _daytime_toml(base, 'publish = ["127.0.0.1:18013:13"]')
        ctx = multiprocessing.get_context("fork")
        out: multiprocessing.Queue[str] = ctx.Queue()
        child = ctx.Process(target=_rootless_daytime, args=(nsname, str(base / "state"), str(config), 18013, out))
        child.start()
        try:
            text = out.get(timeout=60)
        finally:
            child.join(timeout=30)
            if child.exitcode is None:
                child.kill()
                child.join(timeout=10)
            # A child killed (or failing) before its destroy would orphan a QEMU running as nobody.
            orphans = _kill_qemus(base)
        assert orphans == [], f"QEMUs left by the rootless child, killed: {orphans}"
        assert abs(parse_daytime(text) - time.time()) < 60, text
    finally:
        shutil.rmtree(base, ignore_errors=True)


ROUTED_VMS = 200  # the networking issue's bar: 200 daytime VMs on one network


def _kill_qemus(state_dir: Path) -> list[int]:
    """Kill fallback: SIGKILL every QEMU whose command line names ``state_dir``; their PIDs."""
    pids = qemu_pids_mentioning(str(state_dir))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _destroy_all_or_kill(ts: Any, names: list[str], state_dir: Path) -> list[str]:
    """Destroy every VM, going on past a failure; then kill any QEMU left. What went wrong."""
    failed = []
    for name in names:
        try:
            ts.destroy(name)
        except Exception as exc:
            failed.append(f"destroy {name}: {exc!r}")
    killed = _kill_qemus(state_dir)
    if killed:
        failed.append(f"QEMUs left after destroy, killed: {killed}")
    return failed


def test_daytime_vms_reachable_from_a_separate_routed_namespace(
    ctx: net.NetContext, nsname: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 200 VMs on one network, each queried and pinged from another namespace routed
    # to the bridge through a veth (forwarding on where the bridge lives).
    from pyroute2 import netns

    from lightvm.spec import load_spec
    from lightvm.toolstack import Toolstack

    client = f"{nsname}-client"
    netns.create(client)
    try:
        with IPRoute(netns=nsname) as ipr:
            ipr.link("add", ifname="lvup", kind="veth", peer={"ifname": "lvcl", "net_ns_fd": client})
            up = ipr.link_lookup(ifname="lvup")[0]
            ipr.addr("add", index=up, address="192.168.250.1", prefixlen=30)
            ipr.link("set", index=up, state="up")
        with IPRoute(netns=client) as ipr:
            cl = ipr.link_lookup(ifname="lvcl")[0]
            ipr.addr("add", index=cl, address="192.168.250.2", prefixlen=30)
            ipr.link("set", index=cl, state="up")
            ipr.route("add", dst="10.97.0.0/24", gateway="192.168.250.1")
        ctx.store().create("routed", "10.97.0.0/24")
        ctx.devd().write_sysctl("ipv4/ip_forward", "1")
        monkeypatch.setenv("LIGHTVM_NETNS", nsname)
        monkeypatch.setenv("LIGHTVM_NET_MODE", "tap")
        ts = Toolstack(state_dir)
        results = ts.create(load_spec(_daytime_toml(tmp_path, 'network = "routed"')), count=ROUTED_VMS)
        try:
            leases = ctx.store().get("routed").leases
            assert len({lease.ip for lease in leases}) == ROUTED_VMS
            with Devd(netns=client) as there:
                texts = [_read_daytime(there.inside, lease.ip, 13) for lease in leases]
            assert all(t.endswith("-UTC\r\n") for t in texts), [t for t in texts if not t.endswith("-UTC\r\n")]
            unanswered = [
                lease.ip
                for lease in leases
                if subprocess.run(
                    ["ip", "netns", "exec", client, "ping", "-c", "1", "-W", "2", lease.ip],
                    capture_output=True, timeout=10, check=False,
                ).returncode != 0
            ]  # fmt: skip
            assert unanswered == []
        finally:
            failed = _destroy_all_or_kill(ts, [result.name for result in results], state_dir)
        assert failed == [], failed
        assert _taps(ctx) == [] and ctx.devd().ports("lv-routed") == [] and ctx.store().get("routed").leases == []
    finally:
        netns.remove(client)


def test_network_cli_create_list_delete(
    nsname: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    import json

    from lightvm.cli import network
    from lightvm.errors import NetworkError

    monkeypatch.setenv("LIGHTVM_NETNS", nsname)
    parser = argparse.ArgumentParser(prog="lightvm")
    parser.add_argument("--state-dir")
    network.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> str:
        args = parser.parse_args(["--state-dir", str(state_dir), *argv])
        assert args.func(args) == 0
        return capsys.readouterr().out

    assert "gateway 10.99.0.1" in run("network", "create", "cli", "--subnet", "10.99.0.0/24", "--nat", "--mtu", "1400")
    assert "0/253" in run("network", "list")
    (listed,) = json.loads(run("network", "list", "--json"))
    assert (listed["bridge"], listed["nat"], listed["mtu"]) == ("lv-cli", True, 1400)
    network.NetworkStore(state_dir).lease("cli", "vm", 0)
    with pytest.raises(NetworkError, match="--force"):
        run("network", "delete", "cli")
    assert "dropped 1 leases" in run("network", "delete", "cli", "--force")
    with Devd(netns=nsname) as devd:
        assert devd.link("lv-cli") is None
        assert "lightvm_cli" not in devd.run(["nft", "list", "ruleset"])


def test_network_cli_json(
    nsname: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`network create/delete --json` print the network as `network list --json` does (docs/cli.md)."""
    import json

    from lightvm.cli import main as cli

    monkeypatch.setenv("LIGHTVM_NETNS", nsname)

    def run(*argv: str) -> dict[str, object]:
        assert cli.main(["--state-dir", str(state_dir), *argv]) == 0
        out: dict[str, object] = json.loads(capsys.readouterr().out)
        return out

    made = run("--json", "network", "create", "clj", "--subnet", "10.98.0.0/24")
    assert (made["name"], made["bridge"], made["gateway"], made["capacity"]) == ("clj", "lv-clj", "10.98.0.1", 253)
    assert cli.main(["--state-dir", str(state_dir), "network", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [made]  # the same object as network list's
    deleted = run("network", "delete", "clj", "--json")
    assert {**made, "action": "deleted"} == deleted
    assert cli.main(["--state-dir", str(state_dir), "network", "delete", "clj", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["kind"] == "NotFoundError"

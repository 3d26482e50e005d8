"""Pooled NICs: lightvmd's shells are prepared with a tap and a virtio-net device, and a
create of a VM with a vif on a network takes the pool path (lightvm/devices/shellnet.py).
A vif that names only its network has its address leased, and its tap joined, when the
shell is prepared (under the shell's id, the VM's after the reply); one that fixes more
(here an MTU) at execute: the tests that differ run both.

Everything networked lives in a namespace of the test's (LIGHTVM_NETNS): the network's
bridge, the shells' taps, the VMs' taps; the daytime client runs there too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Lightvmd, wait_pool
from guestlib import vif0_counter
from harness import Namespace
from netclient import parse_daytime
from nettools import run_raw

from lightvm.state import noxs_file
from lightvm.util import proc_alive, wait_until

pytestmark = [pytest.mark.functional, pytest.mark.root]

SUBNET = "10.213.31.0/24"
# The vif's extra keys: none (the shell leases at prepare), an MTU (the execute leases).
LEASED_AT = {"prepare": "", "execute": "mtu = 1400\n"}


@pytest.fixture
def ns(need_net_admin: None) -> Iterator[str]:
    """The namespace; requested before ``lightvmd`` so that it is removed after the daemon
    and its VMs are gone."""
    with Namespace("lvpn-") as made:
        yield made.name


@pytest.fixture(params=sorted(LEASED_AT))
def leased_at(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def netd(ns: str, lightvmd: Lightvmd, images: Path, tmp_path: Path, leased_at: str) -> Iterator[tuple[Lightvmd, Path]]:
    """lightvmd in ``ns`` with a network ``pn`` and a pool of daytime-with-a-NIC shells."""
    lightvmd.env["LIGHTVM_NETNS"] = ns
    lightvmd.env["LIGHTVM_NET_MODE"] = "tap"
    config = tmp_path / "daytime-net.toml"
    config.write_text(
        f'name = "day"\nkernel = "{images / "daytime.elf"}"\nfirmware = "{images / "lvfw.bin"}"\n'
        f'memory = "4M"\n[[vifs]]\nnetwork = "pn"\n{LEASED_AT[leased_at]}'
    )
    r = lightvmd.cli("network", "create", "pn", "--subnet", SUBNET)
    assert r.returncode == 0, r.stderr
    try:
        yield lightvmd, config
    finally:
        lightvmd.cli("destroy", "--all")
        if lightvmd.proc is not None:
            lightvmd.stop()
        lightvmd.cli("network", "delete", "pn", "--force")


def _links(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True, timeout=10, check=True).stdout
    return [line.split()[0].split("@")[0] for line in out.splitlines()]


def _ip(vm: dict[str, Any]) -> str:
    # "networking: tap; vif0: 10.213.31.2/24 gw ... (tap lvXXXXXX-0 on lv-pn...)"
    return str(vm["network"]).split("vif0: ", 1)[1].split("/", 1)[0]


def _leases(d: Lightvmd) -> dict[str, str]:
    """VM (or shell id) -> address leased on network pn."""
    networks = json.loads(d.cli("network", "list", "--json").stdout)
    (pn,) = [n for n in networks if n["name"] == "pn"]
    return {lease["vm"]: lease["ip"] for lease in pn["leases"]}


def _vm_leases(d: Lightvmd) -> dict[str, str]:
    """The leases of VMs, not of the pool's shells (those are under the shells' ids)."""
    leases = _leases(d)  # first: a shell that leased by then has its record in the pool by then
    shells = {r["id"] for r in d.shell_records()}
    return {vm: ip for vm, ip in leases.items() if vm not in shells}


def _settled_leases(d: Lightvmd, names: set[str]) -> dict[str, str]:
    """The VMs' leases once each of ``names`` holds its own: a pooled create's lease
    becomes its VM's just after the reply."""
    assert wait_until(lambda: names <= set(_vm_leases(d)), timeout=10.0, interval=0.02), _leases(d)
    return _vm_leases(d)


def _nc_daytime(ns: str, ip: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "nc", "-w", "5", ip, "13"]


def _daytime(ns: str, ip: str) -> str:
    return run_raw(_nc_daytime(ns, ip), timeout=20).decode("ascii", "replace")


def _vif_counters(vm_id: str) -> dict[str, int]:
    """Vif 0's counters as the guest keeps them in its NoXS file."""
    try:
        raw = noxs_file(vm_id).read_bytes()
    except OSError as exc:
        return {"unreadable": exc.errno or 0}
    return {name: vif0_counter(raw, name) for name in ("rx_packets", "tx_packets")}


def _ip_out(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10).stdout


def _served(d: Lightvmd, ns: str, vm: dict[str, Any]) -> None:
    """A real client in ``ns`` gets the daytime line from ``vm``; if not, the assertion says
    what the guest and the network saw (one CI run got an empty answer once: nc connected,
    then 5 s with no byte)."""
    ip = _ip(vm)
    before = _vif_counters(vm["id"])
    argv = _nc_daytime(ns, ip)
    start = time.monotonic()
    first = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    text = first.stdout.decode("ascii", "replace")
    if first.returncode == 0 and text.endswith("\r\n"):
        assert parse_daytime(text), (ip, text)
        return
    elapsed = time.monotonic() - start
    retry = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    record = d.state_dir / "vms" / vm["name"] / "console.log"
    console = record.read_text(errors="replace")[-1500:] if record.exists() else "(no console log)"
    seen = {
        "answer": text,
        "exit": first.returncode,
        "stderr": first.stderr.decode("ascii", "replace"),
        "after_s": round(elapsed, 2),
        "vif_before": before,
        "vif_after": _vif_counters(vm["id"]),
        "retry": [retry.returncode, retry.stdout.decode("ascii", "replace")],
        "neigh": _ip_out(ns, "neigh"),
        "links": _ip_out(ns, "-br", "link"),
        "console": console,
    }
    raise AssertionError(f"{vm['name']} at {ip} did not answer daytime: {json.dumps(seen, indent=1)}")


def test_pooled_nic_create_serves_and_never_repeats_an_address(
    ns: str, netd: tuple[Lightvmd, Path], leased_at: str
) -> None:
    d, config = netd
    d.start(pool=config, size=2)
    stats = wait_pool(d, 2)
    flavour = stats["flavours"][0]["flavour"]
    assert flavour.endswith("/1tap@pn" if leased_at == "prepare" else "/1tap"), stats
    shells = d.shell_records()
    shell_taps = {v["tap"] for r in shells for v in r["devices"]["vifs"]}
    assert len(shell_taps) == 2 and shell_taps <= set(_links(ns)), (shell_taps, _links(ns))
    # Leased at prepare: each shell holds an address under its id, its tap on the bridge.
    assert set(_leases(d)) == ({r["id"] for r in shells} if leased_at == "prepare" else set()), _leases(d)

    a = d.create("a", config)
    assert a["path"] == "pool", a
    b = d.create("b", config)
    assert b["path"] == "pool", b
    cold = d.create("c", config, pool=False)
    assert cold["path"] == "cold" and cold["path_reason"], cold
    ips = [_ip(vm) for vm in (a, b, cold)]
    assert len(set(ips)) == 3 and all(ip.startswith("10.213.31.") for ip in ips), ips

    # A real client on the network gets the daytime answer from both pooled VMs.
    for vm in (a, b):
        _served(d, ns, vm)
    # The pooled VMs' taps are the shells' taps, now on the network's bridge.
    records = {n: json.loads((d.state_dir / "vms" / n / "vm.json").read_text()) for n in ("a", "b")}
    taps = {n: r["devices"]["vifs"][0]["tap"] for n, r in records.items()}
    assert set(taps.values()) == shell_taps
    assert all("vifs_pending" not in r["devices"] for r in records.values())
    # QEMU got its tap as an open fd (lightvm/devices/tapfd.py): no ifname= on the command
    # line it runs with, /dev/net/tun among its fds; the record keeps ifname= (restores).
    for vm in (a, cold):
        cmdline = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().split(b"\0")
        netdev = next(arg.decode() for arg in cmdline if arg.startswith(b"tap,"))
        assert "fd=" in netdev and "ifname=" not in netdev, netdev
        fds = [os.readlink(f"/proc/{vm['pid']}/fd/{fd}") for fd in os.listdir(f"/proc/{vm['pid']}/fd")]
        assert "/dev/net/tun" in fds, fds
    assert any(arg.startswith("tap,") and f"ifname={taps['a']}" in arg for arg in records["a"]["argv"])

    assert _settled_leases(d, {"a", "b", "c"}) == {"a": ips[0], "b": ips[1], "c": ips[2]}
    assert len(set(_leases(d).values())) == len(_leases(d))  # shells' and VMs' addresses all differ

    # Destroy releases the address and the tap; the address goes to the next create.
    r = d.cli("destroy", "a")
    assert r.returncode == 0, r.stderr
    assert taps["a"] not in _links(ns)
    assert _vm_leases(d) == {"b": ips[1], "c": ips[2]}

    # The CLI says which path it took, and the status the last create's.
    wait_pool(d, 2)
    r = d.cli("create", str(config), "--accel", "tcg", "--name", "e")
    assert r.returncode == 0, r.stderr
    assert "path: pool" in r.stdout, r.stdout
    assert parse_daytime(_daytime(ns, r.stdout.split("vif0: ", 1)[1].split("/", 1)[0]))
    status = d.cli("daemon", "status")
    assert "last create: path: pool" in status.stdout, status.stdout
    leases = _settled_leases(d, {"b", "c", "e"})
    assert set(leases) == {"b", "c", "e"} and len(set(leases.values())) == 3, leases

    # A daemon stopped the usual way gives its shells' addresses back; the VMs keep theirs.
    d.stop()
    assert _leases(d) == leases, _leases(d)


def test_kill9_with_nic_shells_leaves_nothing(ns: str, netd: tuple[Lightvmd, Path]) -> None:
    d, config = netd
    d.start(pool=config, size=2)
    wait_pool(d, 2)
    shells = d.shell_records()
    taps = {v["tap"] for r in shells for v in r["devices"]["vifs"]}
    pids = [(r["pid"], r["pid_start"]) for r in shells]
    assert len(taps) == 2 and taps <= set(_links(ns))
    d.kill9()
    assert taps <= set(_links(ns)), "the taps went with the daemon already?"

    d.start(pool=None)
    assert not taps & set(_links(ns)), f"taps of the killed daemon's shells left: {taps & set(_links(ns))}"
    assert not _leases(d), f"leases of the killed daemon's shells left: {_leases(d)}"
    assert wait_until(lambda: not any(proc_alive(p, s) for p, s in pids), timeout=10.0)
    assert not any(noxs_file(r["id"]).exists() for r in shells)
    assert not (d.state_dir / "pool").exists() or not any((d.state_dir / "pool").iterdir())


def test_a_pooled_tap_vm_survives_save_and_restore(ns: str, netd: tuple[Lightvmd, Path], tmp_path: Path) -> None:
    d, config = netd
    d.start(pool=config, size=1)
    wait_pool(d, 1)
    vm = d.create("kept", config)
    assert vm["path"] == "pool", vm
    ip = _ip(vm)
    ckpt = tmp_path / "kept.ckpt"
    r = d.cli("save", "kept", str(ckpt))
    assert r.returncode == 0, r.stderr
    r = d.cli("restore", str(ckpt))
    assert r.returncode == 0, r.stderr
    assert _settled_leases(d, {"kept"}) == {"kept": ip}  # the same address, pinned by the restore
    parse_daytime(_daytime(ns, ip))


def test_kill9_mid_pooled_create_then_destroy_releases_lease_and_tap(
    ns: str, netd: tuple[Lightvmd, Path], images: Path, tmp_path: Path, leased_at: str
) -> None:
    # stall never reports READY: the pooled create is in flight (lease taken, tap on the
    # bridge, folder vms/NAME) when the daemon dies. Leased at prepare, the lease is still
    # the shell's (its id is the VM's record id): the execute hands it over after READY.
    d, _ = netd
    config = tmp_path / "stall-net.toml"
    config.write_text(
        f'name = "stall"\nkernel = "{images / "stall.elf"}"\nmemory = "4M"\n'
        f'[[vifs]]\nnetwork = "pn"\n{LEASED_AT[leased_at]}'
    )
    d.start(pool=config, size=1)
    wait_pool(d, 1)
    (shell,) = d.shell_records()
    tap = shell["devices"]["vifs"][0]["tap"]
    argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(d.state_dir), "create", str(config)]
    client = subprocess.Popen(
        [*argv, "--accel", "tcg", "--timeout", "120"], env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        vmdir = d.state_dir / "vms" / "stall"
        holder = shell["id"] if leased_at == "prepare" else "stall"
        assert wait_until(lambda: vmdir.is_dir() and holder in _leases(d), timeout=60.0, interval=0.02)
        d.kill9()
        client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
    assert tap in _links(ns)

    d.start(pool=None)
    (listed,) = d.call("list")
    assert listed["name"] == "stall" and listed["status"] == "incomplete", listed
    r = d.cli("destroy", "stall")
    assert r.returncode == 0, r.stderr
    assert not _leases(d), _leases(d)  # neither under the name nor under the shell's id
    assert tap not in _links(ns)
    assert not vmdir.exists() and not noxs_file(shell["id"]).exists()

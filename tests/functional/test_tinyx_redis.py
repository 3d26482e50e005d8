"""A Tinyx redis-server VM end to end: `lightvm image build redis-server`, `lightvm create`,
and the host's real `redis-cli` doing PING, SET and GET against it.

Over a lightvm network in a test namespace (root), and over user networking with
``--publish`` (rootless). The image is built once per session into a temporary image folder
(the kernel, base tree and package caches under tinyx/build make that quick after the first
build on a machine; scripts/test.sh builds the kernel before the tests).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Lightvmd, wait_pool
from harness import Namespace
from netclient import free_port
from tinyxlib import build_image

from lightvm.util import wait_until

pytestmark = [pytest.mark.functional, pytest.mark.timeout(1500)]

APP = "redis-server"
REDIS_PORT = 6379


@pytest.fixture(scope="session")
def redis_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The VM config `lightvm image build` wrote next to the kernel and initramfs."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is missing: scripts/bootstrap.sh installs redis-tools")
    return build_image(APP, tmp_path_factory.mktemp("tinyx") / APP)


def redis_cli(args: Sequence[str], netns: str | None = None, timeout: float = 10.0) -> str:
    """Run the host's redis-cli (in ``netns`` if given); its stdout, stripped."""
    argv = ["redis-cli", *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return proc.stdout.strip() if proc.returncode == 0 else f"<rc {proc.returncode}: {proc.stderr.strip()}>"


def ping_until_pong(target: Sequence[str], netns: str | None = None) -> str:
    reply = wait_until(
        lambda: (r := redis_cli([*target, "PING"], netns, timeout=5)) == "PONG" and r, timeout=30, interval=0.1
    )
    return str(reply)


def check_set_get(target: Sequence[str], netns: str | None = None) -> None:
    assert ping_until_pong(target, netns) == "PONG"
    value = f"lightvm-{time.time_ns()}"
    assert redis_cli([*target, "SET", "greeting", value], netns) == "OK"
    assert redis_cli([*target, "GET", "greeting"], netns) == value


def test_redis_over_user_networking_with_publish(lightvm: Any, redis_config: Path) -> None:
    """The image booted (--no-snapshot): Linux, lvinit, redis from scratch."""
    port = free_port()
    (vm,) = lightvm.create(redis_config, "--no-snapshot", "--publish", f"127.0.0.1:{port}:{REDIS_PORT}")
    assert vm["app"] == APP and vm["boot_ms"]["ready"] > 0 and vm["boot_ms"]["guest_entry"] > 0
    assert vm["path"] == "cold" and vm["path_reason"] == "snapshot not used: --no-snapshot", vm
    assert "networking: user" in vm["network"]
    check_set_get(["-h", "127.0.0.1", "-p", str(port)])
    lightvm.ok("shutdown", vm["name"])  # the init stops redis and powers off cleanly
    assert lightvm.list() == [] and lightvm.leftovers() == []


def test_redis_from_the_images_snapshot(lightvm: Any, redis_config: Path) -> None:
    """`lightvm image build` booted the image once and kept it (DIR/snapshot, named by the
    config): a create starts from it, redis already serving. Two VMs from it are two VMs:
    their own port, hostname and data (the snapshot's MAC: user networking), and each shuts down cleanly."""
    assert 'snapshot = "snapshot"' in redis_config.read_text()
    assert (redis_config.parent / "snapshot" / "state.lvm").is_file()
    ports = [free_port(), free_port()]
    vms = [
        lightvm.create(redis_config, "--name", name, "--publish", f"127.0.0.1:{port}:{REDIS_PORT}")[0]
        for name, port in zip(("snap1", "snap2"), ports, strict=True)
    ]
    for vm in vms:
        assert vm["path"] == "snapshot" and vm["app"] == APP and vm["boot_ms"]["ready"] > 0, vm
        assert vm["path_reason"] == str(redis_config.parent / "snapshot")
    # user networking: the snapshot's MAC, on a network of each VM's own (docs/tinyx.md, "Snapshots")
    assert vms[0]["network"].split(" mac ", 1)[1][:17] == vms[1]["network"].split(" mac ", 1)[1][:17]
    check_set_get(["-h", "127.0.0.1", "-p", str(ports[0])])
    assert ping_until_pong(["-h", "127.0.0.1", "-p", str(ports[1])]) == "PONG"
    assert redis_cli(["-h", "127.0.0.1", "-p", str(ports[1]), "GET", "greeting"]) == ""  # the first's key
    consoles = lightvm.consoles()
    assert "page rewrite" not in consoles and "sethostname" not in consoles, consoles  # lvinit took the identity
    for vm in vms:
        # Its console starts with whom it became, and the host's console bell woke the init
        # (not its 15 ms poll of the page: tinyx/init/main.c, wait_host). lvinit says it at
        # its first quiet moment after the rewrite: awaited, not expected at once.
        said = re.compile(rf"taken \(woken by the console bell\): hostname {vm['name']}, app {APP}, in ")
        seen = wait_until(lambda name=vm["name"], said=said: said.search(lightvm.ok("console", name).out), 5.0, 0.05)
        assert seen, lightvm.ok("console", vm["name"]).out
    for vm in vms:
        lightvm.ok("shutdown", vm["name"])  # the init stops redis and powers off, as after a boot
    assert lightvm.list() == [] and lightvm.leftovers() == []


def test_a_snapshot_that_does_not_fit_boots_and_says_why(lightvm: Any, redis_config: Path, tmp_path: Path) -> None:
    """A moved image keeps its snapshot; another memory size, a flipped byte in the RAM file
    or a truncated device state makes the create boot, naming the reason; nothing is left."""
    image = tmp_path / "moved"
    shutil.copytree(redis_config.parent, image)  # the copy's files are the ones checked
    config = image / redis_config.name
    (vm,) = lightvm.create(config, "--name", "moved")
    assert vm["path"] == "snapshot", vm
    lightvm.ok("destroy", "moved")

    (vm,) = lightvm.create(config, "--name", "bigger", "memory=256M")
    assert vm["path"] == "cold" and "memory is 256 here, 128 in the snapshot" in vm["path_reason"], vm
    lightvm.ok("destroy", "bigger")

    ram = image / "snapshot" / "ram"
    ram.chmod(0o600)
    with ram.open("r+b") as f:  # a byte the guest wrote: the kernel's first page of text
        f.seek(0x1000000)
        byte = f.read(1)
        f.seek(0x1000000)
        f.write(bytes([byte[0] ^ 0x40]))
    (vm,) = lightvm.create(config, "--name", "flipped")
    assert vm["path"] == "cold" and "corrupted template RAM" in vm["path_reason"], vm
    lightvm.ok("destroy", "flipped")

    state = image / "snapshot" / "state.lvm"
    state.chmod(0o644)
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (vm,) = lightvm.create(config, "--name", "truncated")
    assert vm["path"] == "cold" and "state.lvm" in vm["path_reason"], vm
    lightvm.ok("destroy", "truncated")
    assert lightvm.list() == [] and lightvm.leftovers() == []


@pytest.mark.root
def test_redis_on_a_lightvm_network(lightvm: Any, netns: str, redis_config: Path, tmp_path: Path) -> None:
    """Booted (--no-snapshot) with a fixed address; then two VMs from the image's snapshot,
    each with its own tap, leased address and MAC, which lvinit takes from the rewritten
    page: the host's redis-cli talks to each on its own address."""
    lightvm.ok("network", "create", "rdnet", "--subnet", "10.214.9.0/24")
    config = on_network(redis_config, tmp_path, 'network = "rdnet"\nip = "10.214.9.20"\n')
    (vm,) = lightvm.create(config, "--no-snapshot")
    assert vm["app"] == APP and "10.214.9.20" in vm["network"] and vm["path"] == "cold"
    check_set_get(["-h", "10.214.9.20"], netns)

    leased = on_network(redis_config, tmp_path / "leased", 'network = "rdnet"\n')
    ips, macs = [], []
    for name in ("snap-a", "snap-b"):
        (vm,) = lightvm.create(leased, "--name", name)
        assert vm["path"] == "snapshot" and vm["app"] == APP, vm
        ips.append(vm["network"].split("vif0: ", 1)[1].split("/", 1)[0])
        macs.append(vm["network"].split(" mac ", 1)[1][:17])
    assert len(set(ips)) == 2 and "10.214.9.20" not in ips and len(set(macs)) == 2, (ips, macs)
    for ip in ips:
        check_set_get(["-h", ip], netns)
    neigh = subprocess.run(["ip", "netns", "exec", netns, "ip", "neigh"], capture_output=True, text=True, timeout=10)
    for ip, mac in zip(ips, macs, strict=True):  # each answered with the MAC its page gave it
        assert f"{ip} " in neigh.stdout and mac in neigh.stdout.split(f"{ip} ", 1)[1].splitlines()[0], neigh.stdout

    # Saved and restored, a VM from the snapshot keeps its address and its data: the restore
    # carries the snapshot's user netdevs over from the file (their state is in the stream).
    kept = redis_cli(["-h", ips[0], "GET", "greeting"], netns)
    lightvm.ok("save", "snap-a", str(tmp_path / "snap-a.lvm"))
    lightvm.ok("restore", str(tmp_path / "snap-a.lvm"))
    assert ping_until_pong(["-h", ips[0]], netns) == "PONG"
    assert redis_cli(["-h", ips[0], "GET", "greeting"], netns) == kept


def on_network(redis_config: Path, folder: Path, vif: str) -> Path:
    """A copy of the generated config (absolute file paths) whose one NIC says ``vif``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{APP}.toml"
    text = redis_config.read_text()
    # The copy lives elsewhere: absolute paths.
    for name in ("vmlinux", "initramfs.cpio", "initramfs.cpio.lz4", "snapshot"):
        text = text.replace(f'"{name}"', f'"{redis_config.parent / name}"')
    assert text.count("\n[[vifs]]\n") == 1  # the generated config's one NIC, user networking
    config.write_text(text.replace("\n[[vifs]]\n", "\n[[vifs]]\n" + vif))
    return config


@pytest.fixture
def pool_ns(need_net_admin: None) -> Iterator[str]:
    """A namespace for lightvmd's bridge and taps; requested before ``lightvmd`` so that it
    is removed after the daemon and its VMs are gone."""
    with Namespace("lvtp-") as made:
        yield made.name


@pytest.mark.root
def test_redis_from_lightvmds_pool_on_a_lightvm_network(
    pool_ns: str, lightvmd: Lightvmd, redis_config: Path, tmp_path: Path
) -> None:
    """Pooled Tinyx shells with a tap NIC: the guest brought its NIC up at the wait point
    (lvinit's prewarm); a create hands the tap to the network's bridge, leases an address,
    and the guest takes the VM's MAC and address: the host's redis-cli (in the namespace)
    then talks to redis on the VM's own address, twice (a refilled shell the second time)."""
    lightvmd.env.update(LIGHTVM_NETNS=pool_ns, LIGHTVM_NET_MODE="tap")
    r = lightvmd.cli("network", "create", "rpn", "--subnet", "10.214.11.0/24")
    assert r.returncode == 0, r.stderr
    config = on_network(redis_config, tmp_path, 'network = "rpn"\n')
    try:
        lightvmd.start(pool=config, size=1)
        wait_pool(lightvmd, 1, timeout=120)
        ips = []
        for name in ("b1", "b2"):
            wait_pool(lightvmd, 1, timeout=120)  # a prepared shell (the second: the refill)
            vm = lightvmd.create(name, config)
            assert vm["path"] == "pool" and vm["app"] == APP, vm
            ips.append(str(vm["network"]).split("vif0: ", 1)[1].split("/", 1)[0])
            check_set_get(["-h", ips[-1]], pool_ns)
        assert ips[0] != ips[1] and all(ip.startswith("10.214.11.") for ip in ips), ips
    finally:
        lightvmd.cli("destroy", "--all")
        if lightvmd.proc is not None:
            lightvmd.stop()
        lightvmd.cli("network", "delete", "rpn", "--force")


def test_redis_from_lightvmds_pool(lightvmd: Lightvmd, redis_config: Path) -> None:
    """Tinyx shells in lightvmd's pool: QEMU spawned with the image, Linux booted to lvinit's
    wait point, asleep on the console bell; a create writes the page and rings, and redis
    serves on the published port. The page's vif names the shell's own NIC (dev_mac): lvinit
    finds it by that and gives it the VM's MAC."""
    lightvmd.env["LIGHTVM_NET_MODE"] = "user"
    lightvmd.start(pool=redis_config, size=1)
    stats = wait_pool(lightvmd, 1, timeout=120)
    assert "+redis-server/128M/" in stats["flavours"][0]["flavour"], stats
    ports = [free_port(), free_port()]
    first = lightvmd.create("r1", redis_config, publish=[f"127.0.0.1:{ports[0]}:{REDIS_PORT}"])
    assert first["path"] == "pool" and first["app"] == APP, first
    check_set_get(["-h", "127.0.0.1", "-p", str(ports[0])])
    wait_pool(lightvmd, 1, timeout=120)  # refilled: a second VM from another shell
    second = lightvmd.create("r2", redis_config, publish=[f"127.0.0.1:{ports[1]}:{REDIS_PORT}"])
    assert second["path"] == "pool", second
    check_set_get(["-h", "127.0.0.1", "-p", str(ports[1])])
    assert first["network"].split(" mac ", 1)[1][:17] != second["network"].split(" mac ", 1)[1][:17]
    print(f"pooled redis READY: {first['boot_ms']['ready']:.1f} ms, {second['boot_ms']['ready']:.1f} ms")


def test_lightvmd_starts_an_unpooled_create_from_the_snapshot(lightvmd: Lightvmd, redis_config: Path) -> None:
    """No shell of the image in lightvmd's pool: its create starts from the image's
    snapshot (path: snapshot), redis already serving; the VM is the daemon's like any.
    Asked not to (`create --no-snapshot`), it boots and says why."""
    lightvmd.start(pool=None)
    port = free_port()
    try:
        vm = lightvmd.create("unpooled", redis_config, publish=[f"127.0.0.1:{port}:{REDIS_PORT}"])
        assert vm["path"] == "snapshot" and vm["app"] == APP, vm
        check_set_get(["-h", "127.0.0.1", "-p", str(port)])
        assert [v["name"] for v in lightvmd.call("list")] == ["unpooled"]
        booted = lightvmd.create("booted", redis_config, snapshot=False)  # what `create --no-snapshot` sends
        assert booted["path"] == "cold" and "snapshot not used: --no-snapshot" in booted["path_reason"], booted
    finally:
        lightvmd.cli("destroy", "--all")
        if lightvmd.proc is not None:
            lightvmd.stop()

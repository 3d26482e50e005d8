"""The kind of a checkpoint (what a prepared -incoming shell must match): MACs and host
forwards are left out, taps and disks are not poolable."""

from __future__ import annotations

from typing import Any

from lightvm.daemon.restore_pool import IncomingFlavour, normalise

ARGS = [
    "-netdev",
    "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:8013-:13,hostfwd=udp::53-:53",
    "-device",
    "virtio-net-device,netdev=n0,mac=52:54:00:04:e6:22",
]


def meta(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "spec": {"kernel": "/k.elf", "memory": 4, "vcpus": 1, "cmdline": "", "disks": [], "firmware": "/fw.bin"},
        "qemu_args": list(ARGS),
        "vifs": [{"mode": "user", "mac": "52:54:00:04:e6:22"}],
        "accel": "tcg",
        "noxs_size": 16384,
    }
    base.update(changes)
    return base


def test_normalise_drops_mac_and_forwards_and_returns_the_forwards() -> None:
    args, forwards = normalise(ARGS)
    assert args == ("-netdev", "user,id=n0,net=10.0.2.0/24", "-device", "virtio-net-device,netdev=n0")
    assert forwards == [("n0", "tcp:127.0.0.1:8013-:13"), ("n0", "udp::53-:53")]


def test_two_vms_of_one_kind_share_a_flavour() -> None:
    other = [ARGS[0], "user,id=n0,net=10.0.2.0/24", ARGS[2], "virtio-net-device,netdev=n0,mac=52:54:00:aa:bb:cc"]
    a, b = IncomingFlavour.of(meta()), IncomingFlavour.of(meta(qemu_args=other))
    assert a is not None and a == b and hash(a) == hash(b)
    assert a.label() == "k.elf/4M/1cpu/tcg/1usernet"
    assert IncomingFlavour.of(meta(accel="kvm")) != a
    assert IncomingFlavour.of(meta(noxs_size=8192)) != a


def test_taps_disks_and_malformed_headers_are_not_poolable() -> None:
    assert IncomingFlavour.of(meta(vifs=[{"mode": "tap"}])) is None
    spec = dict(meta()["spec"], disks=[{"path": "/d.img"}])
    assert IncomingFlavour.of(meta(spec=spec)) is None
    linux = dict(meta()["spec"], initrd="/images/redis/initramfs.cpio")  # its machine has rtc=on
    assert IncomingFlavour.of(meta(spec=linux)) is None
    assert IncomingFlavour.of(meta(qemu_args=None)) is None
    assert IncomingFlavour.of(meta(spec={"memory": 4})) is None  # no kernel
    assert IncomingFlavour.of(meta(noxs_size="big")) is None

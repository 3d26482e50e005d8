"""Taps as fds on QEMU's command line (lightvm/devices/tapfd.py), with the tap opener faked."""

from __future__ import annotations

import os

import pytest

from lightvm.devices import tapfd


def test_tap_netdevs_become_fds_and_nothing_else_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    def fake_open(name: str) -> int:
        opened.append(name)
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    monkeypatch.setattr(tapfd, "open_tap", fake_open)
    argv = [
        "qemu", "-netdev", "tap,id=n0,ifname=lvab-0,script=no,downscript=no", "-device", "virtio-net-device,netdev=n0",
        "-netdev", "user,id=n1,net=10.0.2.0/24", "-append", "tap,ifname=not-a-netdev",
    ]  # fmt: skip
    out, fds = tapfd.as_fds(argv)
    try:
        assert opened == ["lvab-0"] and len(fds) == 1
        assert out[2] == f"tap,id=n0,fd={fds[0]}"
        assert out[:2] + out[3:] == argv[:2] + argv[3:]  # the rest as it was, -append included
    finally:
        for fd in fds:
            os.close(fd)


def test_a_tap_that_cannot_be_opened_closes_what_was_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []

    def fake_open(name: str) -> int:
        if name == "gone":
            raise FileNotFoundError(19, "No such device")
        opened.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        return opened[-1]

    monkeypatch.setattr(tapfd, "open_tap", fake_open)
    with pytest.raises(OSError, match="No such device"):
        tapfd.as_fds(["-netdev", "tap,id=a,ifname=ok", "-netdev", "tap,id=b,ifname=gone"])
    with pytest.raises(OSError):
        os.fstat(opened[0])  # closed again


def test_a_busy_tap_is_retried_then_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def busy_twice(fd: int, request: int, arg: bytes) -> bytes:
        calls.append(fd)
        if len(calls) <= 2:
            raise OSError(16, "Device or resource busy")
        return arg

    monkeypatch.setattr(tapfd, "TUN_DEVICE", os.devnull)
    monkeypatch.setattr(tapfd.fcntl, "ioctl", busy_twice)
    fd = tapfd.open_tap("lvbusy")
    os.close(fd)
    assert len(calls) == 3
    monkeypatch.setattr(tapfd.fcntl, "ioctl", lambda fd, request, arg: (_ for _ in ()).throw(OSError(16, "busy")))
    with pytest.raises(OSError, match="busy"):
        tapfd.open_tap("lvbusy", busy_for=0.02)

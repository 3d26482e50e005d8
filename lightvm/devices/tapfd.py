"""Taps handed to QEMU as open file descriptors, so that QEMU needs no privilege for them.

The toolstack makes every tap itself (lightvm/devices/devd.py), persistent, before QEMU
starts. Given ``-netdev tap,ifname=NAME`` QEMU would open /dev/net/tun and attach to the
tap itself, which needs CAP_NET_ADMIN (or the tap's owner uid) in QEMU. Instead the
launcher opens it (:func:`open_tap`: /dev/net/tun, TUNSETIFF with the name, as QEMU
does) and QEMU gets ``fd=N`` (:func:`as_fds`), inherited across exec. Only the command
line QEMU runs with says ``fd=``: the one a VM's record keeps still says ``ifname=``, since
a restore or a migration rebuilds the QEMU from it on another process (or host) where N
means nothing.

IFF_VNET_HDR is asked for as QEMU asks for it itself (it probes the fd for it and then
offloads checksums and segmentation to the host like it did with ``ifname=``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
BUSY_WAIT_S = 1.0
BUSY_POLL_S = 0.005


def open_tap(name: str, busy_for: float = BUSY_WAIT_S) -> int:
    """An fd attached to the existing tap ``name`` (close-on-exec; inherit it explicitly).

    EBUSY (another descriptor still attached) is retried for up to ``busy_for`` seconds:
    seen once in 200 creates of a 2-core CI run, right after the tap was made (devd's own
    descriptor closing); QEMU, opening the tap itself ~20 ms later, had that slack.

    :raise OSError: no such tap, no permission to attach to it, or still busy.
    """
    ifreq = struct.pack(f"{IFNAMSIZ}sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    deadline = time.monotonic() + busy_for
    while True:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifreq)
            return fd
        except OSError as exc:
            os.close(fd)
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        except BaseException:
            os.close(fd)
            raise
        time.sleep(BUSY_POLL_S)


def as_fds(argv: list[str]) -> tuple[list[str], list[int]]:
    """``argv`` with each ``-netdev tap,...,ifname=NAME,...`` opened here and turned into
    ``fd=N`` (script/downscript options dropped: QEMU refuses them with fd=); the fds, for
    the caller to pass to QEMU and close after the spawn.

    :raise OSError: a tap could not be opened (the fds opened so far are closed).
    """
    out: list[str] = []
    fds: list[int] = []
    try:
        for i, arg in enumerate(argv):
            if i > 0 and argv[i - 1] == "-netdev" and arg.startswith("tap,"):
                opts = arg.split(",")[1:]
                name = next((o.split("=", 1)[1] for o in opts if o.startswith("ifname=")), None)
                if name is not None:
                    fd = open_tap(name)
                    fds.append(fd)
                    kept = [o for o in opts if not o.startswith(("ifname=", "script=", "downscript="))]
                    arg = ",".join(["tap", *kept, f"fd={fd}"])
            out.append(arg)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return out, fds


__all__ = ["as_fds", "open_tap"]

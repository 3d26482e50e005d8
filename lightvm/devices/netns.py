"""The kernel calls under devd: a thread in a network namespace, a persistent tap.

Kept apart from :mod:`lightvm.devices.devd` (which speaks netlink) because these
are raw ``setns(2)`` and TUN ioctls through ctypes/fcntl, with their own rules:
``setns`` moves only the calling thread, and a tap is created in the namespace
its ``/dev/net/tun`` descriptor was opened in. Why devd uses them instead of
pyroute2's forking namespace proxy: docs/qemu-notes.md, "Networking".
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from lightvm.errors import CapabilityError, NetworkError

NETNS_RUN_DIR = Path("/var/run/netns")

_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_TUNSETOWNER = 0x400454CC
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_TUN_EXCL = 0x8000

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str) -> Path:
    """A namespace's file: a path as given, or a name under /var/run/netns."""
    return Path(netns) if "/" in netns else NETNS_RUN_DIR / netns


def setns(fd: int) -> None:
    """Move the calling thread (only) into the network namespace open on ``fd``."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def thread_inside(nsfd: int) -> Iterator[None]:
    """Run the block with the calling thread in namespace ``nsfd``, then return home."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(nsfd)
        try:
            yield
        finally:
            # A thread left in the wrong namespace would act on the host's
            # links later: failing to return is fatal for this thread.
            setns(home)
    finally:
        os.close(home)


def open_tun() -> int:
    """Open /dev/net/tun in the calling thread's namespace (where the tap will live)."""
    try:
        return os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise CapabilityError(
            f"cannot open /dev/net/tun: {exc.strerror}; taps need CAP_NET_ADMIN (else use user networking)"
        ) from exc


def make_persistent_tap(fd: int, name: str, owner_uid: int | None) -> None:
    """Turn the open tun descriptor ``fd`` into persistent tap ``name``; closes ``fd``.

    IFF_TUN_EXCL: an existing device by that name is never silently re-attached.
    """
    try:
        ifr = struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_TUN_EXCL)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
        if owner_uid is not None:
            fcntl.ioctl(fd, _TUNSETOWNER, owner_uid)
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise CapabilityError(f"cannot create tap {name}: needs CAP_NET_ADMIN") from exc
        raise NetworkError(f"cannot create tap {name}: {exc.strerror}") from exc
    finally:
        os.close(fd)

"""Small helpers shared by the toolstack modules: deadlines, atomic files, process identity.

Nothing here knows about VMs. Every wait in lightvm goes through :func:`wait_until`
(a deadline, never a bare sleep), every state file through :func:`atomic_write`.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lightvm.lineio import LINE_MAX as LINE_MAX

# Re-exported: the socket and deadline helpers live in lightvm/lineio.py (the CLI's thin path imports them alone).
from lightvm.lineio import UNIX_PATH_MAX as UNIX_PATH_MAX
from lightvm.lineio import Deadline as Deadline
from lightvm.lineio import connect_unix as connect_unix
from lightvm.lineio import recv_line as recv_line
from lightvm.lineio import short_unix_path as short_unix_path

T = TypeVar("T")

FD_SETSIZE = 1024


def wait_readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` becomes readable within ``timeout`` seconds.

    select() keeps microsecond timeouts (the boot poll loop waits 0.2 ms at a time;
    poll() and epoll round that up to 1 ms) but cannot watch a descriptor numbered
    1024 or more, which a process holding a thousand VMs' sockets reaches: those go
    through poll().
    """
    if fd < FD_SETSIZE:
        return bool(select.select([fd], [], [], timeout)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    if 0 < timeout < 0.001:
        # poll() would round a sub-millisecond wait up to 1 ms, 5x the boot loop's step
        # (lightvmd past ~1,000 VMs noticed READY up to 1 ms late): look, sleep, look.
        if poller.poll(0):
            return True
        time.sleep(timeout)
        return bool(poller.poll(0))
    return bool(poller.poll(max(0.0, timeout) * 1000))


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.001,
    max_interval: float = 0.05,
) -> T | None:
    """Call ``predicate`` until it returns something truthy or ``timeout`` passes.

    The polling interval starts at ``interval`` and doubles up to ``max_interval``,
    so short waits stay precise and long ones stay cheap. Returns the truthy value,
    or None when the deadline passed (the caller names what it was waiting for).
    """
    deadline = Deadline(timeout)
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        left = deadline.remaining()
        if left <= 0:
            return None
        time.sleep(min(delay, left))
        delay = min(delay * 2, max_interval)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``path`` so that readers see the old content or the new, never a mix.

    Writes a temporary file in the same folder, then renames it over the target.
    No fsync: state lives on tmpfs (/run) and dies with the VMs on a host crash.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def proc_start_time(pid: int) -> int | None:
    """The kernel start time (clock ticks since boot) of ``pid``, or None if it is gone.

    A PID plus its start time names one process for good: PIDs are reused,
    start times of different processes with the same PID never match.
    Zombies count as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def proc_alive(pid: int | None, start_time: int | None) -> bool:
    """True if the process ``pid`` that started at ``start_time`` still runs."""
    if not pid or pid <= 0:
        return False
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def owner_gone(pid_text: str) -> bool:
    """True when ``pid_text``, the PID a file or folder was named with by the process that
    made it, names no process: its maker was killed (``kill -9``: no ``finally`` ran) and
    what it left may go. False for anything else: not a PID, this process, a live process,
    or one we may not signal. A PID reused since keeps the leftover until that one exits
    too: harmless, never a live maker's work removed."""
    if not pid_text.isdigit() or int(pid_text) <= 0 or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def find_processes_with_arg(needle: str) -> list[int]:
    """PIDs of live processes whose argv contains ``needle`` as a substring of one argument.

    Used to find a QEMU whose PID was never recorded (its creator was killed
    between spawn and the write of the PID).
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        if any(needle in arg for arg in proc_cmdline(pid)) and proc_start_time(pid) is not None:
            pids.append(pid)
    return pids


def qemu_opt_escape(value: str) -> str:
    """Escape a value for a QEMU ``key=value,...`` option string (commas double)."""
    return value.replace(",", ",,")


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """:func:`open_regular` found something else than a regular file (``strerror`` says what)."""


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words ("a FIFO", "a directory", ...)."""
    return next((word for test, word in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path) -> int:
    """Open ``path`` read-only, refusing anything but a regular file; a blocking fd.

    Opening a FIFO for reading blocks until a writer comes (forever, for a kernel path
    someone pointed at a pipe), and a device file reads without end: ``O_NONBLOCK`` makes
    the open return at once, ``fstat`` on the opened fd (no race with a rename) checks
    the type, and only then is the fd made blocking again for ordinary reads.

    :raise NotRegularFileError: a FIFO, directory, device or socket (``strerror``:
        "is a FIFO, not a regular file").
    :raise OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"is {file_kind(mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, limit: int) -> bytes:
    """The whole of the regular file ``path``, at most ``limit`` bytes (bounded: a config
    file is small; a larger one is refused rather than read into memory).

    :raise NotRegularFileError: not a regular file, or larger than ``limit`` bytes.
    :raise OSError: it cannot be read.
    """
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotRegularFileError(errno.EFBIG, f"is larger than {limit} bytes", str(path))
    return data


def tail(path: Path, max_bytes: int = 2048) -> str:
    """The last ``max_bytes`` of a log file as printable text ('' if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            raw = f.read()
    except OSError:
        return ""
    return raw.decode(errors="replace").strip()


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""

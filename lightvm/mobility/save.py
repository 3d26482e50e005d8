"""Save a VM to a checkpoint file (the format: lightvm/mobility/format.py).

The VM is stopped (unless paused already), the header and then QEMU's migration stream
go into ``.NAME.partial-PID`` next to FILE, which is renamed to FILE at the end; then
the VM is destroyed, or resumed with ``keep_running``. Any failure (QEMU error, disk
full, timeout) removes the partial file and resumes the VM. No fsync: a checkpoint is
as durable as the file system's writeback.

QEMU writes the stream straight into the file; the digests (format.py) are computed
afterwards, reading the stream back from the page cache (1.4-3.2 ms per MiB of file
with SHA-256 here, depending on the load: docs/checkpoint.md), and with
``keep_running`` after the VM runs again, so the checksum adds nothing to its downtime.
A ``kill -9`` of a save leaves its ``.NAME.partial-PID``: the next save into the same
directory removes partials whose PID is dead (:func:`clean_stale_partials`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError
from lightvm.instance import attach
from lightvm.mobility.format import CheckpointError, Sealer, checkpoint_key, encode_header, header_for
from lightvm.mobility.stream import outgoing, stream_out, wait_migration
from lightvm.resume import resume_stamped
from lightvm.toolstack import Toolstack
from lightvm.util import owner_gone


@dataclass
class SaveResult:
    name: str
    path: str
    bytes: int
    save_ms: float  # request -> file complete (VM stopped, stream written, renamed)
    downtime_ms: float  # VM stopped -> file complete (or -> resumed with --keep-running)
    checksum_ms: float  # of save_ms: reading the stream back, digest, trailer
    total_ms: float  # including destroy (or cont)
    kept_running: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


READ_CHUNK = 1 << 20


def _seal(fd: int, head: bytes, key: bytes | None) -> int:
    """Append the trailer to a file holding ``head`` and QEMU's stream; the file's size."""
    sealer = Sealer(key)
    sealer.update(head)
    end = os.fstat(fd).st_size
    pos = len(head)
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    while pos < end:
        n = os.preadv(fd, [view[: min(READ_CHUNK, end - pos)]], pos)
        if n <= 0:
            raise CheckpointError(f"the file shrank while its checksum was computed ({pos} of {end} bytes)")
        sealer.update(view[:n])
        pos += n
    if end <= len(head):
        raise CheckpointError("QEMU wrote no migration stream")
    trailer = sealer.trailer(end - len(head))
    os.lseek(fd, end, os.SEEK_SET)
    _write_all(fd, trailer)
    return end + len(trailer)


def _save_error(path: Path, exc: BaseException) -> CheckpointError:
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in text:
        return CheckpointError(f"cannot save to {path}: disk full (no space left on device); the VM keeps running")
    if isinstance(exc, OSError):
        return CheckpointError(f"cannot save to {path}: {exc.strerror or exc}; the VM keeps running")
    return CheckpointError(f"cannot save to {path}: {text}; the VM keeps running")


def save(
    toolstack: Toolstack,
    name: str,
    path: Path,
    keep_running: bool = False,
    timeout: float = 30.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_saved: Callable[[Path], None] | None = None,
) -> SaveResult:
    """Save VM ``name`` to ``path`` (a new file); destroy it unless ``keep_running``.
    ``progress`` gets the stream's progress (stream.progress_of: bytes written, left,
    rate) every stream.PROGRESS_EVERY seconds and at its end. ``on_saved(path)`` runs once
    the file is complete, before the VM is destroyed (a lightvmd's ``saved`` event).

    On any failure the partial file is removed and the VM runs on as before.

    :raise NotFoundError: no such VM.
    :raise StateError: the VM is not running or paused.
    :raise CheckpointError: the file cannot be written (e.g. disk full) or QEMU failed.
    """
    t0 = time.perf_counter()
    vmdir, record, paused = outgoing(toolstack.state, name)
    path = Path(path)
    if path.exists():
        raise CheckpointError(f"{path} exists; remove it or pick another file")
    key = checkpoint_key()
    data = encode_header(header_for(record, paused), key)
    clean_stale_partials(path.parent)
    tmp = path.with_name(f"{PARTIAL_PREFIX}{path.name}{PARTIAL_MARK}{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)  # read back for the digest
    except OSError as exc:
        raise _save_error(path, exc) from exc
    machine = attach(vmdir, record, paused)
    stopped = False
    t_stop = t0
    try:
        try:
            _write_all(fd, data)
            t_stop = time.perf_counter()
            if not paused:
                machine.qmp.execute("stop", timeout=5.0)
                stopped = True
            stream_out(machine, fd)
            wait_migration(machine, timeout, "save", progress=progress)
            if keep_running and stopped:
                # The checksum is not downtime; the guest's clock stood still while saving.
                resume_stamped(machine, record.noxs_path)
                stopped = False
            t_resumed = time.perf_counter()
            size = _seal(fd, data, key)
            t_sealed = time.perf_counter()
            os.close(fd)
            fd = -1
            os.rename(tmp, path)
        except (OSError, LightVMError) as exc:
            if fd >= 0:
                os.close(fd)
                fd = -1
            tmp.unlink(missing_ok=True)
            if stopped:
                with contextlib.suppress(LightVMError):
                    resume_stamped(machine, record.noxs_path)
            raise _save_error(path, exc) from exc
        t_saved = time.perf_counter()
        downtime = (t_resumed if keep_running else t_saved) - t_stop
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        machine.release()
    if on_saved is not None:
        on_saved(path)
    if not keep_running:
        toolstack.destroy(name)
    t_end = time.perf_counter()
    return SaveResult(
        name=name,
        path=str(path),
        bytes=size,
        save_ms=(t_saved - t0) * 1000,
        downtime_ms=downtime * 1000,
        checksum_ms=(t_sealed - t_resumed) * 1000,
        total_ms=(t_end - t0) * 1000,
        kept_running=keep_running,
    )


PARTIAL_PREFIX = "."
PARTIAL_MARK = ".partial-"


def clean_stale_partials(directory: Path) -> list[Path]:
    """Remove the ``.NAME.partial-PID`` files in ``directory`` whose save is dead (a save
    killed with ``kill -9`` cannot remove its own); returns what was removed.

    A partial is stale when no process has its PID. A PID reused by another process
    keeps the file until that one exits too (harmless: never a live save's file removed).
    """
    removed: list[Path] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for entry in names:
        if not entry.startswith(PARTIAL_PREFIX) or PARTIAL_MARK not in entry:
            continue
        if not owner_gone(entry.rsplit(PARTIAL_MARK, 1)[1]):
            continue
        with contextlib.suppress(FileNotFoundError, PermissionError, IsADirectoryError):
            (directory / entry).unlink()
            removed.append(directory / entry)
    return removed


__all__ = ["SaveResult", "clean_stale_partials", "save"]

"""Save a VM to a checkpoint file (the format: lightvm/mobility/format.py).

The VM is stopped (unless paused already), the header and then QEMU's migration stream
go into ``.NAME.partial-PID`` next to FILE, which is renamed to FILE at the end; then
the VM is destroyed, or resumed with ``keep_running``. Any failure (QEMU error, disk
full, timeout) removes the partial file and resumes the VM. No fsync: a checkpoint is
as durable as the file system's writeback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError
from lightvm.instance import attach
from lightvm.mobility.format import CheckpointError, encode_header, header_for
from lightvm.mobility.stream import outgoing, stream_out, wait_migration
from lightvm.resume import resume_stamped
from lightvm.toolstack import Toolstack


@dataclass
class SaveResult:
    name: str
    path: str
    bytes: int
    save_ms: float  # request -> file complete (VM stopped, stream written, renamed)
    downtime_ms: float  # VM stopped -> file complete (or -> resumed with --keep-running)
    total_ms: float  # including destroy (or cont)
    kept_running: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _save_error(path: Path, exc: BaseException) -> CheckpointError:
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in text:
        return CheckpointError(f"cannot save to {path}: disk full (no space left on device); the VM keeps running")
    if isinstance(exc, OSError):
        return CheckpointError(f"cannot save to {path}: {exc.strerror or exc}; the VM keeps running")
    return CheckpointError(f"cannot save to {path}: {text}; the VM keeps running")


def save(toolstack: Toolstack, name: str, path: Path, keep_running: bool = False, timeout: float = 30.0) -> SaveResult:
    """Save VM ``name`` to ``path`` (a new file); destroy it unless ``keep_running``.

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
    data = encode_header(header_for(record, paused))
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
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
            wait_migration(machine, timeout, "save")
            size = os.fstat(fd).st_size
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
        if keep_running:
            if stopped:
                resume_stamped(machine, record.noxs_path)  # the guest's clock stood still while saving
            downtime = time.perf_counter() - t_stop
        else:
            downtime = t_saved - t_stop
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        machine.release()
    if not keep_running:
        toolstack.destroy(name)
    t_end = time.perf_counter()
    return SaveResult(
        name=name,
        path=str(path),
        bytes=size,
        save_ms=(t_saved - t0) * 1000,
        downtime_ms=downtime * 1000,
        total_ms=(t_end - t0) * 1000,
        kept_running=keep_running,
    )


__all__ = ["SaveResult", "save"]

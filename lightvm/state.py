"""On-disk state: one folder per VM under a run dir, so any later process can find,
re-adopt or clean up what an earlier one created.

Layout (``STATE`` = ``--state-dir``, ``$LIGHTVM_STATE_DIR``, /run/lightvm for root,
else ``$XDG_RUNTIME_DIR/lightvm``)::

    STATE/lock                 fcntl lock held while names are allocated
    STATE/vms/NAME/creating    present from the first step of a create until READY:
                               {"pid", "start"} of the creating process
    STATE/vms/NAME/vm.json     the VMRecord (atomic writes: temp file + rename)
    STATE/vms/NAME/qmp.sock    QMP listening socket (bound by us, served by QEMU)
    STATE/vms/NAME/console.log guest serial console
    STATE/vms/NAME/qemu.log    QEMU's stdout/stderr
    SHM/lightvm-ID             the VM's NoXS region (SHM = ``$LIGHTVM_SHM_DIR``, default
                               /dev/shm: :func:`shm_dir`, the one place that reads it)

The folder and its ``creating`` marker exist *before* any host resource, and the
record names the NoXS file before it is created and the QEMU PID as soon as QEMU
exists. So a create killed at any point leaves a folder that :func:`status_of` reports
as ``incomplete`` and that destroy can clean completely.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightvm.errors import ExistsError, NotFoundError, StateError
from lightvm.statedir import STATE_ENV as STATE_ENV
from lightvm.statedir import default_state_path
from lightvm.util import atomic_write, proc_alive, proc_start_time

SHM_ENV = "LIGHTVM_SHM_DIR"
DEFAULT_SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "lightvm-"


def shm_dir() -> Path:
    """The directory holding the NoXS files: ``$LIGHTVM_SHM_DIR``, else /dev/shm (it
    should be a tmpfs: the guests' pages live there). Created (mode 0700) if missing.

    :raise StateError: if the variable is not an absolute path or the directory cannot be made.
    """
    env = os.environ.get(SHM_ENV)
    path = Path(env) if env else DEFAULT_SHM_DIR
    if not path.is_absolute():
        raise StateError(f"{SHM_ENV}={env}: must be an absolute path")
    if not path.is_dir():
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{SHM_ENV}={path}: cannot create it ({exc.strerror or exc})") from exc
    return path


def noxs_file(vm_id: str) -> Path:
    """Where the NoXS file of VM ``vm_id`` lives: ``shm_dir()/lightvm-ID``."""
    return shm_dir() / f"{SHM_PREFIX}{vm_id}"


def default_state_dir() -> Path:
    """``$LIGHTVM_STATE_DIR``, else /run/lightvm (root), else ``$XDG_RUNTIME_DIR/lightvm``
    (:func:`lightvm.statedir.default_state_path`, as a Path)."""
    return Path(default_state_path())


class VMStatus(enum.Enum):
    CREATING = "creating"  # a live process is creating it
    INCOMPLETE = "incomplete"  # its creator died mid-create; destroy cleans it
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"  # the guest powered off cleanly (shutdown --keep)
    CRASHED = "crashed"  # QEMU died without a clean poweroff


@dataclass
class VMRecord:
    """What we know about one VM, as stored in ``vm.json``."""

    name: str
    id: str
    uuid: str
    created: float
    accel: str
    noxs_path: str
    noxs_size: int
    spec: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    pid_start: int | None = None
    state: str = "creating"  # creating | running | paused | halted | crashed
    boot_ms: dict[str, float | None] | None = None
    argv: list[str] = field(default_factory=list)
    devices: dict[str, Any] = field(default_factory=dict)  # per-device undo info (taps, ...)
    exit_reason: str | None = None

    @classmethod
    def new(cls, name: str, vm_id: str, uuid: str, accel: str, noxs_size: int, spec: dict[str, Any]) -> VMRecord:
        """A fresh record. The NoXS file is named after the VM id (:func:`noxs_file`:
        ``/dev/shm/lightvm-ID`` by default):
        destroy and the leftover checks find a VM's region by that name. A spec with vifs
        is marked ``vifs_pending`` until its taps are recorded, so that destroy looks for
        taps even if the creator dies first."""
        record = cls(
            name=name,
            id=vm_id,
            uuid=uuid,
            created=time.time(),
            accel=accel,
            noxs_path=str(noxs_file(vm_id)),
            noxs_size=noxs_size,
            spec=spec,
        )
        if spec.get("vifs"):
            record.devices["vifs_pending"] = True
        return record

    def to_json(self) -> str:
        # Every field is already JSON-native: a shallow copy, no dataclasses.asdict deep walk
        # (this runs on the create path). Compact: nobody reads it but lightvm and jq.
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str) -> VMRecord:
        """:raise StateError: if the record is not valid JSON of the right shape."""
        try:
            data = json.loads(text)
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, TypeError, AttributeError) as exc:
            raise StateError(f"{where}: corrupt VM record ({exc}); `lightvm destroy` removes it") from exc


class VMDir:
    """The state folder of one VM."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.record_path = path / "vm.json"
        self.creating_path = path / "creating"
        self.qmp_path = path / "qmp.sock"
        self.console_path = path / "console.log"
        self.log_path = path / "qemu.log"

    def read(self) -> VMRecord | None:
        """The record, or None if the create died before writing it.

        :raise StateError: if it exists but is corrupt.
        """
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{self.record_path}: cannot read: {exc.strerror}") from exc
        return VMRecord.from_json(text, str(self.record_path))

    def write(self, record: VMRecord) -> None:
        atomic_write(self.record_path, record.to_json())

    def creator(self) -> tuple[int, int | None] | None:
        """(pid, start time) of the process creating this VM, or None once created."""
        try:
            data = json.loads(self.creating_path.read_text())
            return int(data["pid"]), data.get("start")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return (0, None)  # unreadable marker: treat the creator as dead

    def mark_created(self) -> None:
        self.creating_path.unlink(missing_ok=True)


class StateDir:
    """The run dir holding every VM folder of one lightvm instance."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_state_dir()
        self.vms_root = self.root / "vms"

    def ensure(self) -> None:
        """Create the folders (mode 0700).

        :raise StateError: if they cannot be created.
        """
        try:
            self.vms_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state dir {self.vms_root}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the state dir's exclusive lock (name allocation)."""
        self.ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def allocate(self, names: list[str]) -> list[VMDir]:
        """Create the folders for ``names`` with their ``creating`` markers, all or none.

        :raise ExistsError: naming the first name already taken.
        """
        marker = json.dumps({"pid": os.getpid(), "start": proc_start_time(os.getpid())})
        with self.lock():
            for name in names:
                if (self.vms_root / name).exists():
                    raise ExistsError(f"a VM named {name!r} already exists in {self.root}; pick another --name")
            made: list[VMDir] = []
            try:
                for name in names:
                    path = self.vms_root / name
                    path.mkdir(mode=0o700)
                    vmdir = VMDir(path)
                    made.append(vmdir)
                    atomic_write(vmdir.creating_path, marker)
            except OSError as exc:
                for vmdir in made:
                    shutil.rmtree(vmdir.path, ignore_errors=True)
                if exc.errno == errno.EEXIST:
                    raise ExistsError(f"a VM named {Path(str(exc.filename)).name!r} already exists") from exc
                raise StateError(f"cannot create VM folder in {self.vms_root}: {exc.strerror}") from exc
            return made

    def get(self, name: str) -> VMDir:
        """:raise NotFoundError: if there is no VM ``name``."""
        path = self.vms_root / name
        if not name or "/" in name or name in (".", "..") or not path.is_dir():
            raise NotFoundError(f"no VM named {name!r} in {self.root} (see `lightvm list`)")
        return VMDir(path)

    def names(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.vms_root) if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []

    def remove(self, vmdir: VMDir) -> None:
        shutil.rmtree(vmdir.path, ignore_errors=True)


def status_of(vmdir: VMDir, record: VMRecord | None) -> VMStatus:
    """The VM's status from its folder alone (no QMP): marker, record, and /proc."""
    creator = vmdir.creator()
    if creator is not None:
        pid, start = creator
        return VMStatus.CREATING if proc_alive(pid, start) else VMStatus.INCOMPLETE
    if record is None:
        return VMStatus.INCOMPLETE
    if record.state in (VMStatus.HALTED.value, VMStatus.CRASHED.value):
        return VMStatus(record.state)
    if proc_alive(record.pid, record.pid_start):
        return VMStatus.PAUSED if record.state == VMStatus.PAUSED.value else VMStatus.RUNNING
    return VMStatus.CRASHED

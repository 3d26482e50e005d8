"""The jail around every QEMU lightvm starts: a user of its own, no capabilities, a syscall
filter and an empty root, so that a guest which escapes QEMU holds nothing.

QEMU starts as root (it opens its kernel, NoXS file, console, taps and /dev/kvm, and
binds nothing later that needs privilege), and "just before starting the VM", before any
guest instruction runs, it applies the layers we ask for:

* ``-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny``:
  QEMU's seccomp filter (libseccomp; the slim build has it: qemu/build.sh). Installing it
  sets no_new_privs. ``elevateprivileges`` stays allowed because QEMU's own ``-runas``
  calls setgid/setuid after the filter is in place (measured: ``deny`` kills QEMU with
  SIGSYS there); once it ran, the process has no capabilities and no_new_privs, so no
  set*id call can give it root back.
* ``-runas UID:GID``: a uid of its own per VM (:func:`allocate`), from a range no user of
  the host has (``UID_BASE``), so two VMs' QEMUs cannot signal or ptrace each other, and
  its permitted and effective capabilities are empty.
* ``-chroot DIR``: an empty, root-owned, read-only folder (``JAIL_DIR/root``): after
  start-up QEMU sees no file of the host. Everything it needs later comes as a file
  descriptor (migration streams, a pooled shell's disk image: lightvm/devices/shellblk.py).

Without root (a rootless lightvm) only the filter applies: -runas and -chroot need root.
``LIGHTVM_JAIL=off`` turns every layer off (debugging), ``LIGHTVM_JAIL=seccomp`` keeps
only the filter. Which layers are on for this
process: :func:`layers`. docs/security.md has the measured cost of each.

Per-VM uids: a marker file ``JAIL_DIR/uids/UID`` (written aside, then hard-linked into place:
it exists whole or not at all) holds the PID and start
time of who uses it (the creating process, then the VM's QEMU); a marker whose process is
gone is stale and reused. Markers are removed when a VM is destroyed or its create fails;
a missed removal (kill -9) costs nothing but the file, reclaimed when probed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lightvm import hostfacts
from lightvm.errors import StateError
from lightvm.util import proc_start_time

ENV = "LIGHTVM_JAIL"
DIR_ENV = "LIGHTVM_JAIL_DIR"
DEFAULT_DIR = Path("/run/lightvm-jail")
UID_BASE = 1_600_000_000  # above any login, system or subordinate (/etc/subuid) range in use
UID_COUNT = 1 << 20
SANDBOX = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
PROBE_TIMEOUT = 10.0


def jail_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def enabled() -> bool:
    return os.environ.get(ENV, "on").lower() not in ("off", "0", "no", "false")


def filter_only() -> bool:
    """``LIGHTVM_JAIL=seccomp``: the filter alone, as a rootless lightvm gets it (to
    measure what each layer costs: lightvm/bench/jailcost.py)."""
    return os.environ.get(ENV, "on").lower() == "seccomp"


def layers(binary: str) -> list[str]:
    """The layers a QEMU ``binary`` started by this process gets."""
    if not enabled():
        return []
    filtered = ["seccomp", "no_new_privs"] if sandbox_supported(binary) else []
    if os.geteuid() != 0 or filter_only():
        return filtered
    return [*filtered, "uid", "no_capabilities", "chroot"]


def layers_drop_root() -> bool:
    """Whether a QEMU started now gives up root before its guest runs (so binds nothing
    privileged afterwards: a pooled shell's late port forward, for one)."""
    return enabled() and not filter_only() and os.geteuid() == 0


def sandbox_supported(binary: str) -> bool:
    """Whether ``binary`` was built with seccomp (``-sandbox on -version`` fails at option
    parsing without it); asked once per binary build and cached (lightvm/hostfacts.py)."""
    path = shutil.which(binary) or binary
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = f"{path}:{st.st_size}:{int(st.st_mtime)}"
    cache = hostfacts.load_cache()
    known = cache.get("seccomp", {})
    if isinstance(known, dict) and isinstance(known.get(key), bool):
        return bool(known[key])
    try:
        ok = (
            subprocess.run([path, "-sandbox", "on", "-version"], capture_output=True, timeout=PROBE_TIMEOUT).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    kept = dict(list(known.items())[-7:]) if isinstance(known, dict) else {}
    cache["seccomp"] = {**kept, key: ok}  # the last few builds: a rebuild is a new key
    hostfacts.save_cache(cache)
    if not ok:  # said once per QEMU build, when it is first probed (host check says it always)
        print(
            f"lightvm: note: {path} has no seccomp support: its VMs run without the jail's syscall "
            "filter (lightvm setup qemu builds lightvm's QEMU with it)",
            file=sys.stderr,
        )
    return ok


@dataclass(frozen=True)
class Jail:
    """One VM's place in the jail: its QEMU arguments and the uid marker it holds."""

    uid: int | None  # None: rootless or off (no marker)
    args: tuple[str, ...]
    vm_id: str = ""

    def hand_to(self, pid: int, start: int | None) -> None:
        """The QEMU ``pid`` holds the uid from now on (it outlives the creating process).

        Only while the marker is still this create's: a destroy of the VM racing its create
        (``destroy --all``) may have given the uid back (:func:`release_vm`) after
        :func:`allocate`. Writing the marker again then would leave one naming this QEMU
        that nothing gives back (the create's own release finds the VM's index entry gone),
        or overwrite another VM's that took the uid meanwhile.

        :raise StateError: the uid was given back meanwhile (the caller's undo kills QEMU).
        """
        if self.uid is None:
            return
        path = _marker(self.uid)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # no O_CREAT: a marker given back stays so
        except FileNotFoundError:
            raise StateError(f"VM {self.vm_id}: destroyed while it was created (its jail uid was given back)") from None
        except OSError:
            return  # unreadable: as before, the QEMU runs and the marker names its creator
        try:
            held = os.read(fd, 4096).decode(errors="replace").split()
            if held[:1] != [str(os.getpid())] or held[2:3] != [self.vm_id]:
                raise StateError(
                    f"VM {self.vm_id}: destroyed while it was created (jail uid {self.uid} is another's now)"
                )
            with contextlib.suppress(OSError):  # as before: unwritten, the marker names the creator
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{pid} {start or 0} {self.vm_id}\n".encode(), 0)
        except OSError:
            return  # unreadable: likewise
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.uid is not None:
            release_vm(self.vm_id)


def allocate(vm_id: str, binary: str) -> Jail:
    """The jail for a new VM of QEMU ``binary`` (its record id picks where the uid search starts)."""
    if not enabled():
        return Jail(None, ())
    sandbox: tuple[str, ...] = ("-sandbox", SANDBOX) if sandbox_supported(binary) else ()
    if os.geteuid() != 0 or filter_only():
        return Jail(None, sandbox)
    root = _empty_root()
    start = int.from_bytes(hashlib.sha256(vm_id.encode()).digest()[:4], "little") % UID_COUNT
    me = f"{os.getpid()} {proc_start_time(os.getpid()) or 0} {vm_id}\n"
    for step in range(UID_COUNT):
        uid = UID_BASE + (start + step) % UID_COUNT
        path = _marker(uid)
        if not _claim(path, me):
            if not _stale(path):
                continue
            with contextlib.suppress(OSError, IndexError):  # the dead holder's index entry
                _by_vm(path.read_text().split()[2]).unlink(missing_ok=True)
            path.unlink(missing_ok=True)  # a dead holder's: take it (another taker loses the race)
            if not _claim(path, me):
                continue
        # The VM's index entry: destroy finds its uid by the VM's id alone (a create killed
        # before its record named the uid leaves no other trace of it).
        link = _by_vm(vm_id)
        link.unlink(missing_ok=True)
        os.symlink(str(uid), link)
        return Jail(uid, (*sandbox, "-runas", f"{uid}:{uid}", "-chroot", str(root)), vm_id)
    raise OSError(f"no free jail uid in {UID_BASE}..{UID_BASE + UID_COUNT - 1}")


def _claim(path: Path, content: str) -> bool:
    """Create marker ``path`` holding ``content``, unless it exists: written to a file of our
    own, then hard-linked into place (link fails if the name exists), so a marker is never
    seen empty; an O_EXCL create and a write would leave an empty one, never reclaimable,
    for a process killed between the two (seen in a kill -9 test). The file's name holds
    the thread too: two threads of one create (``-j``) probing the same uid would otherwise
    share it, and one's O_TRUNC would empty the marker the other just linked."""
    tmp = path.with_name(f"{NEW_PREFIX}{os.getpid()}-{threading.get_native_id()}-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


NEW_PREFIX = ".new-"  # a marker being claimed: .new-PID-TID-UID (its claimer killed: swept)
EMPTY_STALE_S = 60.0


def release(uid: int) -> None:
    with contextlib.suppress(OSError):  # e.g. a rootless destroy: nothing of the jail is its to remove
        _marker(uid).unlink(missing_ok=True)


def release_vm(vm_id: str) -> None:
    """Give back the uid of the VM whose record id is ``vm_id`` (nothing if it has none)."""
    link = _by_vm(vm_id)
    with contextlib.suppress(OSError, ValueError):
        release(int(os.readlink(link)))
    with contextlib.suppress(OSError):
        link.unlink(missing_ok=True)


def sweep_stale() -> list[int]:
    """Give back every uid whose holder is gone (what processes killed with their VMs'
    QEMUs, e.g. a whole namespace, left); the uids freed."""
    freed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(jail_dir() / "uids"):
            path = Path(entry.path)
            if entry.name.startswith(NEW_PREFIX):
                claimer = entry.name[len(NEW_PREFIX) :].split("-")[0]
                if claimer.isdigit() and (proc_start_time(int(claimer)) is None or _older_than(path, EMPTY_STALE_S)):
                    path.unlink(missing_ok=True)  # a claim lasts microseconds: an old one's claimer is gone
                continue
            if entry.name.isdigit() and _stale(path):
                with contextlib.suppress(OSError, IndexError):
                    _by_vm(path.read_text().split()[2]).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                freed.append(int(entry.name))
    return freed


def _by_vm(vm_id: str) -> Path:
    return jail_dir() / "vms" / vm_id


def _marker(uid: int) -> Path:
    return jail_dir() / "uids" / str(uid)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _stale(path: Path) -> bool:
    try:
        text = path.read_text()
        if not text and _older_than(path, EMPTY_STALE_S):
            return True  # left empty by an older lightvm's create killed mid-claim
        pid_s, start_s = text.split()[:2]
        pid, start = int(pid_s), int(start_s)
    except (OSError, ValueError):
        return False  # unreadable, or an older lightvm's marker being written: not ours to take
    current = proc_start_time(pid)
    return current is None or (start != 0 and current != start)  # gone, or its PID reused


def _empty_root() -> Path:
    """``JAIL_DIR/root``: empty, root-owned, mode 0555; ``JAIL_DIR/uids`` for the markers."""
    base = jail_dir()
    root = base / "root"
    (base / "uids").mkdir(mode=0o700, parents=True, exist_ok=True)
    (base / "vms").mkdir(mode=0o700, exist_ok=True)
    root.mkdir(mode=0o555, exist_ok=True)
    return root


__all__ = [
    "ENV",
    "SANDBOX",
    "UID_BASE",
    "Jail",
    "allocate",
    "enabled",
    "layers",
    "layers_drop_root",
    "release",
    "release_vm",
    "sandbox_supported",
    "sweep_stale",
]

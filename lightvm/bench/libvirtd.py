"""A private libvirtd for the libvirt baseline, started and torn down by the suite.

The daemon is Debian's real libvirtd (libvirt 9.0, QEMU driver). It must not
touch the host's libvirt (if any), and it needs a qemu.conf the suite owns
(docs/qemu-notes.md, "Baselines for the benchmark suite"): ``user = "root"``, ``group = "root"``,
``dynamic_ownership = 0`` (else it runs QEMU as libvirt-qemu, which cannot open
root-only files, and re-probes QEMU on every call), and ``stdio_handler = "file"``
(QEMU's stdio to a file, no virtlogd needed). So it runs inside
``unshare -m --propagation private``: a launcher (this module's ``__main__``)
bind-mounts suite-owned directories over /etc/libvirt, /run/libvirt,
/var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, makes itself the
subreaper (libvirt's QEMUs are daemonised), runs ``libvirtd`` in the
foreground, and on EOF on its stdin stops it and reaps every child. Clients
connect with ``qemu:///system?socket=<workdir>/run/libvirt-sock``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightvm import paths
from lightvm.errors import LightVMError

TIMEOUT = 60.0
PR_SET_CHILD_SUBREAPER = 36
QEMU_ACCOUNT = "libvirt-qemu"
REAP_INTERVAL = 0.005
UNSHARE = ("unshare", "-m", "--propagation", "private")
PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
QEMU_CONF = """\
# Owned by lightvm's benchmark suite (lightvm/bench/libvirtd.py), not the host's.
user = "root"
group = "root"
dynamic_ownership = 0
stdio_handler = "file"
security_driver = "none"
remember_owner = 0
namespaces = []
cgroup_controllers = []
"""
LIBVIRTD_CONF = """\
# Owned by lightvm's benchmark suite: local socket only, no TCP, quiet.
listen_tls = 0
listen_tcp = 0
log_outputs = "3:stderr"
"""


def available() -> str | None:
    """Why the libvirt baseline cannot run here, or None."""
    if shutil.which("libvirtd") is None:
        return "libvirtd not found (apt install libvirt-daemon libvirt-daemon-driver-qemu)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount not found (util-linux, mount)"
    if os.geteuid() != 0:
        return "the private libvirtd needs root"
    try:
        import libvirt  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed in this Python (pip install libvirt-python)"
    return None


class LibvirtDaemon:
    """A running private libvirtd; :meth:`close` stops it and everything it started."""

    def __init__(self) -> None:
        why = available()
        if why:
            raise LightVMError(f"libvirt baseline: {why}")
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-libvirt-")
        self.work = Path(self._tmp.name)
        for sub in PRIVATE_DIRS:
            (self.work / sub).mkdir()
        (self.work / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.work / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        # An AF_UNIX path has at most 107 bytes and $TMPDIR may be deep: clients reach
        # the socket through a short symlink to the run dir.
        self._short = Path(tempfile.mkdtemp(prefix="lvb-", dir="/tmp"))
        (self._short / "run").symlink_to(self.work / "run")
        self.socket = self._short / "run" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.socket}"
        self.log_path = self.work / "libvirtd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-m", "lightvm.bench.libvirtd", str(self.work)],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(paths.PACKAGE.parent)},  # where this lightvm is imported from
        )
        try:
            self._wait_socket()
        except BaseException:
            self.close()
            raise

    @property
    def launcher_pid(self) -> int:
        """The launcher (unshare execs it in place): libvirtd and its QEMUs are its children."""
        return self._proc.pid

    def _wait_socket(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not self.socket.exists():
            if self._proc.poll() is not None:
                raise LightVMError(f"libvirtd exited ({self._proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise LightVMError(f"libvirtd: no socket after {TIMEOUT:.0f} s: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, size: int = 800) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self._proc.stdin:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(TIMEOUT)
        self._log.close()
        self._tmp.cleanup()
        shutil.rmtree(self._short, ignore_errors=True)

    def __enter__(self) -> LibvirtDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _private_accounts(work: Path) -> None:
    """Debian's libvirtd looks up its compiled-in default user (libvirt-qemu) before it
    reads qemu.conf; without libvirt-daemon-system that account does not exist. Give
    this mount namespace copies of /etc/passwd and /etc/group that have it."""
    for name, line in (
        ("passwd", f"{QEMU_ACCOUNT}:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n"),
        ("group", f"{QEMU_ACCOUNT}:x:64055:\n"),
    ):
        text = Path("/etc", name).read_text()
        if not any(entry.split(":", 1)[0] == QEMU_ACCOUNT for entry in text.splitlines()):
            copy = work / name
            copy.write_text(text + ("" if text.endswith("\n") else "\n") + line)
            subprocess.run(["mount", "--bind", str(copy), f"/etc/{name}"], check=True, timeout=TIMEOUT)


def _launcher_main(work: Path) -> int:
    for sub, target in PRIVATE_DIRS.items():
        os.makedirs(target, exist_ok=True)  # in the host's tree if missing; empty dirs only
        subprocess.run(["mount", "--bind", str(work / sub), target], check=True, timeout=TIMEOUT)
    _private_accounts(work)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    daemon = subprocess.Popen(["libvirtd", "--config", str(work / "etc" / "libvirtd.conf")], stdin=subprocess.DEVNULL)
    try:
        # Until the suite closes our stdin (or dies), or libvirtd exits.
        while not _reap_others(daemon.pid):
            readable, _, _ = select.select([sys.stdin], [], [], REAP_INTERVAL)
            if readable and not os.read(sys.stdin.fileno(), 4096):
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT / 2
        while not _reap_others(daemon.pid) and time.monotonic() < deadline:
            time.sleep(REAP_INTERVAL)
        # Whatever libvirtd left (daemonised QEMUs re-parented to us): kill and reap.
        _kill_children()
    return 0


def _reap_others(daemon_pid: int) -> bool:
    """Reap exited children (libvirt's daemonised QEMUs end up ours); True if libvirtd exited.

    Prompt reaping matters: libvirt waits for a QEMU it killed with kill(pid, 0),
    which succeeds on a zombie, so an unreaped QEMU costs it a long timeout.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        if pid == daemon_pid:
            return True


def _kill_children() -> None:
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, 0)[0] > 0:
            pass


if __name__ == "__main__":
    sys.exit(_launcher_main(Path(sys.argv[1])))

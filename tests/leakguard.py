"""The leak guard: a pytest plugin every test runs inside (tests/conftest.py loads it).

At configure time it marks the session:

- ``LIGHTVM_TEST_SESSION=<uuid>`` in os.environ: every process the tests start inherits
  it (the harness copies os.environ; QEMU and lightvmd inherit their parent's);
- ``LIGHTVM_SHM_DIR=/dev/shm/lvtest-<uuid>``: the product puts every NoXS file there
  (lightvm.state.shm_dir), so anything in it is this session's. Mode 1777 like /dev/shm
  (the rootless tests drop to nobody); removed at the end.
- ``LIGHTVM_JAIL_DIR=/run/lvtest-jail-<uuid>``: the jail's empty root and per-VM uid
  markers (lightvm/jail.py) of this session's QEMUs; removed at the end;
- ``LIGHTVM_CGROUP_PARENT=lvtest-<uuid>``: the parent of this session's VM cgroups
  (lightvm/cgroups.py); removed at the end.

Around each test, from the start of its setup to the end of its teardown, it takes a
snapshot of what a lightvm test can leak and that is this session's for sure, however
many other pytest sessions run on the machine:

  process  alive (not a zombie), not pytest itself, and its /proc/PID/environ carries
           the marker (QEMU, lightvmd, a CLI, an sshd, ...); or a child of pytest (a fork
           that never exec'd shows pytest's first environment, without the marker); or a
           QEMU whose command line names the session's NoXS dir (one started without our
           environment, over SSH)
  NoXS     any entry of the session's NoXS dir; /dev/shm/lvtest-<pid>-* (tests/guestlib.py)
  netns    /run/netns/lv<letters>[-]<pid>-*: the names harness.unique_name gives
  link     a link of pytest's own (host) namespace named the same way; the product's own
           taps and bridges (lv<hash>-N, lv-NET) cannot name a session: the tests make
           them inside a namespace of theirs, which is checked instead
  socket   a unix socket file under a state dir registered during the test (harness)
  jail     a uid marker in the session's jail dir (a VM's uid not given back)
  cgroup   a VM cgroup under the session's cgroup parent

Outside the session's own places, the session check also looks at the product's defaults
(the jail dir /run/lightvm-jail and the cgroup parent ``lightvm``): a uid marker whose
QEMU is gone, or an empty VM cgroup, that appeared there during the session came from a
lightvm process that lost the session's environment (a command run over SSH, say),
which the checks above cannot see: the run fails naming it (it is not removed: it may be
another session's). A VM running there (a developer's own) is not counted.

Anything there after the test that was not there before it is a leak: the test gets an
error at teardown naming each one, and the guard removes them (SIGKILL, unlink, ip link
/ netns del) so that one failure does not cascade. What a fixture wider than a test
creates is exempt from the per-test check (a module fixture may keep a resource over
several tests); the session check, which compares the end of the session with its
start, covers it, and fails the run (exit status 1) if anything is left.

The checks read /proc and a few directories: a few milliseconds per test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SESSION_ENV = "LIGHTVM_TEST_SESSION"
SHM_ENV = "LIGHTVM_SHM_DIR"  # lightvm.state.SHM_ENV (not imported: this plugin needs no lightvm)
SHM_ROOT = Path("/dev/shm")
JAIL_ENV = "LIGHTVM_JAIL_DIR"  # lightvm.jail.DIR_ENV
CGROUP_ENV = "LIGHTVM_CGROUP_PARENT"  # lightvm.cgroups.PARENT_ENV
CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_JAIL_DIR = Path("/run/lightvm-jail")  # lightvm.jail.DEFAULT_DIR
DEFAULT_CGROUP_PARENT = "lightvm"  # lightvm.cgroups' default parent
NETNS_DIR = Path("/run/netns")
GRACE_S = 3.0  # a process already killed may take a moment to exit
# Session-long helpers Python itself may start: not a test's leak.
INFRASTRUCTURE = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")


@dataclass(frozen=True)
class Leak:
    kind: str  # process | noxs | netns | link | socket
    key: str  # identity (a process: "pid:starttime")
    what: str = field(compare=False)  # for the error message

    def __str__(self) -> str:
        return self.what


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _jail_entry_why(name: str) -> str:
    """What a jail entry left at a test's end says: a uid not given back, or a claim in
    flight (``.new-PID-...``: lightvm.jail._claim) and who its claimer is, if alive."""
    if not name.startswith(".new-"):
        return "a VM's uid not given back"
    pid = name[len(".new-") :].split("-")[0]
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return f"a uid claim whose claimer, PID {pid}, is gone: the sweep should have removed it"
    return f"a uid claim in flight by the live PID {pid}: {command}"


def _holder_alive(marker: Path) -> bool:
    """Whether the process a jail uid marker names ("PID START VM_ID") still runs."""
    try:
        pid, start = (int(x) for x in marker.read_text().split()[:2])
        stat_ = _read(f"/proc/{pid}/stat")
    except (OSError, ValueError):
        return False
    rest = stat_[stat_.rfind(b")") + 2 :].split()
    return rest[0] not in (b"Z", b"X") and (not start or int(rest[19]) == start)


class LeakGuard:
    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id or uuid.uuid4().hex
        self.marker = f"{SESSION_ENV}={self.session_id}\0".encode()
        self.shm_dir = SHM_ROOT / f"lvtest-{self.session_id}"
        self.jail_dir = Path("/run") / f"lvtest-jail-{self.session_id}"
        self.cgroup_parent = f"lvtest-{self.session_id}"
        self.pid = os.getpid()
        self.shm_mine = f"lvtest-{self.pid}-"  # tests/guestlib.py's regions
        self.name_re = re.compile(rf"^lv[a-z]*-?{self.pid}-")
        self.saved_env: dict[str, str | None] = {}
        self.exempt: set[Leak] = set()
        self.at_start: set[Leak] = set()
        self.defaults_at_start: set[str] = set()
        self.before: dict[str, set[Leak]] = {}
        self.state_dirs_before: dict[str, int] = {}

    # -- the session --

    def start(self) -> None:
        for key, value in (
            (SESSION_ENV, self.session_id),
            (SHM_ENV, str(self.shm_dir)),
            (JAIL_ENV, str(self.jail_dir)),
            (CGROUP_ENV, self.cgroup_parent),
        ):
            self.saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self.shm_dir.mkdir()
        self.shm_dir.chmod(0o1777)  # as /dev/shm itself: a test that drops to nobody makes its NoXS files here too
        self.at_start = self.snapshot()
        self.defaults_at_start = self.in_defaults()

    def finish(self) -> str | None:
        """Remove the session's leaks, its NoXS dir, its variables; the report, if it leaked."""
        try:
            leaks = self.settle(lambda: self.snapshot() - self.at_start)
            failed = self.clean(leaks)
            shutil.rmtree(self.shm_dir, ignore_errors=True)
            shutil.rmtree(self.jail_dir, ignore_errors=True)
            for parent in self._cgroup_parents():
                with contextlib.suppress(OSError):
                    parent.rmdir()
        finally:
            for key, value in self.saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        stray = sorted(self.in_defaults() - self.defaults_at_start)
        out = [self.report(leaks, failed, "the session")] if leaks else []
        if stray:
            out.append(
                f"the session left {len(stray)} VM resource(s) in lightvm's default places, not its own"
                " (a lightvm process ran without the session's LIGHTVM_JAIL_DIR / LIGHTVM_CGROUP_PARENT):"
            )
            out += [f"  {path}" for path in stray]
        return "\n".join(out) or None

    # -- what exists now --

    def snapshot(self, state_dirs: list[Path] | None = None) -> set[Leak]:
        found = (
            self.processes()
            | self.noxs_files()
            | self.namespaces()
            | self.links()
            | self.jail_markers()
            | self.cgroups()
        )
        if state_dirs is None:
            state_dirs = _state_dirs()
        return found | self.sockets(state_dirs)

    def processes(self) -> set[Leak]:
        found = set()
        qemu_mark = str(self.shm_dir).encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            try:
                stat_ = _read(f"/proc/{entry.name}/stat")
                rest = stat_[stat_.rfind(b")") + 2 :].split()
                if rest[0] in (b"Z", b"X") or rest[1] == b"2":  # dead, or a kernel thread
                    continue
                # A child of pytest that never exec'd (a fork) shows pytest's first environment,
                # which had no marker yet: it is ours by its parent.
                ours = int(rest[1]) == self.pid or self.marker in _read(f"/proc/{entry.name}/environ")
                argv = _read(f"/proc/{entry.name}/cmdline")
                ours = ours or (qemu_mark in argv and b"qemu" in argv.split(b"\0", 1)[0])
            except (OSError, IndexError):
                continue
            if not ours or any(m in argv for m in INFRASTRUCTURE):
                continue
            comm = stat_[stat_.find(b"(") + 1 : stat_.rfind(b")")].decode(errors="replace")
            command = argv.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
            found.add(Leak("process", f"{entry.name}:{int(rest[19])}", f"process {entry.name} ({comm}): {command}"))
        return found

    def noxs_files(self) -> set[Leak]:
        found = set()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.shm_dir):
                path = self.shm_dir / name
                found.add(Leak("noxs", str(path), f"NoXS file {path}"))
        for name in os.listdir(SHM_ROOT):
            if name.startswith(self.shm_mine):
                found.add(Leak("noxs", str(SHM_ROOT / name), f"NoXS file {SHM_ROOT / name}"))
        return found

    def jail_markers(self) -> set[Leak]:
        found = set()
        for kind in ("uids", "vms"):  # a uid's marker, and its index entry by VM id
            with contextlib.suppress(OSError):
                for n in os.listdir(self.jail_dir / kind):
                    path = self.jail_dir / kind / n
                    found.add(Leak("jail", str(path), f"jail {kind} entry {n} ({_jail_entry_why(n)})"))
        return found

    def in_defaults(self) -> set[str]:
        """The uid markers and VM cgroups in lightvm's default jail dir and cgroup parent
        that no live VM holds (a VM running there, someone's own, is not a leak): a uid
        marker ("PID START VM_ID") whose QEMU is gone, an index entry whose marker is, a
        cgroup with no process."""
        found = set()
        with contextlib.suppress(OSError):
            for entry in os.scandir(DEFAULT_JAIL_DIR / "uids"):
                if not _holder_alive(Path(entry.path)):
                    found.add(entry.path)
        with contextlib.suppress(OSError):
            for entry in os.scandir(DEFAULT_JAIL_DIR / "vms"):
                if not _holder_alive(DEFAULT_JAIL_DIR / "uids" / os.path.basename(os.readlink(entry.path))):
                    found.add(entry.path)
        for hierarchy in ("memory", "pids", ""):
            with contextlib.suppress(OSError):
                for entry in os.scandir(CGROUP_ROOT / hierarchy / DEFAULT_CGROUP_PARENT):
                    with contextlib.suppress(OSError):
                        if entry.is_dir() and not _read(os.path.join(entry.path, "cgroup.procs")).strip():
                            found.add(entry.path)
        return found

    def _cgroup_parents(self) -> list[Path]:
        """The session's cgroup parent in each hierarchy lightvm may use (v1 memory and pids, v2)."""
        return [CGROUP_ROOT / h / self.cgroup_parent for h in ("memory", "pids", "")]

    def cgroups(self) -> set[Leak]:
        found = set()
        for parent in self._cgroup_parents():
            with contextlib.suppress(OSError):
                for entry in os.scandir(parent):
                    if entry.is_dir():
                        found.add(Leak("cgroup", entry.path, f"VM cgroup {entry.path}"))
        return found

    def namespaces(self) -> set[Leak]:
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return set()
        return {Leak("netns", n, f"network namespace {n}") for n in names if self.name_re.match(n)}

    def links(self) -> set[Leak]:
        names = os.listdir("/sys/class/net")  # pytest's own namespace: the host's, normally
        return {Leak("link", n, f"host network link {n}") for n in names if self.name_re.match(n)}

    def sockets(self, state_dirs: list[Path]) -> set[Leak]:
        found = set()
        for root in state_dirs:
            for folder, _, files in os.walk(root):
                for name in files:
                    path = os.path.join(folder, name)
                    with contextlib.suppress(OSError):
                        if stat.S_ISSOCK(os.lstat(path).st_mode):
                            found.add(Leak("socket", path, f"unix socket {path}"))
        return found

    # -- judging and cleaning --

    def settle(self, leaks: Callable[[], set[Leak]]) -> list[Leak]:
        """``leaks()``, asked again for up to GRACE_S while it finds a process (one killed
        by the test's teardown may still be exiting, and remove files as it goes)."""
        deadline = time.monotonic() + GRACE_S
        found = leaks()
        while any(leak.kind == "process" for leak in found) and time.monotonic() < deadline:
            time.sleep(0.05)
            found = leaks()
        order = ("process", "socket", "noxs", "jail", "cgroup", "link", "netns")
        return sorted(found, key=lambda leak: (order.index(leak.kind), leak.key))

    def clean(self, leaks: list[Leak]) -> list[str]:
        """Remove what leaked: processes first (they hold the rest), namespaces last.
        Returns what could not be removed."""
        failed = []
        for leak in leaks:
            try:
                if leak.kind == "process":
                    self._kill(leak)
                elif leak.kind == "cgroup":
                    os.rmdir(leak.key)
                elif leak.kind in ("noxs", "socket", "jail"):
                    path = Path(leak.key)
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                elif leak.kind == "link":
                    _ip("link", "del", leak.key)
                elif leak.kind == "netns":
                    _ip("netns", "del", leak.key)
            except Exception as exc:
                failed.append(f"{leak}: {exc}")
        return failed

    def _kill(self, leak: Leak) -> None:
        pid, start = (int(x) for x in leak.key.split(":"))

        def same() -> bool:  # the very process we saw (a pid can be reused)
            try:
                stat_ = _read(f"/proc/{pid}/stat")
            except OSError:
                return False
            rest = stat_[stat_.rfind(b")") + 2 :].split()
            return int(rest[19]) == start and rest[0] not in (b"Z", b"X")

        if not same():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while same() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our own child: reap it
            time.sleep(0.01)
        if same():
            raise RuntimeError("survived SIGKILL")

    def report(self, leaks: list[Leak], failed: list[str], where: str) -> str:
        lines = [f"{where} leaked {len(leaks)} resource(s) (removed by the leak guard):"]
        lines += [f"  {leak}" for leak in leaks]
        if failed:
            lines += ["could not remove:", *(f"  {f}" for f in failed)]
        return "\n".join(lines)

    # -- pytest hooks --

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        """A fixture wider than a test may hold a resource across tests: exempt what it made."""
        if fixturedef.scope == "function":
            return (yield)
        before = self.snapshot([])
        try:
            return (yield)
        finally:
            self.exempt |= self.snapshot([]) - before

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self.state_dirs_before[item.nodeid] = len(_state_dirs())
        self.before[item.nodeid] = self.snapshot([])
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            before = self.before.pop(item.nodeid, set())
            made = _state_dirs()[self.state_dirs_before.pop(item.nodeid, 0) :]
            leaks = self.settle(lambda: self.snapshot(made) - before - self.exempt)
            if leaks:
                failed = self.clean(leaks)
                pytest.fail(self.report(leaks, failed, item.nodeid), pytrace=False)


def _state_dirs() -> list[Path]:
    """harness.STATE_DIRS, when the harness is in use (a plugin needs no harness)."""
    import sys

    harness = sys.modules.get("harness")
    return list(getattr(harness, "STATE_DIRS", []))


def _ip(*argv: str) -> None:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip())


_KEY = pytest.StashKey[LeakGuard]()
_active: list[LeakGuard] = []  # one guard per process: an in-process pytester run gets none


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if _active:
        return
    guard = LeakGuard()
    guard.start()
    _active.append(guard)
    config.stash[_KEY] = guard
    config.pluginmanager.register(guard, "lightvm-leakguard")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    message = _finish(session.config)
    if message:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    _finish(config)  # a session that never finished (usage error, interrupted start)


def _finish(config: pytest.Config) -> str | None:
    guard = config.stash.get(_KEY, None)
    if guard is None or guard not in _active:
        return None
    _active.remove(guard)
    return guard.finish()

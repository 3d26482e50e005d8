"""The test harness shared by every test folder. A plain module, so that tests import it by
name (`from harness import LightVM`); the conftest.py files only hold the fixtures. (A test
that imports `conftest` gets whichever conftest.py pytest loaded under that name.)

- :class:`LightVM`: the one `lightvm` CLI runner, bound to one state dir, with the one
  leftover check (QEMU of the state dir, NoXS files, VM and pool folders, sockets, the
  lightvmd pid file); tests/functional/daemonlib.py's Lightvmd runs its CLI through it;
- :class:`Namespace`: the one network-namespace helper (the ``nsname``/``netns``
  fixtures, tests/functional/nettools.py's Netns and the migration tests' hosts use it);
- :func:`unique_name`: names of things a test makes on the host (namespaces, links),
  carrying this pytest's pid, so that two sessions never collide and the leak guard
  (tests/leakguard.py) knows which are this session's;
- :func:`qemu_pids_mentioning`: a QEMU process finder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lightvm.state import noxs_file
from lightvm.util import proc_alive, wait_until

CLI_TIMEOUT = 120.0
IP_TIMEOUT = 30.0

# State dirs the tests made, in order: the leak guard looks for unix sockets left in the
# ones made during a test (tests/leakguard.py).
STATE_DIRS: list[Path] = []

_names = itertools.count()


def unique_name(prefix: str) -> str:
    """``<prefix><pid>-<n>``: unique in this session, never another session's (their pid
    differs). The leak guard claims a namespace or host link as this session's by it,
    so every test-made name comes from here. Keep ``prefix`` short for links (a link
    name has at most 15 characters): ``lvt`` gives ``lvt1234567-12``."""
    return f"{prefix}{os.getpid()}-{next(_names)}"


def guard_env() -> str:
    """``K=V ...`` of the leak guard's variables (its session marker, the session's NoXS
    dir and jail dir), for a command that does not inherit this environment: one run over SSH gets
    ``env <guard_env()> lightvm ...``, so that what it starts is this session's too."""
    names = ("LIGHTVM_TEST_SESSION", "LIGHTVM_SHM_DIR", "LIGHTVM_JAIL_DIR", "LIGHTVM_CGROUP_PARENT")
    return " ".join(f"{n}={shlex.quote(os.environ[n])}" for n in names if n in os.environ)


def register_state_dir(path: Path) -> Path:
    """Tell the leak guard about a state dir of the running test (LightVM does it)."""
    STATE_DIRS.append(path)
    return path


def qemu_pids_mentioning(text: str, live_only: bool = False) -> list[int]:
    """Processes whose command line starts with a QEMU binary and mentions ``text``.

    ``live_only`` leaves out zombies (dead, not yet reaped by their parent): the
    daemon tests use it, since lightvmd reaps its QEMU children asynchronously.
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace")
            if live_only:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue
        except (OSError, IndexError):
            continue
        if text in argv and "qemu" in argv.split("\0", 1)[0]:
            pids.append(int(entry.name))
    return pids


def run_ip(argv: list[str], timeout: float = IP_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGV...`` (iproute2), bounded; raises with its stderr if ``check`` and it fails."""
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Namespace:
    """A fresh network namespace (its loopback up), named by :func:`unique_name`;
    :meth:`close` deletes it, and with it every link in it. Processes started in it are
    the caller's to stop first (a process left running is the leak guard's to report).

    ``with Namespace() as ns:`` or ``ns = Namespace().open()`` ... ``ns.close()``.
    """

    def __init__(self, prefix: str = "lvtest-", name: str | None = None) -> None:
        self.name = name or unique_name(prefix)
        self.opened = False

    def open(self) -> Namespace:
        run_ip(["netns", "add", self.name])
        self.opened = True
        try:
            run_ip(["-n", self.name, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Namespace:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.opened:
            run_ip(["netns", "del", self.name], check=False)
            self.opened = False

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec NAME ...``)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(
        self, argv: list[str], timeout: float = IP_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Result:
    """What one CLI run gave; reads like a subprocess.CompletedProcess too."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def returncode(self) -> int:
        return self.code

    @property
    def stdout(self) -> str:
        return self.out

    @property
    def stderr(self) -> str:
        return self.err


class LightVM:
    """Runs the `lightvm` CLI (as a subprocess, like a user) against one state dir."""

    def __init__(self, state_dir: Path, cache_dir: Path) -> None:
        self.state_dir = register_state_dir(state_dir)
        # os.environ carries the leak guard's session marker and LIGHTVM_SHM_DIR: keep them.
        self.env = dict(os.environ, LIGHTVM_CACHE_DIR=str(cache_dir), PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("LIGHTVM_STATE_DIR", None)
        self.argv0 = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(state_dir)]
        self.seen_ids: set[str] = set()

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Unbounded: the caller waits with ``communicate(timeout=...)`` and kills on timeout."""
        return subprocess.Popen(
            [*self.argv0, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        proc = subprocess.run(
            [*self.argv0, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        self.remember_ids()
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        result = self.run(*args, timeout=timeout)
        assert result.code == 0, f"lightvm {' '.join(args)} failed ({result.code}): {result.err}{result.out}"
        return result

    def create(self, config: Path | str, *args: str) -> list[dict[str, Any]]:
        """`create --accel tcg --json`; returns one dict per VM."""
        result = self.ok("create", str(config), "--accel", "tcg", "--json", *args)
        return [json.loads(line) for line in result.out.splitlines() if line.strip()]

    def list(self) -> list[dict[str, Any]]:
        vms: list[dict[str, Any]] = self.ok("list", "--json").json()
        self.seen_ids.update(vm["id"] for vm in vms if vm.get("id"))
        return vms

    def status(self) -> dict[str, str]:
        return {vm["name"]: vm["status"] for vm in self.list()}

    def vm_dirs(self) -> list[Path]:
        root = self.state_dir / "vms"
        return sorted(root.iterdir()) if root.is_dir() else []

    def pool_dirs(self) -> list[Path]:
        """lightvmd's prepared shells (``pool/ID``)."""
        root = self.state_dir / "pool"
        return sorted(root.iterdir()) if root.is_dir() else []

    def remember_ids(self) -> None:
        """Note the id (hence the NoXS file) of every VM and shell folder there is now."""
        for folder in self.vm_dirs() + self.pool_dirs():
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.seen_ids.add(json.loads((folder / "vm.json").read_text())["id"])

    def consoles(self) -> str:
        parts = []
        for folder in self.vm_dirs():
            for log in ("console.log", "qemu.log"):
                path = folder / log
                if path.exists():
                    parts.append(f"--- {folder.name}/{log}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def qemu_pids(self) -> list[int]:
        """Live QEMU processes of this state dir (zombies are dead already: not counted)."""
        return qemu_pids_mentioning(str(self.state_dir), live_only=True)

    def leftovers(self) -> list[str]:
        """Everything of this state dir that should not exist once all VMs are destroyed
        (and lightvmd, if one ran on it, stopped)."""
        found = [f"QEMU process {pid}" for pid in self.qemu_pids()]
        found += [f"NoXS file {noxs_file(i)}" for i in sorted(self.seen_ids) if noxs_file(i).exists()]
        found += [f"VM folder {p}" for p in self.vm_dirs()]
        found += [f"pool folder {p}" for p in self.pool_dirs()]
        if self.state_dir.exists():
            found += [f"socket {p}" for p in self.state_dir.rglob("*.sock")]
            found += [f"pid file {p}" for p in self.state_dir.glob("lightvmd.pid")]
        return found


def _kill(pid: int, start: int | None = None) -> bool:
    """SIGKILL ``pid`` and wait (10 s) until it is gone; False if it survived."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return bool(wait_until(lambda: not proc_alive(pid, start), timeout=10.0))


def teardown(runner: LightVM, consoles_of: str | None = None) -> None:
    """Destroy everything of ``runner``'s state dir, whatever happened, then check (the
    ``lightvm`` and ``make_lightvm`` fixtures' teardown).

    Each step runs even when an earlier one failed or timed out (a timeout of the test
    itself included); what destroy could not remove is killed or unlinked; only then
    does it assert: no leftovers, and no step that failed. ``consoles_of``: the name of
    a failed test, whose VM consoles are printed first."""
    from lightvm.daemon.server import read_pid

    problems: list[str] = []

    def step(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except (Exception, pytest.fail.Exception) as exc:  # a test timeout too: the other steps still run
            problems.append(f"{what}: {exc!r}")

    step("remember VM ids", runner.remember_ids)
    if consoles_of is not None:
        step("print consoles", lambda: print(f"\nconsoles of {consoles_of}:\n{runner.consoles()}"))

    def stop_daemon() -> None:  # a `lightvm daemon start` the test left running
        daemon = read_pid(runner.state_dir)
        if daemon is None:
            return
        problems.append(f"a lightvmd (pid {daemon[0]}) was left running")
        with contextlib.suppress(subprocess.TimeoutExpired):
            runner.run("daemon", "stop", timeout=60)
        if proc_alive(*daemon) and not _kill(*daemon):
            problems.append(f"lightvmd {daemon[0]} survived SIGKILL")

    step("stop lightvmd", stop_daemon)
    if runner.vm_dirs():
        step("destroy --all", lambda: runner.run("destroy", "--all", timeout=300))
    leftovers: list[str] = []
    step("look for leftovers", lambda: leftovers.extend(runner.leftovers()))

    def kill_qemu() -> None:  # never leave QEMU behind, even on failure
        for pid in runner.qemu_pids():
            if not _kill(pid):
                problems.append(f"QEMU {pid} survived SIGKILL")

    step("kill QEMU", kill_qemu)
    for vm_id in sorted(runner.seen_ids):
        step(f"unlink the NoXS file of {vm_id}", lambda i=vm_id: noxs_file(i).unlink(missing_ok=True))
    assert not problems, f"teardown of {runner.state_dir}: {problems}"
    assert not leftovers, f"leftovers after destroying every VM: {leftovers}"

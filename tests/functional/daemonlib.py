"""A lightvmd per test: started in the foreground on a private state dir, killed at teardown.

``Lightvmd.start(...)`` runs ``lightvm daemon run`` as a child and waits until it
answers ``ping``; ``stop()`` sends SIGTERM (``kill9()`` the hard way). The fixture
stops the daemon (SIGKILL if it does not stop, and any detached one the test left), destroys
every VM, kills any QEMU of the state dir, and only then asserts that no
QEMU of the state dir, no NoXS file of a VM or shell, no pool folder and no socket is
left, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LightVM, Result, qemu_pids_mentioning

from lightvm.daemon import api
from lightvm.daemon.server import read_pid
from lightvm.state import noxs_file
from lightvm.util import proc_alive, wait_until

REPO = Path(__file__).resolve().parents[2]
NOOP = REPO / "examples" / "noop.toml"


class Lightvmd:
    def __init__(self, state_dir: Path, cache_dir: Path) -> None:
        self.lv = LightVM(state_dir, cache_dir)  # the one CLI runner: environment, ids, leftovers
        self.lv.env.pop("LIGHTVM_NO_DAEMON", None)
        self.state_dir = state_dir
        self.env = self.lv.env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / "lightvmd-test.log"
        self.seen_ids = self.lv.seen_ids

    # -- the daemon --

    def start(self, *args: str, pool: Path | None = NOOP, size: int = 2) -> None:
        argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state_dir), "daemon", "run"]
        argv += ["--accel", "tcg"]
        if pool is not None:
            argv += ["--pool", str(pool), "--pool-size", str(size)]
        argv += list(args)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"lightvmd exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            with contextlib.suppress(api.ApiError):
                return bool(self.call("ping")["pid"] == self.proc.pid)
            return False

        assert wait_until(up, timeout=30.0, interval=0.01, max_interval=0.1), "lightvmd did not answer"

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10.0)
        self.proc = None

    # -- talking to it --

    def client(self) -> api.Client:
        return api.Client.connect(self.state_dir, timeout=5.0)

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        with self.client() as c:
            return c.call(op, args, timeout=timeout)

    def raw(self, data: bytes, timeout: float = 10.0) -> dict[str, Any]:
        """Send raw bytes on a fresh connection; the first response line, parsed."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(api.socket_path(self.state_dir)))
            with contextlib.suppress(OSError):  # the daemon may close before taking it all
                s.sendall(data)
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
        return reply

    def create(self, name: str, config: Path = NOOP, **args: Any) -> dict[str, Any]:
        (vm,) = self.call("create", {"config": str(config), "name": name, "accel": "tcg", **args})
        self.seen_ids.add(vm["id"])
        return vm

    def pool_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("pool")
        return stats

    def shell_records(self) -> list[dict[str, Any]]:
        out = []
        root = self.state_dir / "pool"
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads((folder / "vm.json").read_text()))
        self.seen_ids.update(r["id"] for r in out)
        return out

    def cli(self, *args: str, timeout: float = 120.0) -> Result:
        return self.lv.run(*args, timeout=timeout)

    # -- cleanliness --

    def leftovers(self) -> list[str]:
        return self.lv.leftovers()


@pytest.fixture
def lightvmd(request: pytest.FixtureRequest, tmp_path: Path, cache_dir: Path, images: Path) -> Iterator[Lightvmd]:
    d = Lightvmd(tmp_path / "state", cache_dir)
    try:
        yield d
    finally:
        _teardown(request, d)


def _teardown(request: pytest.FixtureRequest, d: Lightvmd) -> None:
    """Clean up everything first (each step with a kill fallback, none skipped by an error
    in another), then assert: a failing check can no longer leave a daemon or a QEMU behind."""
    problems: list[str] = []
    with contextlib.suppress(Exception):  # only to learn the shells' ids: cleanup needs none of it
        d.shell_records()
    vms = d.state_dir / "vms"
    for folder in vms.iterdir() if vms.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            d.seen_ids.add(json.loads((folder / "vm.json").read_text())["id"])
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed and d.log.exists():
        print(f"\nlightvmd log:\n{d.log.read_text()[-4000:]}")
    daemons: list[tuple[int, int | None]] = []
    if d.proc is not None:
        pid = d.proc.pid
        try:
            d.stop()
        except Exception as exc:  # hung (TimeoutExpired) or anything else: the hard way
            problems.append(f"lightvmd {pid} did not stop on SIGTERM: {exc!r}")
            with contextlib.suppress(Exception):
                d.kill9()
        daemons.append((pid, None))
    detached = read_pid(d.state_dir)  # a `lightvm daemon start` the test left running
    if detached is not None:
        problems.append(f"a detached lightvmd (pid {detached[0]}) was left running")
        daemons.append(detached)
    for pid, start in daemons:
        if proc_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not wait_until(lambda p=pid, s=start: not proc_alive(p, s), timeout=10):
                problems.append(f"lightvmd {pid} survived SIGKILL")
    env = dict(d.env, LIGHTVM_NO_DAEMON="1")
    try:
        subprocess.run(
            [sys.executable, "-m", "lightvm.cli", "--state-dir", str(d.state_dir), "destroy", "--all"],
            env=env, capture_output=True, timeout=300, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        problems.append("destroy --all timed out")
    leftovers = d.leftovers()
    for pid in qemu_pids_mentioning(str(d.state_dir), live_only=True):  # never leave QEMU behind, even on failure
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for i in d.seen_ids:
        noxs_file(i).unlink(missing_ok=True)
    assert not problems, problems
    assert not leftovers, f"leftovers after stopping lightvmd and destroying every VM: {leftovers}"


def wait_pool(d: Lightvmd, ready: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the (only) flavour has ``ready`` shells; the stats."""

    def full() -> dict[str, Any] | None:
        stats = d.pool_stats()
        return stats if stats["flavours"][0]["ready"] == ready and not stats["flavours"][0]["preparing"] else None

    stats = wait_until(full, timeout=timeout, interval=0.01, max_interval=0.2)
    assert stats is not None, f"pool never reached {ready} ready shells: {d.pool_stats()}"
    return stats


__all__ = ["NOOP", "Lightvmd", "lightvmd", "wait_pool"]

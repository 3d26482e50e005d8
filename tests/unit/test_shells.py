"""The generic shell pool without QEMU: take/done and the busy rule, refill within its
flavour's choice, retry after a failed prepare, discards on stop and on a forgotten flavour."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lightvm.daemon import shells
from lightvm.daemon.shells import ShellPool
from lightvm.state import StateDir


@dataclass(frozen=True)
class Kind:
    tag: str

    def label(self) -> str:
        return self.tag

    def cost_mib(self) -> int:
        return 10


@dataclass
class FakeMachine:
    alive: bool = True

    def is_running(self) -> bool:
        return self.alive


@dataclass
class FakeRecord:
    pid: int | None


@dataclass
class FakeShell:
    id: str
    machine: FakeMachine = field(default_factory=FakeMachine)
    record: FakeRecord = field(default_factory=lambda: FakeRecord(1234))
    discarded: threading.Event = field(default_factory=threading.Event)

    def discard(self) -> None:
        self.discarded.set()


class FakePool(ShellPool[Kind, FakeShell]):
    """Fills each known kind to ``size``; ``fail`` makes the next prepares raise."""

    def __init__(self, root: Path, kinds: list[Kind], size: int = 1) -> None:
        self.logs: list[str] = []
        super().__init__(StateDir(root), size, self.logs.append)
        self._shells = {k: deque() for k in kinds}
        self.fail = 0
        self.forget_while_preparing = False
        self.prepared: list[FakeShell] = []
        self.backed_off = 0

    def _next(self) -> Kind | None:
        return next((k for k in self._shells if self._have(k) < self.size), None)

    def _prepare(self, flavour: Kind) -> FakeShell:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("no QEMU")
        if self.forget_while_preparing:
            with self._cond:
                del self._shells[flavour]
        shell = FakeShell(f"{flavour.tag}{len(self.prepared)}")
        self.prepared.append(shell)
        return shell

    def _back_off(self, flavour: Kind) -> None:
        self.backed_off += 1
        super()._back_off(flavour)

    def ready(self, kind: Kind) -> int:
        with self._cond:
            return len(self._shells[kind])


def wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_take_removes_a_shell_marks_busy_and_the_refill_waits_for_done(tmp_path: Path) -> None:
    a = Kind("a")
    pool = FakePool(tmp_path, [a], size=1)
    pool.start()
    try:
        assert wait(lambda: pool.ready(a) == 1)
        shell = pool._take(a)
        assert shell is not None and pool.stats_taken == 1
        time.sleep(0.3)
        assert pool.ready(a) == 0 and len(pool.prepared) == 1  # busy: no refill meanwhile
        assert pool._take(a) is None and pool.stats_missed == 1
        pool.done()
        assert wait(lambda: pool.ready(a) == 1)
        assert pool.pids() == [1234]
    finally:
        pool.stop()
    assert all(s.discarded.is_set() for s in pool.prepared[1:])
    assert pool.ready(a) == 0


def test_a_dead_shell_is_discarded_not_taken(tmp_path: Path) -> None:
    a = Kind("a")
    pool = FakePool(tmp_path, [a], size=1)
    pool.start()
    try:
        assert wait(lambda: pool.ready(a) == 1)
        pool.prepared[0].machine.alive = False
        assert pool._take(a) is None
        assert pool.prepared[0].discarded.wait(5.0)
        assert pool.stats_missed == 1 and pool.stats_taken == 0
        assert any("died while waiting" in line for line in pool.logs)
    finally:
        pool.stop()


def test_a_failed_prepare_is_logged_counted_and_retried(tmp_path: Path) -> None:
    a = Kind("a")
    pool = FakePool(tmp_path, [a], size=1)
    pool.fail = 1
    pool.start()
    try:
        assert wait(lambda: pool.ready(a) == 1)  # after RETRY_AFTER_FAILURE
        assert pool.stats_failed == 1 and pool.stats_prepared == 1 and pool.backed_off == 1
        assert pool.last_error == "a: no QEMU"
        assert pool.logs == ["pool: cannot prepare a shell: a: no QEMU"]
    finally:
        pool.stop()


def test_stop_interrupts_the_back_off_and_discards_the_ready_shells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shells, "RETRY_AFTER_FAILURE", 3600.0)  # far longer than any test
    a, b, c = Kind("a"), Kind("b"), Kind("c")
    pool = FakePool(tmp_path, [a, b], size=2)
    pool.start()
    assert wait(lambda: pool.ready(a) == 2 and pool.ready(b) == 2)
    assert pool._committed_mib() == 40 and pool._count() == 4
    pool.fail = 1
    with pool._cond:
        pool._shells[c] = deque()  # a new flavour whose first prepare fails: the thread backs off
        pool._cond.notify_all()
    assert wait(lambda: pool.backed_off == 1)
    # stop() must wake the refill thread out of its back-off: one that waited it out
    # would still be asleep when this join gives up.
    stopper = threading.Thread(target=pool.stop)
    stopper.start()
    stopper.join(timeout=60)
    assert not stopper.is_alive()
    assert all(s.discarded.is_set() for s in pool.prepared)
    assert pool._threads and not any(t.is_alive() for t in pool._threads)


def test_a_shell_of_a_flavour_forgotten_while_it_was_prepared_is_discarded(tmp_path: Path) -> None:
    a = Kind("a")
    pool = FakePool(tmp_path, [a], size=1)
    pool.forget_while_preparing = True
    pool.start()
    try:
        assert wait(lambda: bool(pool.prepared) and pool.prepared[0].discarded.is_set())
        assert pool.stats_prepared == 0 and a not in pool._preparing
    finally:
        pool.stop()

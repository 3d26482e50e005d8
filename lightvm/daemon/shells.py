"""One refilling pool of prepared VM shells, whatever the shells are for.

lightvmd keeps two kinds of shells: create shells (:class:`lightvm.daemon.pool.Pool`)
and ``-incoming defer`` shells for restores and incoming migrations
(:class:`lightvm.daemon.restore_pool.IncomingPool`). Both need the same life cycle,
and its rules are easy to get subtly wrong twice, so they live here once:

* a take removes a live shell from its flavour's queue (a dead one is discarded) and
  marks the pool busy until :meth:`ShellPool.done`: the refill never spawns a QEMU while
  a take is in flight (its start-up would steal the CPU the booting guest needs);
* background refill workers (one by default; the create pool runs one per core) each
  prepare one shell at a time, never holding the pool lock while they spawn, so a take
  waits on nothing but its own guest (or, with ``wait_s``, on a shell already being
  prepared when none is ready);
* a pool may give back surplus shells (:meth:`ShellPool._surplus`): the workers destroy
  them outside the lock;
* a failed prepare is retried after :data:`RETRY_AFTER_FAILURE` seconds, and never
  kills the daemon;
* stop discards every shell (QEMU, NoXS file, folder).

A flavour says which flavour to fill next (within its bounds), how to prepare one shell
and what a shell of a flavour costs; the pool does the rest.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from lightvm.machine import Machine
from lightvm.state import StateDir, VMRecord

POOL_DIR = "pool"  # STATE/pool/ID/: every prepared shell, of either kind
RETRY_AFTER_FAILURE = 2.0  # seconds before a flavour whose prepare failed is tried again
SHELL_OVERHEAD_MIB = 16  # host memory of one idle QEMU beyond guest RAM (docs/qemu-notes.md: ~16 MiB)


class PoolFlavour(Protocol):
    """What a pool needs of a flavour (hashable: the pool keys its queues by it)."""

    def label(self) -> str: ...

    def cost_mib(self) -> int: ...


class PoolShell(Protocol):
    """What a pool needs of a prepared shell."""

    @property
    def id(self) -> str: ...

    @property
    def machine(self) -> Machine: ...

    @property
    def record(self) -> VMRecord: ...

    def discard(self) -> None: ...


F = TypeVar("F", bound=PoolFlavour)
S = TypeVar("S", bound=PoolShell)


class ShellPool(Generic[F, S]):
    """Prepared shells per flavour in ``STATE/pool``, refilled by one background thread.

    A flavour of pool subclasses it and provides :meth:`_next` (which flavour to fill
    now, or None) and :meth:`_prepare` (one shell of a flavour); it may override
    :meth:`_prepare_failed`, :meth:`_back_off` and :meth:`_refills`.
    """

    name = "pool"  # log prefix
    thread_name = "pool-refill"

    def __init__(self, state: StateDir, size: int, log: Callable[[str], None]) -> None:
        self.state = state
        self.root = state.root / POOL_DIR
        self.size = max(0, size)
        self.log = log
        self._shells: dict[F, deque[S]] = {}
        self._preparing: dict[F, int] = {}
        self._waiting: dict[F, int] = {}  # takes waiting for a shell being prepared
        self._cond = threading.Condition()
        self._busy = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.stats_taken = 0
        self.stats_missed = 0
        self.stats_prepared = 0
        self.stats_failed = 0
        self.last_error = ""

    # -- what a flavour of pool provides --

    def _next(self) -> F | None:
        """The flavour to prepare a shell of now, or None (called under the pool lock)."""
        raise NotImplementedError

    def _prepare(self, flavour: F) -> S:
        """Spawn one shell of ``flavour`` in :attr:`root` (no lock held).

        :raise Exception: it could not; nothing is left behind.
        """
        raise NotImplementedError

    def _prepare_failed(self, flavour: F, exc: Exception) -> None:
        """Say why a shell of ``flavour`` could not be prepared."""
        self.last_error = f"{flavour.label()}: {exc}"
        self.log(f"{self.name}: cannot prepare a shell: {self.last_error}")

    def _back_off(self, flavour: F) -> None:
        """After a failed prepare: wait :data:`RETRY_AFTER_FAILURE` s (or until stop)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, RETRY_AFTER_FAILURE)

    def _refills(self) -> bool:
        """Whether a refill thread is worth starting."""
        return bool(self.size)

    def _workers(self) -> int:
        """Refill threads: prepares that may run at once."""
        return 1

    def _took(self, flavour: F, hit: bool, waited: bool) -> None:
        """A take of ``flavour`` got a shell (``hit``; after waiting for one: ``waited``) or
        none (under the pool lock)."""

    def _prepared(self, flavour: F, seconds: float) -> None:
        """A shell of ``flavour`` took ``seconds`` to prepare (under the pool lock)."""

    def _surplus(self) -> list[S]:
        """Shells to destroy now, removed from their queues (under the pool lock)."""
        return []

    # -- lifetime --

    def start(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._refills():
            for i in range(self._workers()):
                name = self.thread_name if i == 0 else f"{self.thread_name}-{i}"
                thread = threading.Thread(target=self._refill_loop, name=name, daemon=True)
                self._threads.append(thread)
                thread.start()

    def stop(self) -> None:
        """Stop refilling and discard every prepared shell (their QEMUs, NoXS files, folders)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        end = time.monotonic() + 30.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        with self._cond:
            shells = [s for q in self._shells.values() for s in q]
            for q in self._shells.values():
                q.clear()
        for shell in shells:
            shell.discard()

    # -- take side --

    def _take(self, flavour: F, wait_s: float = 0.0) -> S | None:
        """A live shell of ``flavour`` (removed from the pool), or None. With a shell, the
        pool is busy (no refill spawns) until :meth:`done`.

        With none ready but one being prepared that no other take waits for, wait up to
        ``wait_s`` for it: that shell's QEMU is already up and booting, so it arrives
        sooner than a cold create would, and a cold create would be one more QEMU start
        competing for the CPU the refills need (docs/lightvmd.md, "Adaptive pool").
        """
        end = None
        with self._cond:
            queue = self._shells.get(flavour)
            waited = False
            while True:
                while queue:
                    shell = queue.popleft()
                    if shell.machine.is_running():
                        self.stats_taken += 1
                        self._busy += 1  # in the same critical section: the refill cannot slip in
                        self._took(flavour, True, waited)
                        return shell
                    self.log(f"{self.name}: shell {shell.id} died while waiting; discarded")
                    threading.Thread(target=shell.discard, daemon=True).start()
                if queue is None or wait_s <= 0 or self._stopping:
                    break
                if self._preparing.get(flavour, 0) <= self._waiting.get(flavour, 0):
                    break  # every shell on its way is someone else's
                end = end if end is not None else time.monotonic() + wait_s
                left = end - time.monotonic()
                if left <= 0:
                    break
                waited = True
                self._waiting[flavour] = self._waiting.get(flavour, 0) + 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting[flavour] -= 1
            self.stats_missed += 1
            self._took(flavour, False, False)
            self._cond.notify_all()
        return None

    def done(self) -> None:
        """A take is over (whatever happened): the refill may run again."""
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def pids(self) -> list[int]:
        """The QEMU PIDs of the prepared shells."""
        with self._cond:
            return [s.record.pid for q in self._shells.values() for s in q if s.record.pid]

    # -- bounds (under the pool lock) --

    def _have(self, flavour: F) -> int:
        return len(self._shells.get(flavour, ())) + self._preparing.get(flavour, 0)

    def _count(self) -> int:
        return sum(len(q) for q in self._shells.values()) + sum(self._preparing.values())

    def _committed_mib(self) -> int:
        return sum(f.cost_mib() * self._have(f) for f in self._shells)

    # -- refill side --

    def _refill_loop(self) -> None:
        """One refill worker (there are :meth:`_workers` of them): prepare what
        :meth:`_next` says, one shell at a time; destroy what :meth:`_surplus` says."""
        while True:
            surplus: list[S] = []
            with self._cond:
                while not self._stopping and (self._busy or self._next() is None):
                    surplus = self._surplus()
                    if surplus:
                        break
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                flavour = None if surplus else self._next()
                if flavour is not None:
                    self._preparing[flavour] = self._preparing.get(flavour, 0) + 1
            for old in surplus:  # outside the lock: a kill and a folder removal each
                old.discard()
            if flavour is None:
                continue
            shell: S | None = None
            started = time.monotonic()
            try:
                shell = self._prepare(flavour)
            except Exception as exc:  # the daemon must outlive a broken flavour
                self._prepare_failed(flavour, exc)
            discard = None
            with self._cond:
                left = max(0, self._preparing.get(flavour, 1) - 1)
                if flavour in self._shells:
                    self._preparing[flavour] = left
                else:  # forgotten meanwhile
                    self._preparing.pop(flavour, None)
                if shell is None:
                    self.stats_failed += 1
                elif self._stopping or flavour not in self._shells:
                    discard = shell
                else:
                    self._shells[flavour].append(shell)
                    self.stats_prepared += 1
                    self._prepared(flavour, time.monotonic() - started)
                self._cond.notify_all()
            if discard is not None:
                discard.discard()
            if shell is None:
                self._back_off(flavour)


__all__ = ["POOL_DIR", "RETRY_AFTER_FAILURE", "SHELL_OVERHEAD_MIB", "PoolFlavour", "PoolShell", "ShellPool"]

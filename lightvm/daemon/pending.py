"""Bookkeeping a request finishes after its reply, and the operations that wait for it.

A pooled create answers at READY and completes its VM's record right after
(lightvm/daemon/execute.py); a template restore likewise (lightvm/daemon/templates.py);
a migration's source tears its VM down after answering. Until then, ``list``, ``info``,
``destroy`` and the others of that name wait (bounded), so a client that acts on the
answer at once never sees the half-written state.
"""

from __future__ import annotations

import threading

WAIT_S = 10.0  # a wait is bounded: bookkeeping that never ends must not hang the daemon


class Pending:
    """Names with bookkeeping announced (:meth:`begin`) and not yet done (:meth:`settled`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def begin(self, name: str) -> None:
        with self._lock:
            self._events[name] = threading.Event()

    def settled(self, name: str) -> None:
        """The bookkeeping :meth:`begin` announced for ``name`` is done."""
        with self._lock:
            event = self._events.pop(name, None)
        if event is not None:
            event.set()

    def wait(self, names: list[str] | None = None) -> None:
        """Wait (bounded) until the named VMs' (or all) bookkeeping is done."""
        with self._lock:
            events = [e for n, e in self._events.items() if names is None or n in names]
        for event in events:
            event.wait(WAIT_S)


__all__ = ["Pending"]

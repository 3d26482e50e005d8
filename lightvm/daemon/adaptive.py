"""How many shells of each flavour lightvmd keeps, and how many it prepares at once.

A fixed pool is either too small for a burst (a pool of 4 served 3,435 of 10,000
back-to-back creates through the cold path) or idle memory most of the day. This policy
sizes it from what it sees, per flavour:

* **demand**: creates of that flavour per second over the last :data:`RATE_WINDOW_S`
  (hits and misses alike: a miss is demand the pool did not meet);
* **refill latency**: how long one prepare takes, wall clock, as an exponentially
  weighted average of the measured ones (a QEMU spawn plus the guest's boot to its wait
  point: ~15-20 ms of CPU under TCG, much longer in wall time while creates compete);
* **need** = ceil(demand x refill latency x :data:`HEADROOM`): the shells a steady
  demand empties while their replacements are being prepared, doubled so that a rate
  that keeps rising or a slow prepare does not empty the pool;
* **target** = the highest need seen in the last ``idle_s`` seconds, never below the
  floor (``--pool-size``) nor above the maximum (``--pool-max``). Taking the recent peak
  instead of the current need keeps the pool from shrinking between two waves of a
  bursty load; once ``idle_s`` seconds pass without the need reaching that peak again
  and without a create finding the pool empty, the target falls back to the current
  need (the floor once creates stop) and the surplus shells are destroyed, oldest first
  (:meth:`AdaptivePolicy.surplus`).

Refills: up to ``parallel`` prepares at a time across flavours (default: the host's
cores; a prepare is mostly CPU, so more than the cores only slows each of them), each
going to the flavour furthest below its target, and only while the pool's memory
(worst case per shell: :meth:`lightvm.daemon.flavour.Flavour.cost_mib`) stays within the
budget and its shell count within the maximum (:meth:`AdaptivePolicy.plan`).

The policy is pure bookkeeping over a clock it is given: no threads, no QEMU. The pool
(:class:`lightvm.daemon.pool.Pool`) calls it under its lock; tests/unit/test_adaptive.py
drives it with a fake clock and fake spawns. Why these parameters: docs/lightvmd.md
("Adaptive pool").
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

RATE_WINDOW_S = 1.0  # demand is measured over the last second: a burst is seen within it
HEADROOM = 2.0  # need = demand x refill latency x HEADROOM
FIRST_REFILL_S = 0.05  # refill latency assumed before a prepare was measured (TCG, loaded host)
LATENCY_WEIGHT = 0.2  # weight of the newest prepare in the latency's moving average
DEFAULT_IDLE_S = 30.0  # the target falls back after this long below its peak (--pool-idle)

K = TypeVar("K", bound=Hashable)


def default_parallel() -> int:
    """Prepares at once by default: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class Demand:
    """What the policy knows of one flavour."""

    takes: deque[float] = field(default_factory=deque)  # times of takes in the rate window
    refills: deque[float] = field(default_factory=deque)  # times prepares ended, same window
    refill_s: float = FIRST_REFILL_S
    refills_measured: int = 0
    peak: int = 0
    peak_at: float = 0.0
    starved_at: float = -math.inf  # the last take that found no ready shell (waited or missed)
    hits: int = 0  # a ready shell was there
    waited: int = 0  # served by a shell that was being prepared when the create came
    misses: int = 0  # cold path
    shrunk: int = 0  # shells destroyed as surplus


class AdaptivePolicy(Generic[K]):
    """Targets per flavour and the refills to start now (see the module docstring).

    :param floor: shells of each flavour kept however idle (``--pool-size``); the start target.
    :param maximum: shells of one flavour at most, and of all flavours together (``--pool-max``).
    :param idle_s: how long the target keeps its peak (``--pool-idle``).
    :param parallel: prepares at once at most, all flavours together (``--pool-parallel``).
    :param clock: monotonic seconds (a fake one in tests).
    """

    def __init__(
        self,
        floor: int,
        maximum: int,
        idle_s: float = DEFAULT_IDLE_S,
        parallel: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        headroom: float = HEADROOM,
        window_s: float = RATE_WINDOW_S,
    ) -> None:
        self.floor = max(0, floor)
        self.maximum = max(0, maximum)
        self.idle_s = max(0.0, idle_s)
        self.parallel = max(1, parallel if parallel is not None else default_parallel())
        self.clock = clock
        self.headroom = headroom
        self.window_s = window_s
        self._flavours: dict[K, Demand] = {}

    def _of(self, key: K) -> Demand:
        demand = self._flavours.get(key)
        if demand is None:
            demand = self._flavours[key] = Demand(peak=self.floor, peak_at=self.clock())
        return demand

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()

    # -- what happened --

    def on_take(self, key: K, hit: bool, waited: bool = False) -> None:
        """A create of ``key`` came: served from a ready shell (``hit``), from one being
        prepared (``waited``), or by the cold path (neither)."""
        d = self._of(key)
        now = self.clock()
        d.takes.append(now)
        self._trim(d.takes, now)
        if waited:
            d.waited += 1
        elif hit:
            d.hits += 1
        else:
            d.misses += 1
        if waited or not hit:
            d.starved_at = now
        self.target(key)  # the peak follows the demand as it rises, not only when asked

    def on_prepared(self, key: K, seconds: float) -> None:
        """A shell of ``key`` was prepared in ``seconds`` (wall clock)."""
        d = self._of(key)
        now = self.clock()
        d.refills.append(now)
        self._trim(d.refills, now)
        if d.refills_measured == 0:
            d.refill_s = seconds
        else:
            d.refill_s += LATENCY_WEIGHT * (seconds - d.refill_s)
        d.refills_measured += 1

    def on_shrunk(self, key: K, count: int) -> None:
        self._of(key).shrunk += count

    # -- what to do --

    def rate(self, key: K) -> float:
        """Creates of ``key`` per second over the last window."""
        d = self._of(key)
        self._trim(d.takes, self.clock())
        return len(d.takes) / self.window_s

    def need(self, key: K) -> int:
        """Shells that the current demand needs ready (before the floor and the maximum)."""
        return math.ceil(self.rate(key) * self._of(key).refill_s * self.headroom)

    def target(self, key: K) -> int:
        """Shells of ``key`` to keep: the peak need of the last ``idle_s`` s, within bounds."""
        d = self._of(key)
        now = self.clock()
        need = max(self.floor, min(self.maximum, self.need(key)))
        if need >= d.peak:
            d.peak, d.peak_at = need, now
        elif now - d.peak_at >= self.idle_s and now - d.starved_at >= self.idle_s:
            # Below the peak and never short of shells for idle_s: fall back (the floor once
            # creates stop). A pool whose creates still wait for shells is not too big,
            # whatever the demand measured meanwhile: its ready shells would be taken.
            d.peak, d.peak_at = need, now
        return d.peak

    def plan(
        self,
        have: Mapping[K, tuple[int, int]],
        cost_mib: Mapping[K, int],
        budget_mib: int,
        max_total: int | None = None,
    ) -> list[K]:
        """The prepares to start now, one entry per shell (a flavour may appear more than once).

        ``have`` maps each flavour to (ready, preparing). At most ``parallel`` prepares run
        at once; each new one goes to the flavour furthest below its target that the
        memory ``budget_mib`` and the shell count ``max_total`` (default: the maximum)
        still allow.
        """
        cap = self.maximum if max_total is None else max_total
        ready = {k: r for k, (r, _p) in have.items()}
        preparing = {k: p for k, (_r, p) in have.items()}
        total = sum(ready.values()) + sum(preparing.values())
        committed = sum(cost_mib[k] * (ready[k] + preparing[k]) for k in have)
        targets = {k: self.target(k) for k in have}
        running = sum(preparing.values())
        out: list[K] = []
        while running < self.parallel and total < cap:
            best, best_gap = None, 0
            for k in have:
                gap = targets[k] - ready[k] - preparing[k]
                if gap > best_gap and committed + cost_mib[k] <= budget_mib:
                    best, best_gap = k, gap
            if best is None:
                break
            out.append(best)
            preparing[best] += 1
            running += 1
            total += 1
            committed += cost_mib[best]
        return out

    def surplus(self, key: K, ready: int, preparing: int) -> int:
        """Ready shells of ``key`` to destroy now (the oldest): those above its target."""
        return max(0, min(ready, ready + preparing - self.target(key)))

    def stats(self, key: K) -> dict[str, Any]:
        """The flavour's counters for ``lightvm daemon status``."""
        d = self._of(key)
        now = self.clock()
        self._trim(d.refills, now)
        takes = d.hits + d.waited + d.misses
        return {
            "target": self.target(key),
            "demand_per_s": round(self.rate(key), 2),
            "refill_ms": round(d.refill_s * 1000, 1),
            "refills_per_s": round(len(d.refills) / self.window_s, 2),
            "hits": d.hits,
            "waited": d.waited,
            "misses": d.misses,
            "hit_rate": round((d.hits + d.waited) / takes, 4) if takes else None,
            "shrunk": d.shrunk,
        }


__all__ = ["DEFAULT_IDLE_S", "HEADROOM", "RATE_WINDOW_S", "AdaptivePolicy", "Demand", "default_parallel"]

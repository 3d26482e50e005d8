"""The adaptive pool policy (lightvm/daemon/adaptive.py) driven by a fake clock and fake
spawns: growth under a burst, the memory budget and the maximum, shrink when idle,
parallel refill; and the refilling pool (shells.ShellPool) running several prepares at
once, a take waiting for a shell on its way, surplus shells destroyed oldest first."""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from test_shells import FakeShell, Kind, wait

from lightvm.daemon.adaptive import AdaptivePolicy
from lightvm.daemon.shells import ShellPool
from lightvm.state import StateDir


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Sim:
    """One flavour: creates arrive, take a ready shell or miss; the policy's plan starts
    spawns that each end ``spawn_s`` later; all on the fake clock."""

    def __init__(self, policy: AdaptivePolicy[str], clock: Clock, spawn_s: float, cost: int = 20, budget: int = 10**6):
        self.policy, self.clock, self.spawn_s = policy, clock, spawn_s
        self.cost, self.budget = cost, budget
        self.ready: deque[float] = deque()  # the time each ready shell was made, oldest first
        self.inflight: list[float] = []  # end times
        self.log: list[tuple[float, bool]] = []  # (time, hit) per create
        self.most_inflight = 0
        self.most_held = 0
        self.destroyed: list[float] = []
        self.refill()

    def advance(self, until: float) -> None:
        while True:
            due = [t for t in self.inflight if t <= until]
            if not due:
                break
            first = min(due)
            self.clock.now = max(self.clock.now, first)
            self.inflight.remove(first)
            self.ready.append(first)
            self.policy.on_prepared("f", self.spawn_s)
            self.refill()
        self.clock.now = until
        self.refill()

    def refill(self) -> None:
        for _ in self.policy.plan({"f": (len(self.ready), len(self.inflight))}, {"f": self.cost}, self.budget):
            self.inflight.append(self.clock.now + self.spawn_s)
        self.most_inflight = max(self.most_inflight, len(self.inflight))
        self.most_held = max(self.most_held, len(self.ready) + len(self.inflight))
        extra = self.policy.surplus("f", len(self.ready), len(self.inflight))
        for _ in range(extra):
            self.destroyed.append(self.ready.popleft())

    def create(self) -> None:
        hit = bool(self.ready)
        if hit:
            self.ready.popleft()
        self.policy.on_take("f", hit)
        self.log.append((self.clock.now, hit))
        self.refill()

    def burst(self, rate: float, seconds: float) -> None:
        start = self.clock.now
        for i in range(int(rate * seconds)):
            self.advance(start + i / rate)
            self.create()

    def hit_fraction(self, after: float) -> float:
        later = [hit for t, hit in self.log if t >= after]
        return sum(later) / len(later)


def test_a_burst_grows_the_target_and_is_served_from_the_pool_after_the_first_second() -> None:
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=1, maximum=64, idle_s=30.0, parallel=4, clock=clock)
    sim = Sim(policy, clock, spawn_s=0.03)
    sim.advance(clock.now + 1.0)  # the floor is prepared
    assert len(sim.ready) == 1
    start = clock.now
    sim.burst(rate=100.0, seconds=5.0)  # 4 prepares at 30 ms: 133 shells/s, the demand 100/s
    # need = 100/s x 30 ms x 2 = 6
    assert policy.target("f") == 6
    assert sim.hit_fraction(after=start + 1.0) >= 0.95, sim.hit_fraction(after=start + 1.0)
    assert sim.hit_fraction(after=start) < 1.0  # the floor of 1 could not serve the start
    assert sim.most_inflight == 4  # refills ran 4 at a time, never more


def test_a_fixed_floor_alone_would_miss_most_of_the_same_burst() -> None:
    """The comparison that makes the growth worth it: the same spawns, one at a time, no growth."""
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=1, maximum=1, idle_s=30.0, parallel=1, clock=clock)
    sim = Sim(policy, clock, spawn_s=0.03)
    sim.advance(clock.now + 1.0)
    start = clock.now
    sim.burst(rate=100.0, seconds=5.0)
    assert sim.hit_fraction(after=start + 1.0) < 0.5


def test_the_memory_budget_caps_the_shells_however_high_the_demand() -> None:
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=2, maximum=64, idle_s=30.0, parallel=8, clock=clock)
    sim = Sim(policy, clock, spawn_s=0.05, cost=20, budget=100)  # 5 shells of 20 MiB
    sim.burst(rate=500.0, seconds=2.0)
    assert policy.target("f") == 50  # 500/s x 50 ms x 2: the target says so ...
    assert sim.most_held == 5  # ... the budget does not let it


def test_the_maximum_caps_the_target() -> None:
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=2, maximum=8, idle_s=30.0, parallel=8, clock=clock)
    sim = Sim(policy, clock, spawn_s=0.05)
    sim.burst(rate=500.0, seconds=2.0)
    assert policy.target("f") == 8 and sim.most_held == 8


def test_an_idle_pool_shrinks_to_its_floor_oldest_first_after_the_idle_period() -> None:
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=2, maximum=64, idle_s=10.0, parallel=4, clock=clock)
    sim = Sim(policy, clock, spawn_s=0.03)
    sim.burst(rate=200.0, seconds=3.0)  # need 200 x 0.03 x 2 = 12
    end = clock.now
    sim.advance(end + 1.0)
    assert policy.target("f") == 12 and len(sim.ready) == 12
    sim.advance(end + 9.0)  # idle, but not for idle_s since the peak: kept for the next wave
    assert len(sim.ready) == 12 and not sim.destroyed
    oldest = list(sim.ready)[:10]
    sim.advance(end + 11.0)
    assert policy.target("f") == 2 and len(sim.ready) == 2
    assert sim.destroyed == oldest  # the surplus, oldest first
    assert policy.stats("f")["demand_per_s"] == 0


def test_a_lower_steady_demand_shrinks_the_target_to_its_need_not_to_the_floor() -> None:
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=1, maximum=64, idle_s=5.0, parallel=4, clock=clock)
    sim = Sim(policy, clock, spawn_s=0.05)
    sim.burst(rate=200.0, seconds=2.0)  # need 20
    assert policy.target("f") == 20
    sim.burst(rate=40.0, seconds=8.0)  # need 40 x 0.05 x 2 = 4
    assert policy.target("f") == 4
    assert sim.hit_fraction(after=clock.now - 2.0) == 1.0


def test_a_pool_whose_creates_wait_for_shells_does_not_shrink_when_the_demand_dips() -> None:
    """Supply-limited (one prepare at a time): the demand falls from 100/s to 30/s, still
    above what one 50 ms prepare at a time makes (20/s): the creates keep finding the
    pool empty, so the target keeps its peak and no ready shell is destroyed."""
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=1, maximum=64, idle_s=2.0, parallel=1, clock=clock)
    sim = Sim(policy, clock, spawn_s=0.05)
    sim.burst(rate=100.0, seconds=2.0)  # need 10
    peak = policy.target("f")
    assert peak >= 10  # 100/s x 50 ms x 2 (a window edge may count one more create)
    sim.burst(rate=30.0, seconds=6.0)  # need 3, but starved throughout
    assert sim.hit_fraction(after=clock.now - 5.0) < 1.0  # still short of shells
    assert policy.target("f") >= peak and not sim.destroyed
    sim.advance(clock.now + 3.0)  # creates stop: idle_s without a starved create
    assert policy.target("f") == 1


def test_plan_starts_up_to_parallel_prepares_to_the_flavour_furthest_below_target() -> None:
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=4, maximum=64, idle_s=30.0, parallel=3, clock=clock)
    cost = {"a": 10, "b": 10}
    assert policy.plan({"a": (0, 0), "b": (3, 0)}, cost, 10**6) == ["a", "a", "a"]
    assert policy.plan({"a": (0, 2), "b": (0, 0)}, cost, 10**6) == ["b"]  # 2 running: room for one
    assert policy.plan({"a": (1, 2), "b": (2, 0)}, cost, 10**6) == ["b"]  # 1 short of 4 against 2 short
    assert policy.plan({"a": (4, 0), "b": (4, 0)}, cost, 10**6) == []  # at target
    assert policy.plan({"a": (0, 0), "b": (0, 0)}, cost, 25) == ["a", "b"]  # the budget: 2 shells
    assert policy.plan({"a": (0, 0), "b": (0, 0)}, cost, 10**6, max_total=1) == ["a"]


def test_refill_latency_is_the_first_measure_then_a_moving_average() -> None:
    clock = Clock()
    policy: AdaptivePolicy[str] = AdaptivePolicy(floor=1, maximum=64, clock=clock)
    policy.on_prepared("f", 0.1)
    assert policy.stats("f")["refill_ms"] == 100.0
    policy.on_prepared("f", 0.2)
    assert policy.stats("f")["refill_ms"] == 120.0  # 0.1 + 0.2 x (0.2 - 0.1)
    assert policy.stats("f")["refills_per_s"] == 2.0
    policy.on_take("f", True)
    policy.on_take("f", True, waited=True)
    policy.on_take("f", False)
    stats = policy.stats("f")
    assert (stats["hits"], stats["waited"], stats["misses"]) == (1, 1, 1)
    assert stats["hit_rate"] == round(2 / 3, 4)


class GatedPool(ShellPool[Kind, FakeShell]):
    """A ShellPool driven by an AdaptivePolicy (as lightvm.daemon.pool.Pool is) whose
    prepares block until the test opens the gate: it sees how many run at once."""

    def __init__(self, root: Path, kind: Kind, policy: AdaptivePolicy[Kind]) -> None:
        super().__init__(StateDir(root), policy.floor, lambda _m: None)
        self.kind, self.policy = kind, policy
        self._shells = {kind: deque()}
        self._preparing = {kind: 0}
        self.gate = threading.Event()
        self.running = 0
        self.most_running = 0
        self.made: list[FakeShell] = []

    def _workers(self) -> int:
        return self.policy.parallel

    def _next(self) -> Kind | None:
        plan = self.policy.plan(
            {self.kind: (len(self._shells[self.kind]), self._preparing[self.kind])}, {self.kind: 10}, 10**6
        )
        return plan[0] if plan else None

    def _took(self, flavour: Kind, hit: bool, waited: bool) -> None:
        self.policy.on_take(flavour, hit, waited)

    def _prepared(self, flavour: Kind, seconds: float) -> None:
        self.policy.on_prepared(flavour, seconds)

    def _surplus(self) -> list[FakeShell]:
        q = self._shells[self.kind]
        return [q.popleft() for _ in range(self.policy.surplus(self.kind, len(q), self._preparing[self.kind]))]

    def _prepare(self, flavour: Kind) -> FakeShell:
        with self._cond:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.gate.wait(10.0)
        with self._cond:
            self.running -= 1
            shell = FakeShell(f"s{len(self.made)}")
            self.made.append(shell)
        return shell


def test_the_pool_prepares_in_parallel_a_take_waits_for_a_shell_on_its_way_and_surplus_goes(
    tmp_path: Path,
) -> None:
    policy: AdaptivePolicy[Kind] = AdaptivePolicy(floor=3, maximum=8, idle_s=0.3, parallel=2)
    kind = Kind("a")
    pool = GatedPool(tmp_path, kind, policy)
    pool.start()
    try:
        assert wait(lambda: pool.running == 2)  # two workers, both preparing
        got: list[FakeShell | None] = []
        taker = threading.Thread(target=lambda: got.append(pool._take(kind, wait_s=5.0)))
        taker.start()
        assert wait(lambda: pool._waiting.get(kind) == 1)  # no ready shell: it waits for one on its way
        pool.gate.set()
        taker.join(5.0)
        assert got and got[0] is not None
        assert policy.stats(kind)["waited"] == 1
        pool.done()
        assert pool.most_running == 2
        assert wait(lambda: len(pool._shells[kind]) == 3)
        # Nothing is on its way and nothing waits: a take without a shell goes cold at once.
        with pool._cond:
            held = list(pool._shells[kind])
            pool._shells[kind].clear()
            pool._preparing[kind] = 0
            pool._busy += 1  # no refill meanwhile
        assert pool._take(kind, wait_s=5.0) is None
        with pool._cond:
            pool._shells[kind].extend(held)
            pool._busy -= 1
            policy.floor = 1  # as if the peak had passed: the target falls to 1 after idle_s
            pool._cond.notify_all()
        assert wait(lambda: len(pool._shells[kind]) == 1)
        assert [s.id for s in pool._shells[kind]] == [held[-1].id]  # the newest is kept
        assert all(s.discarded.is_set() for s in held[:-1])
    finally:
        pool.stop()
    assert all(s.discarded.is_set() for s in pool.made if s is not got[0])  # the taken one is the create's

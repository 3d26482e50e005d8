"""``lightvm bench burst``: a burst of creates against lightvmd's adaptive pool (issue #12).

What "the fastest rate a client can send them" means here: each create is followed by
the destroy of that VM (10,000 running VMs would not fit a 24 GiB host), so a client is
a closed loop ``create -> destroy -> next create`` on one kept API connection, sending
the next request as soon as the previous reply came. ``--clients N`` runs N such loops
at once (default 1: the daemon serves each connection on its own thread, so more
clients add parallel demand). The pool starts at ``--initial-pool`` shells (its floor)
and grows with the demand it sees (lightvm/daemon/adaptive.py).

Reported: creates/s; the fraction served from the pool, overall and after the first
second (the bar of issue #12: >= 95 %), and the daemon's own split of hits (a ready
shell), hits that waited for a shell being prepared, and misses (cold path); client
request -> reply latency medians and p99 of hits and misses, and how long hits waited
for their shell; the pool's peak target and size; a leak check before the burst (the
pool full at its floor) and after it (the pool shrunk back to its floor after
``--pool-idle`` s): processes of the run's state dir, the daemon's open fds, entries of
the run's private NoXS dir (under /dev/shm), host taps named ``lv*``; and after the
daemon stopped (none of the run's may be left).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lightvm import paths
from lightvm.bench.split import daemon_answers, daemon_call
from lightvm.daemon import api
from lightvm.errors import LightVMError
from lightvm.state import SHM_ENV
from lightvm.util import wait_until

REPO = paths.data_root()  # the checkout, or an installed package's data (examples/ in both)
FIRST_SECOND = 1.0


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _dist(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else None,
        "p99": _quantile(values, 0.99),
        "max": max(values) if values else None,
    }


def _processes_mentioning(marker: str) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and marker.encode() in argv:
            out.append(int(entry.name))
    return out


def _taps(ours: set[str]) -> tuple[int, int]:
    """(taps of this run, ``lv*`` taps of the whole host). A tap is this run's when its
    alias (``lightvm:vm=NAME/i``, lightvm/devices/shellnet.py) names one of ``ours`` (the
    run's VM names, VM ids and shell ids): other jobs on the host make and delete taps
    of their own meanwhile (the first 10,000-create run saw the host count go 1 -> 0)."""
    try:
        names = [n for n in os.listdir("/sys/class/net") if n.startswith("lv")]
    except OSError:
        return 0, 0
    mine = 0
    for name in names:
        try:
            alias = Path("/sys/class/net", name, "ifalias").read_text().strip()
        except OSError:
            continue
        if alias.startswith("lightvm:vm=") and alias[len("lightvm:vm=") :].split("/")[0] in ours:
            mine += 1
    return mine, len(names)


class Burst:
    """One daemon on a private state dir and NoXS dir; the burst against it; the checks."""

    def __init__(self, app: str, accel: str, initial_pool: int, pool_idle: float, pool_max: int) -> None:
        example = REPO / "examples" / f"{app}.toml"
        if not example.is_file():
            raise LightVMError(f"{example}: no such example (--app)")
        self.accel, self.initial_pool, self.pool_idle = accel, initial_pool, pool_idle
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-burst-")
        self.config = self._private_config(example, Path(self._tmp.name))
        self.state = Path(self._tmp.name) / "state"
        self.state.mkdir()
        # A NoXS dir of our own, on the same tmpfs: its entries are this run's and no one else's.
        self.shm = Path(tempfile.mkdtemp(prefix="lightvm-bench-burst-", dir="/dev/shm"))
        self.log_path = Path(self._tmp.name) / "lightvmd.log"
        self.env = dict(os.environ, **{SHM_ENV: str(self.shm)})
        self.env.pop("LIGHTVM_STATE_DIR", None)
        self.env.pop("LIGHTVM_NO_DAEMON", None)
        argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state), "daemon", "run"]
        argv += ["--accel", accel, "--pool", str(self.config), "--pool-size", str(initial_pool)]
        argv += ["--pool-idle", str(pool_idle), "--pool-max", str(pool_max)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[str] = set()  # VM names, VM ids and shell ids of this run
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env)
            if not wait_until(self._answers, timeout=60.0, interval=0.01, max_interval=0.1):
                raise LightVMError(f"lightvmd did not answer: {self._log_tail()}")
            self.wait_floor(60.0)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _private_config(example: Path, tmp: Path) -> Path:
        """The example with its kernel and firmware copied into ``tmp``: a run lasts minutes,
        and a rebuild of images/build meanwhile (measured: another job's `make` rewrote
        noop.elf in place mid-run, and the daemon's next spec load found no ELF) must not
        change or break the guest under the benchmark."""
        import shutil
        import tomllib

        data = tomllib.loads(example.read_text())
        for key in ("kernel", "firmware"):
            if data.get(key):
                source = (example.parent / str(data[key])).resolve()
                copy = tmp / f"{key}-{source.name}"
                shutil.copyfile(source, copy)
                data[key] = str(copy)
        config = tmp / f"{example.stem}.json"
        config.write_text(json.dumps(data))
        return config

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-800:]
        except OSError:
            return ""

    def _answers(self) -> bool:
        assert self.proc is not None
        return daemon_answers(self.proc, self.state, self._log_tail)

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        return daemon_call(self.state, op, args, timeout)

    def wait_floor(self, timeout: float) -> bool:
        """Wait until the pool holds exactly its floor, nothing being prepared."""

        def at_floor() -> bool:
            stats = self.call("pool")
            return all(f["ready"] == self.initial_pool and not f["preparing"] for f in stats["flavours"])

        return bool(wait_until(at_floor, timeout=timeout, interval=0.05, max_interval=0.25))

    def snapshot(self) -> dict[str, int]:
        """What a leak would show: processes of the state dir, the daemon's fds, NoXS files, taps."""
        fds = -1
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        try:
            shm = len(os.listdir(self.shm))
        except OSError:
            shm = 0
        with contextlib.suppress(OSError):
            self.seen.update(os.listdir(self.state / "pool"))  # the shells' ids (their taps' aliases)
        taps, host_taps = _taps(self.seen)
        return {
            "processes": len(_processes_mentioning(str(self.state))),
            "daemon_fds": fds,
            "noxs_files": shm,
            "taps": taps,
            "host_taps": host_taps,  # for the record only: other jobs' taps come and go
        }

    def run(self, creates: int, clients: int) -> dict[str, Any]:
        """The burst: ``clients`` closed loops create -> destroy until ``creates`` are done."""
        samples: list[dict[str, Any]] = []
        errors: list[str] = []
        lock = threading.Lock()
        counter = iter(range(creates))
        monitor: list[dict[str, Any]] = []
        stop = threading.Event()
        config = str(self.config)

        def loop() -> None:
            try:
                with api.Client.connect(self.state, timeout=10.0) as client:
                    while True:
                        with lock:
                            i = next(counter, None)
                        if i is None:
                            return
                        name = f"b{i}"
                        self.seen.add(name)
                        t_send = time.perf_counter()
                        (vm,) = client.call("create", {"config": config, "name": name, "accel": self.accel}, 60.0)
                        t_reply = time.perf_counter()
                        self.seen.add(vm["id"])
                        client.call("destroy", {"names": [name]}, 60.0)
                        t_done = time.perf_counter()
                        sample = {
                            "t": t_send - start,
                            "ms": (t_reply - t_send) * 1000,
                            "destroy_ms": (t_done - t_reply) * 1000,
                            "pool": vm["path"] == "pool",
                            "take_ms": vm.get("pool_take_ms"),
                        }
                        with lock:
                            samples.append(sample)
            except Exception as exc:  # reported with the results, the other loops go on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

        def sample_pool() -> None:
            with contextlib.suppress(LightVMError, OSError):
                stats = self.call("pool", timeout=10.0)
                for f in stats["flavours"]:
                    monitor.append(
                        {
                            "t": time.perf_counter() - start,
                            "target": f["target"],
                            "size": f["ready"] + f["preparing"],
                        }
                    )

        def watch() -> None:
            # From the start, then every 0.2 s: a short burst may be over between two samples
            # taken only while it runs, each of them catching the pool just emptied.
            sample_pool()
            while not stop.wait(0.2):
                sample_pool()
                with lock:
                    done = len(samples)
                print(f"\rburst: {done}/{creates} creates", end="", file=sys.stderr, flush=True)

        start = time.perf_counter()
        threads = [threading.Thread(target=loop, name=f"client-{c}") for c in range(clients)]
        watcher = threading.Thread(target=watch, name="watch")
        watcher.start()
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        finally:
            stop.set()
            watcher.join(30.0)
            print(file=sys.stderr)
        wall = time.perf_counter() - start
        return {"samples": samples, "errors": errors, "wall_s": wall, "monitor": monitor}

    def stop(self) -> None:
        """SIGTERM the daemon and wait for it (it discards its shells)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10.0)

    def close(self) -> None:
        """Leave nothing: the daemon stopped, every VM of the state dir destroyed, the dirs removed."""
        self.stop()
        env = dict(self.env, LIGHTVM_NO_DAEMON="1")
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state), "destroy", "--all"],
                env=env, capture_output=True, timeout=600, check=False,
            )  # fmt: skip
        for pid in _processes_mentioning(str(self.state)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            for entry in os.listdir(self.shm):
                (self.shm / entry).unlink(missing_ok=True)
            self.shm.rmdir()
        self._tmp.cleanup()


def summarize(run: dict[str, Any], pool_stats: dict[str, Any], final_stats: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run: ``pool_stats`` taken right after the burst, ``final_stats``
    after the shrink."""
    samples = run["samples"]
    later = [s for s in samples if s["t"] >= FIRST_SECOND]
    hits = [s["ms"] for s in samples if s["pool"]]
    misses = [s["ms"] for s in samples if not s["pool"]]
    (flavour,) = pool_stats["flavours"]
    n = len(samples)
    return {
        "creates": n,
        "creates_per_s": n / run["wall_s"] if run["wall_s"] else 0.0,
        "wall_s": run["wall_s"],
        "pool_fraction": sum(s["pool"] for s in samples) / n if n else None,
        "pool_fraction_after_1s": sum(s["pool"] for s in later) / len(later) if later else None,
        "creates_after_1s": len(later),
        "daemon_hits": flavour["hits"],
        "daemon_waited": flavour["waited"],
        "daemon_misses": flavour["misses"],
        "hit_ms": _dist(hits),
        "miss_ms": _dist(misses),
        "hit_take_ms": _dist([s["take_ms"] for s in samples if s["pool"] and s["take_ms"] is not None]),
        "destroy_ms": _dist([s["destroy_ms"] for s in samples]),
        "peak_target": max((m["target"] for m in run["monitor"]), default=None),
        "peak_size": max((m["size"] for m in run["monitor"]), default=None),
        "shrunk_during_burst": flavour["shrunk"],
        "shrunk": final_stats["flavours"][0]["shrunk"],
        "refill_ms_last": flavour["refill_ms"],
    }


def bench(
    creates: int,
    initial_pool: int,
    clients: int = 1,
    pool_idle: float = 3.0,
    pool_max: int = 64,
    app: str = "noop",
    accel: str = "tcg",
) -> dict[str, Any]:
    """Run the burst; the whole result document (everything but the run's metadata)."""
    if creates < 1 or clients < 1 or initial_pool < 1:
        raise LightVMError("--creates, --clients and --initial-pool must be >= 1")
    burst = Burst(app, accel, initial_pool, pool_idle, pool_max)
    try:
        time.sleep(0.5)  # the last shell's boot settled: the daemon's fds as they stay
        before = burst.snapshot()
        print(f"burst: {creates} creates, {clients} client(s), pool floor {initial_pool}", file=sys.stderr)
        run = burst.run(creates, clients)
        pool_stats = burst.call("pool")
        shrank = burst.wait_floor(pool_idle + 60.0)  # idle: back to the floor
        time.sleep(0.5)
        after = burst.snapshot()
        final_stats = burst.call("pool")
        burst.stop()
        stopped = burst.snapshot()
    finally:
        burst.close()
    summary = summarize(run, pool_stats, final_stats)
    leaks = {k: after[k] - before[k] for k in before if k != "host_taps"}
    leaks_after_stop = {k: stopped[k] for k in ("processes", "noxs_files", "taps")}
    return {
        "options": {"creates": creates, "initial_pool": initial_pool, "clients": clients, "pool_idle_s": pool_idle},
        "summary": summary,
        "errors": run["errors"],
        "shrank_to_floor": shrank,
        "leak_check": {"before": before, "after_shrink": after, "after_stop": stopped},
        "leaks": leaks,
        "leaks_after_stop": leaks_after_stop,
        "pool_after_burst": pool_stats,
        "pool_after_shrink": final_stats,
        "monitor": run["monitor"],
        "samples": run["samples"],
    }


def _ms(d: dict[str, Any]) -> str:
    if not d["n"]:
        return "-"
    return f"{d['median']:.2f} / {d['p99']:.2f} ms (n={d['n']})"


def report(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    o = doc["options"]
    lines = [
        f"burst: {s['creates']} creates (create -> destroy loops, {o['clients']} client(s)), "
        f"pool floor {o['initial_pool']}, idle {o['pool_idle_s']} s",
        f"  {s['creates_per_s']:.1f} creates/s over {s['wall_s']:.1f} s",
        f"  from the pool: {s['pool_fraction'] * 100:.2f} % overall, "
        f"{(s['pool_fraction_after_1s'] or 0) * 100:.2f} % after the first second ({s['creates_after_1s']} creates)",
        f"  daemon: {s['daemon_hits']} hits, {s['daemon_waited']} hits after waiting for a shell, "
        f"{s['daemon_misses']} misses",
        f"  request -> reply median / p99: hits {_ms(s['hit_ms'])}, misses {_ms(s['miss_ms'])}",
        f"  hits' wait for their shell: {_ms(s['hit_take_ms'])}; destroy {_ms(s['destroy_ms'])}",
        f"  pool: peak target {s['peak_target']}, peak size {s['peak_size']}, "
        f"{'shrank back to' if doc['shrank_to_floor'] else 'DID NOT shrink to'} its floor "
        f"({s['shrunk']} destroyed as surplus, {s['shrunk_during_burst']} of them during the burst)",
        f"  leak check before / after shrink: {doc['leak_check']['before']} / {doc['leak_check']['after_shrink']}",
        f"  after the daemon stopped: {doc['leaks_after_stop']}",
    ]
    if doc["errors"]:
        lines.append(f"  ERRORS: {doc['errors']}")
    return "\n".join(lines)


def ok(doc: dict[str, Any]) -> bool:
    """No client error, the pool shrank back, nothing leaked."""
    return (
        not doc["errors"]
        and doc["shrank_to_floor"]
        and not any(doc["leaks"].values())
        and not any(doc["leaks_after_stop"].values())
    )


def write(doc: dict[str, Any], meta: dict[str, Any], out: Path) -> Path:
    """``out``/results.json (``meta`` and the run) and ``out``/summary.txt (:func:`report`)."""
    from lightvm.bench.runner import write_run

    return write_run(out, meta, doc, report(doc))


__all__ = ["Burst", "bench", "ok", "report", "summarize", "write"]

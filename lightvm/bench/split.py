"""The split toolstack's execute path: lightvmd request -> READY reply, next to fork/exec.

:class:`SplitFleet` is a boot-suite fleet (grow/measure/close/pids): a private
``lightvm daemon run`` (its own process, as in production) on a private state dir with
a pool for the guest's flavour. ``measure()`` waits (untimed) until the pool is full and
quiet, then times one ``create`` request on the API socket to its reply, which the
daemon sends once the guest wrote READY; the sample also carries the daemon-side boot
breakdown and the path taken (1.0 = pool).

``lightvm bench split`` (this module's ``benchmarks``) is the scale bar: with N VMs of
``--app`` *already running* (N = 1, 100, 500, 1000), the execute-path median (a noop
guest from the pool; lightvm/bench/splitnic.py times daytime with a NIC), what each
idle VM costs the host (memory beyond guest RAM, CPU) and whether every one of them
answers a daytime query; the last row is the execute-path median at the largest N over
the one at the smallest (the bar: <= 1.2x)::

    lightvm bench split --app daytime --vms 1,100,500,1000 --max-vms 1000 --iterations 30

Run as a script for the side-by-side table in one run::

    python -m lightvm.bench.split --vms 1,100 --iterations 30 [--app noop] [--out r.json]

For each N: grow the fleet to N-1 running VMs (through the daemon), then alternate one
execute-path sample and one fork/exec sample (same moment, same load), and print
medians and the ratio. TCG only; the machine is shared, so say so with the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightvm.bench.ports import free_port
from lightvm.bench.procfs import cpu_ticks, mem_available_kib, smaps_rollup
from lightvm.bench.runner import REPO, Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.boot import BOOT_STEP_KEYS
from lightvm.daemon import api
from lightvm.errors import LightVMError
from lightvm.util import wait_until

POOL_BOOT_STEPS = BOOT_STEP_KEYS[1:]  # a pool shell's QEMU was up before the create
GROW_BATCH = 25
DAYTIME_PORT = 13
QUERY_TIMEOUT_S = 5.0
POOL_APP = "noop"  # the scale bar's measured guest (daytime with a NIC: splitnic.py)
REFERENCE = "lightvm-split"  # the suite has one variant: the summary quotes no ratios


def read_daytime(port: int, timeout: float = QUERY_TIMEOUT_S) -> bytes:
    """One RFC 867 query to 127.0.0.1:``port``: the line the guest sent (b"" on any failure)."""
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            while chunk := sock.recv(256):
                data += chunk
    except OSError:
        return b""
    return data


def query_ports(ports: list[int], workers: int = 32) -> tuple[int, int]:
    """Ask each 127.0.0.1 port the time, ``workers`` at a time: (daytime lines, ports asked).

    Why a pool: thousands of VMs one after the other would take minutes when a few
    do not answer (each costs the whole timeout); every query still has its timeout.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = pool.map(read_daytime, ports)
        return sum(1 for a in answers if a.endswith(b"-UTC\r\n")), len(ports)


def daemon_call(state: Path, op: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    """One request to the bench's lightvmd on ``state`` (a connection of its own)."""
    with api.Client.connect(state, timeout=5.0) as client:
        return client.call(op, args, timeout=timeout)


def daemon_answers(proc: subprocess.Popen[bytes], state: Path, log_tail: Callable[[], str]) -> bool:
    """Whether the lightvmd ``proc`` serves ``state`` yet (for a wait_until).

    :raise LightVMError: it exited (the end of its log says why).
    """
    if proc.poll() is not None:
        raise LightVMError(f"lightvmd exited: {log_tail()}")
    try:
        return bool(daemon_call(state, "ping")["pid"] == proc.pid)
    except api.DaemonUnavailable:
        return False


class SplitFleet:
    """lightvm split: a lightvmd with a pool; the sample is the client-side request -> READY."""

    variant = "lightvm-split"

    def __init__(
        self,
        app: str = "noop",
        accel: str = "tcg",
        pool_size: int = 2,
        bg_app: str | None = None,
        variant: str = "waiting",
        settle: bool = True,
        publish: bool = False,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        before_daemon: Callable[[Path, dict[str, str]], None] | None = None,
    ) -> None:
        self.settle = settle  # False: measure while the refill of the previous take runs
        # publish: each background VM's port 13 forwarded to its own 127.0.0.1 port (user
        # networking), so that query_all() can ask every one of them the time.
        self.publish = publish
        self.ports: list[int] = []
        # config: the measured guest's own file (splitnic: daytime on a network), not an example
        self.config = config or REPO / "examples" / f"{app}.toml"
        self.bg_config = config or REPO / "examples" / f"{bg_app or app}.toml"
        for path in (self.config, self.bg_config):
            if not path.is_file():
                raise LightVMError(f"{path}: no such example")
        self.accel = accel
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-split-")
        self.marker = self._tmp.name  # in every QEMU's arguments (its console path)
        self.state = Path(self._tmp.name) / "state"
        self.state.mkdir()
        self.log_path = Path(self._tmp.name) / "lightvmd.log"
        argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state), "daemon", "run"]
        argv += ["--accel", accel, "--pool", str(self.config), "--pool-size", str(pool_size), "--pool-variant", variant]
        env = dict(os.environ, **(env or {}))
        env.pop("LIGHTVM_STATE_DIR", None)
        self.env = env
        if before_daemon is not None:  # e.g. a network its shells lease on (network_setup)
            try:
                before_daemon(self.state, env)
            except BaseException:
                self._tmp.cleanup()
                raise
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        self.count = 0
        self.seq = 0
        try:
            if not wait_until(self._answers, timeout=30.0, interval=0.01, max_interval=0.1):
                raise LightVMError(f"lightvmd did not answer: {self.log_path.read_text()[-500:]}")
            self._wait_pool_full()
        except BaseException:
            self.close()
            raise

    def _answers(self) -> bool:
        return daemon_answers(self.proc, self.state, lambda: self.log_path.read_text()[-500:])

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        return daemon_call(self.state, op, args, timeout)

    def _wait_pool_full(self, timeout: float = 60.0) -> None:
        def full() -> bool:
            stats = self.call("pool")
            if not self.settle:  # only a shell to take: the refill may be running meanwhile
                return all(f["ready"] >= 1 for f in stats["flavours"])
            return all(f["ready"] >= stats["size"] and not f["preparing"] for f in stats["flavours"])

        if not wait_until(full, timeout=timeout, interval=0.002, max_interval=0.05):
            raise LightVMError(f"the pool did not fill within {timeout:.0f} s: {self.call('pool')}")

    def grow(self, count: int) -> None:
        """Keep ``count`` background VMs running (cold path: the pool stays for the measured one)."""
        while self.publish and self.count < count:  # one at a time: one host port each
            port = free_port()
            args = {"config": str(self.bg_config), "name": f"bg-{self.count}", "pool": False, "accel": self.accel}
            self.call("create", {**args, "publish": [f"127.0.0.1:{port}:{DAYTIME_PORT}"]}, timeout=60.0)
            self.ports.append(port)
            self.count += 1
        while self.count < count:
            n = min(GROW_BATCH, count - self.count)
            args = {"config": str(self.bg_config), "name": f"bg{self.count // GROW_BATCH}-{self.count}", "pool": False}
            args.update({"accel": self.accel, "count": n} if n > 1 else {"accel": self.accel})
            self.call("create", args, timeout=60.0 * n)
            self.count += n

    def measure(self, mark: Callable[[], object] | None = None) -> Sample:
        """One pooled create, timed at the client from the request to the READY reply, then
        destroyed. ``mark``: called right before and right after the timed request, outside
        the timing (a tracer's markers: lightvm/bench/ringtrace.py)."""
        self._wait_pool_full()  # untimed: a full, quiet pool (no QEMU start competing)
        self.seq += 1
        name = f"m{self.seq}"
        with api.Client.connect(self.state, timeout=5.0) as client:
            # The sample is the request, not the connection: a ping first has the daemon
            # accept this connection and hand it to a worker (two thread wake-ups that a
            # client keeping its connection pays once).
            client.call("ping")
            if mark is not None:
                mark()
            t0 = time.perf_counter()
            (result,) = client.call("create", {"config": str(self.config), "name": name, "accel": self.accel})
            wall = (time.perf_counter() - t0) * 1000
            if mark is not None:
                mark()
        sample: Sample = {"ms": wall, "pool": 1.0 if result["path"] == "pool" else 0.0}
        for step in POOL_BOOT_STEPS:
            value = result["boot_ms"].get(step)
            if value is not None:
                sample[f"daemon_{step}"] = float(value)
        if "daemon_ms" in result:
            sample["daemon_total"] = float(result["daemon_ms"])
        t1 = time.perf_counter()
        self.call("destroy", {"names": [name]})
        sample["destroy_ms"] = (time.perf_counter() - t1) * 1000
        return sample

    def pids(self) -> list[int]:
        infos = self.call("list")
        return [self.proc.pid, *(int(i["pid"]) for i in infos if i.get("pid"))]

    def query_all(self) -> tuple[int, int]:
        """Ask every published background VM the time: (VMs that answered a daytime line, VMs asked)."""
        return query_ports(self.ports)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(LightVMError):
                self.call("destroy", {"all": True}, timeout=1800.0)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10.0)
        env = dict(self.env, LIGHTVM_NO_DAEMON="1")
        subprocess.run(
            [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state), "destroy", "--all"],
            env=env, capture_output=True, timeout=1800, check=False,
        )  # fmt: skip
        self.count = 0
        self.ports = []
        self._tmp.cleanup()


def _idle_probe(pids: list[int], seconds: float = 5.0, sample: int = 50) -> dict[str, float]:
    """Host cost of the running VMs while idle: PSS and private memory per VM (a sample of
    ``sample`` VMs, from smaps_rollup), and CPU of all of them over ``seconds`` (in % of one core)."""
    if not pids:
        return {}
    clk = os.sysconf("SC_CLK_TCK")

    def ticks() -> int:
        return sum(cpu_ticks(pid) for pid in pids)

    t0, c0 = time.monotonic(), ticks()
    deadline = t0 + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))  # a measurement window, not a wait for a condition
    cpu = (ticks() - c0) / clk / (time.monotonic() - t0) * 100
    pss, private = [], []
    step = max(1, len(pids) // sample)
    for pid in pids[::step][:sample]:
        kb = smaps_rollup(pid)
        if not kb:
            continue
        pss.append(kb.get("Pss", 0) / 1024)
        private.append((kb.get("Private_Dirty", 0) + kb.get("Private_Clean", 0)) / 1024)
    return {
        "vms": len(pids),
        "cpu_percent_of_one_core": round(cpu, 2),
        "pss_mib_median": round(statistics.median(pss), 2) if pss else 0.0,
        "private_mib_median": round(statistics.median(private), 2) if private else 0.0,
    }


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "n": len(samples),
    }


def run(
    vms: list[int],
    iterations: int,
    app: str,
    bg_app: str | None,
    warmup: int,
    variant: str = "waiting",
    settle: bool = True,
) -> dict[str, Any]:
    """Side by side in one run: execute path and fork/exec, at each N (N-1 VMs running)."""
    from lightvm.bench.forkexec import ForkExecFleet

    out: dict[str, Any] = {
        "app": app,
        "bg_app": bg_app or app,
        "accel": "tcg",
        "variant": variant,
        "settle": settle,
        "points": [],
    }
    fork = ForkExecFleet()
    fleet = SplitFleet(app=app, bg_app=bg_app, variant=variant, settle=settle)
    try:
        for n in sorted(set(vms)):
            t_grow = time.perf_counter()
            fleet.grow(n - 1)
            grow_s = time.perf_counter() - t_grow
            idle = _idle_probe(fleet.pids()[1:]) if n > 1 else {}
            split: list[Sample] = []
            forks: list[float] = []
            for i in range(warmup + iterations):
                s = fleet.measure()
                f = fork.measure()["ms"]
                if i >= warmup:
                    split.append(s)
                    forks.append(f)
            execute = [s["ms"] for s in split]
            point: dict[str, Any] = {
                "n": n,
                "grow_s": round(grow_s, 1),
                "idle": idle,
                "execute_ms": _summary(execute),
                "daemon_ready_ms": _summary([s["daemon_ready"] for s in split if "daemon_ready" in s]),
                "daemon_total_ms": _summary([s["daemon_total"] for s in split if "daemon_total" in s]),
                "fork_exec_ms": _summary(forks),
                "all_pool": all(s["pool"] == 1.0 for s in split),
                "ratio_median": statistics.median(execute) / statistics.median(forks),
                "loadavg": os.getloadavg(),
                "samples": {"execute": execute, "fork_exec": forks},
            }
            out["points"].append(point)
            print(
                f"N={n:>5}: execute path median {point['execute_ms']['median']:.2f} ms "
                f"(daemon: READY {point['daemon_ready_ms']['median']:.2f}, "
                f"reply {point['daemon_total_ms']['median']:.2f} ms), "
                f"fork/exec median "
                f"{point['fork_exec_ms']['median']:.2f} ms, ratio {point['ratio_median']:.2f}x, "
                f"all via pool: {point['all_pool']}, load {point['loadavg'][0]:.1f}, grow {grow_s:.0f} s; idle {idle}",
                flush=True,
            )
    finally:
        fleet.close()
        fork.close()
    first, last = out["points"][0], out["points"][-1]
    out["scaling_ratio"] = last["execute_ms"]["median"] / first["execute_ms"]["median"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightvm.bench.split", description=__doc__.split("\n\n")[0])
    p.add_argument("--vms", default="1,100", help="comma-separated N (the Nth VM while N-1 run)")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--app", default="noop", help="the measured guest (a poolable example)")
    p.add_argument("--bg-app", default=None, help="the N-1 background guests (default: --app)")
    from lightvm.daemon.pool import VARIANTS, WAITING

    p.add_argument("--variant", choices=VARIANTS, default=WAITING, help="prepared shell variant")
    p.add_argument(
        "--no-settle",
        action="store_true",
        help="take the next sample as soon as a shell is ready (the refill of the last one may be running)",
    )
    p.add_argument("--out", type=Path, help="write the JSON results here")
    args = p.parse_args(argv)
    result = run(
        [int(v) for v in args.vms.split(",")], args.iterations, args.app, args.bg_app, args.warmup, args.variant
    )
    print(f"scaling: median at N={result['points'][-1]['n']} / at N={result['points'][0]['n']}: "
          f"{result['scaling_ratio']:.2f}x")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- `lightvm bench split`: the scale bar (execute path and idle cost at N running) --


def idle_cost(pids: list[int], window_s: float, baseline_avail_kib: int) -> Sample:
    """What the idle VMs (one QEMU each, ``pids``) cost the host, per VM.

    Memory from /proc/PID/smaps_rollup of every QEMU: ``beyond_guest_mib_per_vm`` is Pss
    minus Pss_Shmem (QEMU's own anonymous memory and its share of the libraries; the guest
    RAM is a memfd and the NoXS page a /dev/shm file, both shmem); ``host_mib_per_vm`` is
    the drop of MemAvailable since before the fleet (kernel memory too; noisy on a shared
    host). CPU: utime+stime of all of them over ``window_s``, in % of one core.
    """
    n = len(pids)
    if not n:
        raise LightVMError("split: no running VM to measure")
    keys = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Anonymous")
    total = dict.fromkeys(keys, 0)
    for pid in pids:
        rollup = smaps_rollup(pid)
        for key in keys:
            total[key] += rollup.get(key, 0)
    host_kib = baseline_avail_kib - mem_available_kib()
    hz = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), sum(cpu_ticks(p) for p in pids)
    time.sleep(window_s)  # a measurement window, not a wait for a condition
    cpu = (sum(cpu_ticks(p) for p in pids) - c0) / hz / (time.monotonic() - t0) * 100

    def mib(kib: float) -> float:
        return kib / n / 1024

    return {
        "vms": float(n),
        "beyond_guest_mib_per_vm": mib(total["Pss"] - total["Pss_Shmem"]),
        "anon_mib_per_vm": mib(total["Anonymous"]),
        "pss_mib_per_vm": mib(total["Pss"]),
        "shmem_mib_per_vm": mib(total["Pss_Shmem"]),
        "rss_mib_per_vm": mib(total["Rss"]),
        "host_mib_per_vm": mib(host_kib),
        "cpu_pct_per_vm": cpu / n,
        "cpu_pct_total": cpu,
    }


class _Scale:
    """One SplitFleet for the whole run, grown to each N in turn; the execute samples per N."""

    def __init__(self, opts: SuiteOptions) -> None:
        self.opts = opts
        self.fleet: SplitFleet | None = None
        self.baseline_avail_kib = 0
        self.execute: dict[int, list[float]] = {}  # timed samples per N (warm-ups left out)
        self.calls: dict[int, int] = {}

    def grow(self, n: int) -> None:
        if self.fleet is None:
            self.baseline_avail_kib = mem_available_kib()
            # The measured VM comes from the pool, which takes vif-less guests only (noop);
            # the N running are --app's (daytime for the bar).
            self.fleet = SplitFleet(
                app=POOL_APP, bg_app=self.opts.app, accel=self.opts.accel, publish=self.opts.app == "daytime"
            )
        self.fleet.grow(n)

    def _fleet(self) -> SplitFleet:
        if self.fleet is None:
            raise LightVMError("split: no fleet (its set-up failed)")
        return self.fleet

    def idle(self, n: int) -> Sample:
        fleet = self._fleet()
        fleet._wait_pool_full()  # the pool's shells are idle too, but not counted: only the N
        pids = [int(i["pid"]) for i in fleet.call("list") if i.get("pid")]
        if len(pids) < n:
            raise LightVMError(f"split: {n} VMs wanted but {len(pids)} run")
        sample = idle_cost(pids, self.opts.idle_window_s, self.baseline_avail_kib)
        if fleet.publish:
            answered, asked = fleet.query_all()  # after the CPU window: queries wake the VMs
            sample.update({"answered": float(answered), "asked": float(asked)})
        return sample

    def measure(self, n: int) -> Sample:
        sample = self._fleet().measure()
        self.calls[n] = self.calls.get(n, 0) + 1
        if self.calls[n] > self.opts.warmup:  # the runner calls warm-up first, then the timed ones
            self.execute.setdefault(n, []).append(sample["ms"])
        return sample

    def scaling(self) -> Sample:
        """Execute-path median at the largest N over the one at the smallest (timed samples only)."""
        done = sorted(self.execute)
        if len(done) < 2:
            raise LightVMError(f"split: scaling needs execute samples at two N or more (have {done})")
        first, last = statistics.median(self.execute[done[0]]), statistics.median(self.execute[done[-1]])
        return {"ratio": last / first, "n_first": float(done[0]), "n_last": float(done[-1])}

    def close(self) -> None:
        fleet, self.fleet = self.fleet, None
        if fleet is not None:
            fleet.close()


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    """For each N ascending: the idle cost of N running VMs, then the execute path with them up."""
    state = _Scale(opts)
    stack.callback(state.close)
    rows: list[Benchmark] = []
    ns = sorted(set(opts.vms))
    for n in ns:
        params = {"variant": SplitFleet.variant, "n": n, "kind": "lightvm", "app": opts.app, "pool_app": POOL_APP}

        def before(n: int = n) -> None:
            state.grow(n)

        def idle(n: int = n) -> Sample:
            return state.idle(n)

        def execute(n: int = n) -> Sample:
            return state.measure(n)

        rows.append(
            Benchmark(
                f"split/idle/n={n}", idle, warmup=0, iterations=1, params={**params, "measure": "idle"},
                metric="beyond_guest_mib_per_vm", unit="MiB", before=before,
            )
        )  # fmt: skip
        rows.append(
            Benchmark(
                f"split/execute/n={n}", execute, warmup=opts.warmup, iterations=opts.iterations,
                params={**params, "measure": "execute"}, metric="ms", unit="ms", before=before,
            )
        )  # fmt: skip
    if len(ns) >= 2:
        rows.append(
            Benchmark(
                f"split/scaling/n={ns[-1]}", state.scaling, warmup=0, iterations=1,
                params={"variant": SplitFleet.variant, "n": ns[-1], "measure": "scaling"}, metric="ratio", unit="x",
            )
        )  # fmt: skip
    return rows


def describe() -> dict[str, Any]:
    return {
        "variants": {SplitFleet.variant: {"kind": "lightvm", "doc": "lightvmd request -> READY reply, pool shell"}},
        "rows": {
            "split/idle/n=N": "N VMs of --app running idle (cold path, no pool): cost per VM",
            "split/execute/n=N": f"one more VM ({POOL_APP}) from the pool while N run: request -> READY reply",
            "split/scaling/n=MAX": "execute median at the largest N / at the smallest (bar: <= 1.2)",
        },
        "metrics": {
            "beyond_guest_mib_per_vm": "sum over the N QEMUs of Pss - Pss_Shmem (smaps_rollup), / N",
            "anon_mib_per_vm": "sum of Anonymous / N (QEMU's private memory; guest RAM is shmem)",
            "shmem_mib_per_vm": "sum of Pss_Shmem / N (guest RAM and NoXS pages touched)",
            "host_mib_per_vm": "drop of MemAvailable since before the fleet / N (noisy: other tenants)",
            "cpu_pct_per_vm": "utime+stime of the N QEMUs over --idle-window, % of one CPU, / N",
            "answered/asked": "daytime apps only: VMs that answered a TCP daytime query (after the window)",
        },
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    execute = [r for r in results if r.params.get("measure") == "execute"]
    idle = [r for r in results if r.params.get("measure") == "idle"]
    return [
        *plots.lines(
            execute, outdir / "split-execute", "Execute path (request -> READY) with N VMs running",
            "ms", subtitle=subtitle,
        ),
        *plots.lines(
            idle, outdir / "split-idle-memory", "Host memory per idle VM beyond guest RAM",
            "MiB per VM", subtitle=subtitle,
        ),
    ]  # fmt: skip

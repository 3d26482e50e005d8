"""The split toolstack's execute path: lightvmd request -> READY reply, next to fork/exec.

:class:`SplitFleet` is a boot-suite fleet (grow/measure/close/pids): a private
``lightvm daemon run`` (its own process, as in production) on a private state dir with
a pool for the guest's flavour. ``measure()`` waits (untimed) until the pool is full and
quiet, then times one ``create`` request on the API socket to its reply, which the
daemon sends once the guest wrote READY; the sample also carries the daemon-side boot
breakdown and the path taken (1.0 = pool).

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm import api
from lightvm.bench.runner import REPO, Sample
from lightvm.errors import LightVMError
from lightvm.util import wait_until

BOOT_STEPS = ("resumed", "guest_entry", "devices_up", "ready")
GROW_BATCH = 25


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
    ) -> None:
        self.settle = settle  # False: measure while the refill of the previous take runs
        self.config = REPO / "examples" / f"{app}.toml"
        self.bg_config = REPO / "examples" / f"{bg_app or app}.toml"
        for path in (self.config, self.bg_config):
            if not path.is_file():
                raise LightVMError(f"{path}: no such example")
        self.accel = accel
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-split-")
        self.state = Path(self._tmp.name) / "state"
        self.state.mkdir()
        self.log_path = Path(self._tmp.name) / "lightvmd.log"
        argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state), "daemon", "run"]
        argv += ["--accel", accel, "--pool", str(self.config), "--pool-size", str(pool_size), "--pool-variant", variant]
        env = dict(os.environ)
        env.pop("LIGHTVM_STATE_DIR", None)
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
        if self.proc.poll() is not None:
            raise LightVMError(f"lightvmd exited: {self.log_path.read_text()[-500:]}")
        try:
            return bool(self.call("ping")["pid"] == self.proc.pid)
        except api.DaemonUnavailable:
            return False

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        with api.Client.connect(self.state, timeout=5.0) as client:
            return client.call(op, args, timeout=timeout)

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
        while self.count < count:
            n = min(GROW_BATCH, count - self.count)
            args = {"config": str(self.bg_config), "name": f"bg{self.count // GROW_BATCH}-{self.count}", "pool": False}
            args.update({"accel": self.accel, "count": n} if n > 1 else {"accel": self.accel})
            self.call("create", args, timeout=60.0 * n)
            self.count += n

    def measure(self) -> Sample:
        self._wait_pool_full()  # untimed: a full, quiet pool (no QEMU start competing)
        self.seq += 1
        name = f"m{self.seq}"
        with api.Client.connect(self.state, timeout=5.0) as client:
            t0 = time.perf_counter()
            (result,) = client.call("create", {"config": str(self.config), "name": name, "accel": self.accel})
            wall = (time.perf_counter() - t0) * 1000
        sample: Sample = {"ms": wall, "pool": 1.0 if result["path"] == "pool" else 0.0}
        for step in BOOT_STEPS:
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
        env = dict(os.environ, LIGHTVM_NO_DAEMON="1")
        subprocess.run(
            [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state), "destroy", "--all"],
            env=env, capture_output=True, timeout=1800, check=False,
        )  # fmt: skip
        self.count = 0
        self._tmp.cleanup()


def _idle_probe(pids: list[int], seconds: float = 5.0, sample: int = 50) -> dict[str, float]:
    """Host cost of the running VMs while idle: PSS and private memory per VM (a sample of
    ``sample`` VMs, from smaps_rollup), and CPU of all of them over ``seconds`` (in % of one core)."""
    if not pids:
        return {}
    clk = os.sysconf("SC_CLK_TCK")

    def ticks() -> int:
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
        return total

    t0, c0 = time.monotonic(), ticks()
    deadline = t0 + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))  # a measurement window, not a wait for a condition
    cpu = (ticks() - c0) / clk / (time.monotonic() - t0) * 100
    pss, private = [], []
    step = max(1, len(pids) // sample)
    for pid in pids[::step][:sample]:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        kb = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:] if line.split()[1:2]}
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
    p.add_argument("--variant", choices=("waiting", "paused"), default="waiting", help="prepared shell variant")
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

"""The table-driven benchmark harness (after Cloud Hypervisor's metrics runner).

A suite is a list of :class:`Benchmark` rows: a name, a function returning one
:data:`Sample` per call, warm-up and iteration counts, parameters (variant, N)
and an optional ``before`` hook that brings the host into the state the row
measures (e.g. grows a fleet of N-1 running VMs). :func:`run` executes the
rows in order under a progress bar on stderr and keeps every sample;
:func:`write_json` writes them with the run's metadata (``git describe``, host,
CPU, accelerator, QEMU version and binary, Python package, libvirtd and
crun versions, kernel, time). Benchmarks only record: the
comparison between commits is ci/ab_compare.py's job.

A sample is a dict of metric -> value; each row names its primary metric
(``metric``, e.g. ``ms``) and may record more (a boot breakdown). A row whose
function raises is recorded with its error and no samples, and the run goes
on: one broken baseline must not lose the other variants' numbers.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lightvm import paths
from lightvm.qemubin import qemu_binary

Sample = dict[str, float]

# The checkout, or an installed package's data folder: examples/ and images/build/ are under it
# in both layouts (lightvm/paths.py).
REPO = paths.data_root()
SCHEMA = 1
QEMU_BINARY = qemu_binary("microvm")  # what lightvm runs (lightvm/qemubin.py)


@dataclass
class Benchmark:
    """One row of a suite's table."""

    name: str  # unique within the run, e.g. "boot/lightvm-cold/n=10"
    fn: Callable[[], Sample]
    warmup: int = 1
    iterations: int = 10
    params: Mapping[str, Any] = field(default_factory=dict)  # {"variant": ..., "n": ...}
    metric: str = "ms"  # the primary metric in each sample
    unit: str = "ms"
    before: Callable[[], None] | None = None  # host set-up for this row, not timed


@dataclass
class Result:
    name: str
    params: dict[str, Any]
    metric: str
    unit: str
    warmup: int
    iterations: int
    samples: list[Sample] = field(default_factory=list)
    error: str = ""
    # the host while the row's iterations ran (HostLoad.as_dict): how busy, from what
    host: dict[str, float] = field(default_factory=dict)
    # attempts run again because of the host's steal (see run()): {"host": ..., "samples": [...]}
    discarded: list[dict[str, Any]] = field(default_factory=list)

    def values(self, metric: str | None = None) -> list[float]:
        key = metric or self.metric
        return [s[key] for s in self.samples if key in s]

    def as_dict(self) -> dict[str, Any]:
        metrics = sorted({k for s in self.samples for k in s})
        return {
            "name": self.name,
            "params": self.params,
            "metric": self.metric,
            "unit": self.unit,
            "warmup": self.warmup,
            "iterations": self.iterations,
            "error": self.error,
            "summary": {m: summarize(self.values(m)) for m in metrics},
            "host": self.host,
            "samples": self.samples,
            "discarded": self.discarded,
        }


def summarize(values: Sequence[float]) -> dict[str, float]:
    """median, mean, stdev, min, max, p10, p90 and n of ``values`` ({} when empty)."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "median": statistics.median(ordered),
        "mean": statistics.fmean(ordered),
        "stdev": statistics.stdev(ordered) if n > 1 else 0.0,
        "min": ordered[0],
        "max": ordered[-1],
        "p10": _quantile(ordered, 0.10),
        "p90": _quantile(ordered, 0.90),
        "n": float(n),
    }


def _quantile(ordered: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default).
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _cpu_jiffies() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal ([] if unreadable)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


class HostLoad:
    """How busy the host's CPUs were between :meth:`start` and :meth:`as_dict` (every
    process: the suite's own instances too), and the 1-minute load average at the start.
    Recorded per row so that a reader can tell a row measured on a busy shared host."""

    def __init__(self) -> None:
        self.loadavg = os.getloadavg()[0]
        self.t0 = _cpu_jiffies()

    def as_dict(self) -> dict[str, float]:
        t1 = _cpu_jiffies()
        out = {"loadavg_1m": round(self.loadavg, 2)}
        if len(self.t0) == len(t1) == 8:
            d = [b - a for a, b in zip(self.t0, t1, strict=True)]
            total = sum(d)
            if total > 0:
                out["cpu_busy_pct"] = round(100 * (total - d[3] - d[4]) / total, 1)
                out["steal_pct"] = round(100 * d[7] / total, 1)
        return out


STEAL_WAIT_S = 20.0  # the longest wait for a quiet second before one retry
STEAL_BUDGET_S = 180.0  # ... and over a whole run


def wait_for_low_steal(max_pct: float, timeout: float, window: float = 1.0) -> float:
    """Wait until a ``window`` of the CPUs' time has at most ``max_pct`` % steal, or
    ``timeout`` s have passed; the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 + window <= timeout:
        load = HostLoad()
        time.sleep(window)
        if load.as_dict().get("steal_pct", 0.0) <= max_pct:
            break
    return time.monotonic() - t0


class Progress:
    """A one-line progress bar on a stream (stderr); plain lines when it is not a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_line = ""

    def step(self, label: str, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        self.show(label)

    def show(self, label: str) -> None:
        frac = self.done / self.total
        filled = int(frac * self.width)
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label}"
        if self.tty:
            self.stream.write("\r\x1b[K" + line[:150])
        elif label != self._last_line:
            self.stream.write(line + "\n")  # one line per row, not per iteration
        self._last_line = label
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        else:
            self._last_line = ""
            self.show("done")
        self.stream.flush()


def run(
    benchmarks: Sequence[Benchmark],
    progress: Progress | None = None,
    max_steal_pct: float | None = None,
    retries: int = 2,
) -> list[Result]:
    """Run every row (warm-up, then iterations); every sample is kept, errors recorded.

    ``max_steal_pct``: when the hypervisor under this host stole more than that share of
    the CPUs while a row's iterations ran (other guests of the physical machine), the
    row's iterations run again, up to ``retries`` more times, and the attempt with the
    least steal is kept. The other attempts stay in the result (``discarded``). Before a
    retry the run waits for a second with less steal than that (up to STEAL_WAIT_S; at
    most STEAL_BUDGET_S over the whole run): steal comes in spells of minutes.
    """
    bar = progress or Progress(sum(b.warmup + b.iterations for b in benchmarks))
    results = []
    waited_s = 0.0  # for a quiet moment before the retries, over the whole run
    for bench in benchmarks:
        result = Result(bench.name, dict(bench.params), bench.metric, bench.unit, bench.warmup, bench.iterations)
        results.append(result)
        todo = bench.warmup + bench.iterations
        try:
            bar.show(f"{bench.name} (set-up)")
            if bench.before is not None:
                bench.before()
            for attempt in range(1 + max(0, retries)):
                if attempt:
                    bar.show(f"{bench.name} (again: {result.host.get('steal_pct')} % steal)")
                    assert max_steal_pct is not None
                    waited_s += wait_for_low_steal(max_steal_pct, min(STEAL_WAIT_S, STEAL_BUDGET_S - waited_s))
                load = HostLoad()
                samples = []
                for i in range(bench.warmup + bench.iterations):
                    sample = bench.fn()
                    if i >= bench.warmup:
                        samples.append({k: float(v) for k, v in sample.items()})
                    if not attempt:
                        todo -= 1
                        bar.step(bench.name)
                host = load.as_dict()
                if attempt and host.get("steal_pct", 0.0) >= result.host.get("steal_pct", 0.0):
                    result.discarded.append({"host": host, "samples": samples})
                else:
                    if attempt:
                        result.discarded.append({"host": result.host, "samples": result.samples})
                    result.samples, result.host = samples, host
                if max_steal_pct is None or result.host.get("steal_pct", 0.0) <= max_steal_pct:
                    break
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            tb = traceback.format_exc(limit=4)
            bar.stream.write(f"\n{bench.name}: FAILED: {result.error}\n{tb}")
            bar.step(f"{bench.name} failed", todo)
    bar.close()
    return results


# ---------------------------------------------------------------------- metadata


def _run_text(argv: list[str], cwd: Path | None = None, timeout: float = 20) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def qemu_version(binary: str = QEMU_BINARY) -> str:
    out = _run_text([binary, "--version"])
    return out.splitlines()[0] if out else "unknown"


# The Python distributions whose version can move a result (libvirt-python: the libvirt baseline).
PACKAGES = ("lightvm", "pyroute2", "paramiko", "libvirt-python")
# Host programs the baselines run, each asked for its version (first line) with a short timeout.
PROGRAMS = {"libvirtd": ["libvirtd", "--version"], "crun": ["crun", "--version"]}
VERSION_TIMEOUT_S = 5.0


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (importlib.metadata), None when it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def program_versions(programs: Mapping[str, Sequence[str]] = PROGRAMS) -> dict[str, str | None]:
    """First line of each program's ``--version``; None when it is absent, fails or times out."""
    out: dict[str, str | None] = {}
    for name, argv in programs.items():
        text = _run_text(list(argv), timeout=VERSION_TIMEOUT_S) if shutil.which(argv[0]) else ""
        out[name] = text.splitlines()[0] if text else None
    return out


def metadata(suite: str, accel: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a result needs to be compared later: code, host, accelerator, QEMU, packages, time."""
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "suite": suite,
        "git_describe": _run_text(["git", "describe", "--always", "--dirty"], cwd=REPO) or "unknown",
        "git_commit": _run_text(["git", "rev-parse", "HEAD"], cwd=REPO) or "unknown",
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count() or 0,
        "mem_total_mib": mem_kib // 1024,
        "accel": accel,
        "qemu_version": qemu_version() if shutil.which(QEMU_BINARY) else "missing",
        "qemu_binary": shutil.which(QEMU_BINARY) or QEMU_BINARY,
        "packages": package_versions(),
        "programs": program_versions(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": dict(options or {}),
    }


def write_run(out: Path, meta: Mapping[str, Any], doc: Mapping[str, Any], summary: str) -> Path:
    """A suite with its own result shape (burst, splitnic): ``out``/results.json holding
    ``{"meta": meta, **doc}`` (atomically) and ``out``/summary.txt; the results.json path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": dict(meta), **doc}, indent=1))
    tmp.replace(path)
    (out / "summary.txt").write_text(summary + "\n")
    return path


def write_json(
    path: Path, meta: Mapping[str, Any], results: Sequence[Result], extra: Mapping[str, Any] | None = None
) -> None:
    """Write the results file (atomically: a reader never sees half a file)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "meta": {**meta, "loadavg_end": list(os.getloadavg())},
        "benchmarks": [r.as_dict() for r in results],
    }
    if extra:
        doc.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def results_from_doc(doc: dict[str, Any]) -> list[Result]:
    """The :class:`Result` rows of a results file (to re-plot or re-summarise it)."""
    return [
        Result(
            b["name"], dict(b.get("params", {})), b["metric"], b.get("unit", ""), int(b.get("warmup", 0)),
            int(b.get("iterations", 0)), [dict(s) for s in b.get("samples", [])], b.get("error", ""),
        )
        for b in doc.get("benchmarks", [])
    ]  # fmt: skip


# ---------------------------------------------------------------------- summary


def summary_table(results: Sequence[Result], reference: Mapping[str, str] | None = None) -> str:
    """Medians, p10..p90 and the ratio to a reference variant at the same parameters.

    ``reference`` maps a variant to the variant it is compared with (e.g. every
    baseline -> ``lightvm-cold``); rows without a ``variant`` param get no ratio.
    """
    by_key = {(r.params.get("variant"), _point(r.params)): r for r in results}
    lines = [f"{'benchmark':<44} {'median':>12} {'p10':>9} {'p90':>9} {'n':>4}  ratio (median / reference's)"]
    for r in results:
        values = r.values()
        if r.error or not values:
            lines.append(f"{r.name:<44} {'FAILED' if r.error else 'no data':>12}  {r.error[:70]}")
            continue
        s = summarize(values)
        ratio = ""
        variant = r.params.get("variant")
        ref_name = (reference or {}).get(str(variant)) if variant is not None else None
        if ref_name and ref_name != variant:
            ref = by_key.get((ref_name, _point(r.params)))
            if ref is not None and ref.values():
                ref_median = statistics.median(ref.values())
                if ref_median > 0:
                    ratio = f"{s['median'] / ref_median:.2f}x {ref_name}"
        median = f"{s['median']:.3f} {r.unit}"
        lines.append(f"{r.name:<44} {median:>12} {s['p10']:>9.3f} {s['p90']:>9.3f} {int(s['n']):>4}  {ratio}")
    return "\n".join(lines)


def _point(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in params.items() if k not in ("variant", "kind")))


__all__ = [
    "Benchmark",
    "HostLoad",
    "Progress",
    "Result",
    "Sample",
    "load_json",
    "metadata",
    "results_from_doc",
    "run",
    "summarize",
    "summary_table",
    "wait_for_low_steal",
    "write_json",
]

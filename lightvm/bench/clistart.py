"""``lightvm bench cli``: a whole ``lightvm`` command, wall time, next to starting Python.

Issue 12's bar for the CLI: ``lightvm create CONFIG`` through lightvmd (a pool hit) and
``lightvm list`` cost no more than ``python3 -c pass``. Each row times one command as a
user runs it (the ``lightvm`` next to this interpreter, a fresh process, to its exit: the
compiled launcher, which lightvmd's warm CLI server runs the VM commands for, or in an
install from before it, the Python script; docs/cli-startup.md "The launcher"):

=============  ==============================================================================
variant        command
=============  ==============================================================================
python3        ``python3 -c pass``: this interpreter (``sys.executable``, the venv's python:
               the same start-up and site as lightvm-py's), the reference
python3-S      ``python3 -S -c pass``: without ``site`` (what its .pth files cost)
stdlib-floor   ``python3 -c 'import errno, _json, _signal, _socket'``: the thin path's standard
               modules, no lightvm module (the Python command, bin/lightvm-py, imports no ``re``)
fork-exec      a static binary (lightvm/bench/forkexec.py) that writes one byte and exits
create-pool    ``lightvm create CONFIG --json`` through a private lightvmd, a pool hit
list           ``lightvm list`` through it (the measured VM of create-pool is gone by then)
destroy        ``lightvm destroy NAME`` through it (the VM made untimed, from the pool)
create-cold    ``lightvm create CONFIG --json`` with no lightvmd on its state dir (one-shot)
=============  ==============================================================================

Every sample is paired with a ``python3 -c pass`` run right before or after it (the order
flips each time): ``vs_python3``, their ratio, is each row's primary metric, so a change
of the shared host's load between rows does not move it (the rows run one after the
other; their ``ms`` medians come from different moments). The python3 row pairs two
``python3 -c pass`` runs: its spread is the pairing's own. The create rows also record the VM's own READY
(``vm_ready_ms``) and the rest of the command (``cli_ms`` = wall - READY).

Bytecode: every child runs with ``PYTHONPYCACHEPREFIX`` in the run's temp dir and without
``PYTHONDONTWRITEBYTECODE``, so after the warm-up every module comes from cached bytecode
as from an installed wheel (pip compiles at install); without that, a checkout run with
PYTHONDONTWRITEBYTECODE=1 compiles each lightvm module it imports on every command.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm.bench.runner import REPO, Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError

REFERENCE = "python3"
VARIANTS = {
    "python3": "python3 -c pass with this interpreter (the venv's python: the Python command's start-up)",
    "python3-S": "python3 -S -c pass: the same without site (the .pth files: an editable install's finder)",
    "stdlib-floor": "python3 -c 'import errno, _json, _signal, _socket': what the thin path's stdlib adds",
    "fork-exec": "a static binary that writes one byte and exits",
    "create-pool": "lightvm create CONFIG --json through a private lightvmd, a pool hit",
    "list": "lightvm list through that lightvmd",
    "destroy": "lightvm destroy NAME through that lightvmd",
    "create-cold": "lightvm create CONFIG --json with no lightvmd (one-shot)",
}
TIMEOUT = 60.0


class CliRig:
    """The run's temp dir, the static binary, a lightvmd with a pool and a one-shot state dir."""

    def __init__(self, opts: SuiteOptions, stack: contextlib.ExitStack) -> None:
        from lightvm.bench import forkexec
        from lightvm.bench.split import SplitFleet

        self.accel = opts.accel
        self.config = REPO / "examples" / f"{opts.app}.toml"
        self.lightvm = Path(sys.executable).parent / "lightvm"  # the command of this install
        if not self.lightvm.is_file():
            raise LightVMError(f"{self.lightvm}: no lightvm command next to {sys.executable}; pip install it")
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lightvm-bench-cli-"))
        self.static = forkexec.build_static(Path(tmp))
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "LIGHTVM_NO_DAEMON")}
        self.env.pop("LIGHTVM_STATE_DIR", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        self.cold_state = Path(tmp) / "cold"
        self.fleet = SplitFleet(app=opts.app, accel=opts.accel, pool_size=1)
        stack.callback(self.fleet.close)
        stack.callback(self._destroy_cold)
        self.seq = 0
        self.flip = False

    def run(self, argv: list[str]) -> tuple[float, str]:
        """Wall ms of ``argv`` from spawn to exit, and its stdout.

        :raise LightVMError: it failed (its stderr) or took over TIMEOUT.
        """
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=self.env, cwd=REPO)
        except subprocess.TimeoutExpired:
            raise LightVMError(f"{' '.join(argv)}: no exit within {TIMEOUT:.0f} s") from None
        ms = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0:
            raise LightVMError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return ms, proc.stdout

    def python(self) -> float:
        return self.run([sys.executable, "-c", "pass"])[0]

    def paired(self, measure: Any) -> Sample:
        """``measure()`` -> (ms, extra metrics), with a python3 -c pass before or after it."""
        self.flip = not self.flip
        if self.flip:
            ref = self.python()
            ms, extra = measure()
        else:
            ms, extra = measure()
            ref = self.python()
        return {"ms": ms, "python3_ms": ref, "vs_python3": ms / ref, **extra}

    def _name(self) -> str:
        self.seq += 1
        return f"cli{self.seq}"

    def _create(self, state: Path, name: str) -> tuple[float, dict[str, float]]:
        argv = [str(self.lightvm), "--state-dir", str(state), "create", str(self.config), "--accel", self.accel]
        ms, out = self.run([*argv, "--name", name, "--json"])
        (result,) = [json.loads(line) for line in out.splitlines() if line.strip()]
        ready = float(result["boot_ms"]["ready"])
        extra = {"vm_ready_ms": ready, "cli_ms": ms - ready}
        if "path" in result:
            extra["pool"] = 1.0 if result["path"] == "pool" else 0.0
        return ms, extra

    def create_pool(self) -> Sample:
        self.fleet._wait_pool_full()  # untimed: a full, quiet pool (no QEMU start competing)
        name = self._name()
        try:
            return self.paired(lambda: self._create(self.fleet.state, name))
        finally:
            self.fleet.call("destroy", {"names": [name]})

    def list(self) -> Sample:
        self.fleet._wait_pool_full()
        return self.paired(lambda: (self.run([str(self.lightvm), "--state-dir", str(self.fleet.state), "list"])[0], {}))

    def destroy(self) -> Sample:
        name = self._name()
        self.fleet.call("create", {"config": str(self.config), "name": name, "accel": self.accel})
        self.fleet._wait_pool_full()
        argv = [str(self.lightvm), "--state-dir", str(self.fleet.state), "destroy", name]
        return self.paired(lambda: (self.run(argv)[0], {}))

    def create_cold(self) -> Sample:
        name = self._name()
        try:
            return self.paired(lambda: self._create(self.cold_state, name))
        finally:
            self._destroy_cold()

    def _destroy_cold(self) -> None:
        if self.cold_state.is_dir():
            from lightvm.toolstack import Toolstack

            Toolstack(self.cold_state).destroy_all()

    def python_s(self) -> Sample:
        return self.paired(lambda: (self.run([sys.executable, "-S", "-c", "pass"])[0], {}))

    def stdlib_floor(self) -> Sample:
        code = "import errno, _json, _signal, _socket"
        return self.paired(lambda: (self.run([sys.executable, "-c", code])[0], {}))

    def fork_exec(self) -> Sample:
        return self.paired(lambda: (self.run([str(self.static)])[0], {}))


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    rig = CliRig(opts, stack)
    fns = {
        "python3": lambda: rig.paired(lambda: (rig.python(), {})),  # the pairing's own spread (~1.0)
        "python3-S": rig.python_s,
        "stdlib-floor": rig.stdlib_floor,
        "fork-exec": rig.fork_exec,
        "create-pool": rig.create_pool,
        "list": rig.list,
        "destroy": rig.destroy,
        "create-cold": rig.create_cold,
    }
    return [
        Benchmark(
            f"cli/{variant}",
            fns[variant],
            warmup=opts.warmup,
            iterations=opts.iterations,
            params={"variant": variant, "app": opts.app},
            metric="vs_python3",
            unit="x",
        )
        for variant in VARIANTS
    ]


def describe() -> dict[str, Any]:
    return {
        "variants": VARIANTS,
        "reference": f"{REFERENCE}: {sys.executable} -c pass",
        "metrics": {
            "ms": "wall time of the whole command, spawn to exit",
            "python3_ms": "the python3 -c pass run paired with this sample",
            "vs_python3": "ms / python3_ms of the same pair, the primary metric (bar: <= 1.0 for create-pool, list)",
            "vm_ready_ms": "create rows: the VM's READY (boot_ms.ready of the create's JSON)",
            "cli_ms": "create rows: ms - vm_ready_ms, what the command cost besides the VM",
            "pool": "create-pool: 1 when lightvmd answered from its pool",
        },
        "bytecode": "PYTHONPYCACHEPREFIX in the run's temp dir, warmed: modules load from bytecode",
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    groups = [(str(r.params.get("variant")), r.values("vs_python3")) for r in results]
    title = "Whole command's wall time / a python3 -c pass run next to it"
    return plots.bars(groups, outdir / "cli", title, "x python3 -c pass (paired)", subtitle=subtitle)


# ----------------------------------------------- two trees side by side (a change's figures)


def export_tree(rev: str, dest: Path) -> Path:
    """``lightvm/`` of git revision ``rev`` under ``dest`` (git archive), for PYTHONPATH.

    :raise LightVMError: not a revision of this checkout.
    """
    import io
    import tarfile

    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, "lightvm"], capture_output=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise LightVMError(f"git archive {rev}: no answer within 60 s") from None
    if proc.returncode != 0:
        raise LightVMError(f"git archive {rev}: {proc.stderr.decode(errors='replace').strip()}; name a commit")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def compare(rev: str, iterations: int, app: str, accel: str, bytecode: bool = True) -> dict[str, list[float]]:
    """Alternating wall times of ``python3 -c pass`` and of ``lightvm list``, ``lightvm
    create`` (pool hit) and a one-shot ``lightvm create`` (no lightvmd on its state dir)
    from the tree of ``rev`` and from this checkout's, both through a
    copy of the installed Python command (``lightvm-py``) with PYTHONPATH on the tree (ahead of the
    editable install's finder), against one private lightvmd; bytecode cached as in
    :class:`CliRig` (``bytecode`` False: PYTHONDONTWRITEBYTECODE=1 and no cache, so each
    lightvm module imported is compiled on every command, as in this project's sessions).
    One warm-up round is left out."""
    from lightvm.bench.split import SplitFleet

    with contextlib.ExitStack() as stack:
        opts = SuiteOptions(accel=accel, app=app)
        rig = CliRig(opts, stack)
        tmp = Path(rig.env["PYTHONPYCACHEPREFIX"]).parent
        # The Python command (lightvm-py), not the launcher: a tree's code must run, and the
        # launcher would hand the command to the warm server's (the installed tree's) or exec
        # its own lightvm-py. An install from before the launcher has the script as lightvm.
        python_command = rig.lightvm.with_name("lightvm-py")
        script = tmp / "lightvm"
        script.write_bytes((python_command if python_command.is_file() else rig.lightvm).read_bytes())
        script.chmod(0o755)
        trees = {rev: export_tree(rev, tmp / "before"), "this tree": REPO}
        envs = {label: dict(rig.env, PYTHONPATH=str(tree)) for label, tree in trees.items()}
        if not bytecode:
            for env in envs.values():
                env.pop("PYTHONPYCACHEPREFIX")
                env["PYTHONDONTWRITEBYTECODE"] = "1"
            rig.env.pop("PYTHONPYCACHEPREFIX")  # the python3 -c pass runs too
            rig.env["PYTHONDONTWRITEBYTECODE"] = "1"
        for label, env in envs.items():
            where = subprocess.run(
                [sys.executable, "-c", "import lightvm; print(lightvm.__file__)"],
                capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp,  # -c puts the cwd first
            ).stdout.strip()  # fmt: skip
            if not where.startswith(str(trees[label])):
                raise LightVMError(f"{label}: PYTHONPATH did not win over the installed lightvm ({where})")
        fleet: SplitFleet = rig.fleet
        state = str(fleet.state)
        times: dict[str, list[float]] = {"python3 -c pass": []}
        for label in envs:
            times[f"{label}: lightvm list"] = []
            times[f"{label}: lightvm create (pool)"] = []
            times[f"{label}: lightvm create (cold, one-shot)"] = []
        for i in range(iterations + 1):
            order = list(envs) if i % 2 else list(reversed(envs))
            for label in order:
                rig.env = envs[label]
                fleet._wait_pool_full()
                name = rig._name()
                try:
                    ms, _ = rig.run([str(script), "--state-dir", state, "create", str(rig.config), "--accel", rig.accel,
                                     "--name", name])  # fmt: skip
                finally:
                    fleet.call("destroy", {"names": [name]})
                list_ms, _ = rig.run([str(script), "--state-dir", state, "list"])
                try:  # one-shot: no lightvmd on this state dir
                    cold_ms, _ = rig.run([str(script), "--state-dir", str(rig.cold_state), "create", str(rig.config),
                                          "--accel", rig.accel, "--name", name])  # fmt: skip
                finally:
                    rig._destroy_cold()
                if i:
                    times[f"{label}: lightvm create (pool)"].append(ms)
                    times[f"{label}: lightvm list"].append(list_ms)
                    times[f"{label}: lightvm create (cold, one-shot)"].append(cold_ms)
            rig.env = envs[rev]  # the same variables for python3 -c pass (its PYTHONPATH unused)
            python_ms = rig.python()
            if i:
                times["python3 -c pass"].append(python_ms)
        return times


def main(argv: list[str] | None = None) -> int:
    """``python -m lightvm.bench.clistart --against REV``: a change's before/after figures."""
    import argparse
    import statistics

    parser = argparse.ArgumentParser(prog="python -m lightvm.bench.clistart", description=compare.__doc__)
    parser.add_argument("--against", required=True, metavar="REV", help="the git revision to compare with")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--app", default="noop")
    parser.add_argument("--accel", default="tcg")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile every lightvm module per command")
    args = parser.parse_args(argv)
    try:
        times = compare(args.against, args.iterations, args.app, args.accel, bytecode=not args.no_bytecode_cache)
    except LightVMError as exc:
        print(f"lightvm: error: {exc}", file=sys.stderr)
        return 1
    ref = statistics.median(times["python3 -c pass"])
    cache = "no bytecode cache" if args.no_bytecode_cache else "bytecode cached"
    print(f"load average {os.getloadavg()[0]:.2f}; {cache}; medians of {args.iterations}, alternating:")
    for label, values in times.items():
        med = statistics.median(values)
        print(f"  {label:<42} {med:8.2f} ms  (p10 {_q(values, 0.1):.2f}, p90 {_q(values, 0.9):.2f})  {med / ref:.2f}x")
    return 0


def _q(values: list[float], q: float) -> float:
    from lightvm.bench.runner import _quantile

    return _quantile(sorted(values), q)


__all__ = ["REFERENCE", "VARIANTS", "CliRig", "benchmarks", "compare", "describe", "export_tree", "plot"]


if __name__ == "__main__":
    sys.exit(main())

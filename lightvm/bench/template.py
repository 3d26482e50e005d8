"""``lightvm bench template``: restores and clones from a template (lightvm/mobility/template.py)
side by side with the checkpoint restore they replace.

Set-up (untimed): a daytime VM (user networking, port 13 published), saved to a checkpoint,
made into a template; a lightvmd on the bench's state dir keeping ``max(--vms)`` prepared
``-incoming`` shells of the template and of the checkpoint (``daemon run --incoming``).
Rows (``--vms`` is N for the clone rows; the restore rows run once, at N = 1):

* ``restore-ckpt-pool``       restore request of the checkpoint to lightvmd -> reply (client wall,
                              on an API connection opened and served before the sample, as a
                              client that keeps one: the split suite's way; ``connect_ms`` is
                              what a connection of its own would add): a prepared shell, the whole
                              guest RAM in the stream (the baseline);
* ``restore-template-pool``   the same from the template: a prepared shell mapping the template's
                              RAM, the device state only in the stream; ``daemon_ready_ms``
                              is the daemon's own request -> guest READY;
* ``restore-template-prepared`` in this process: prepare_from_template untimed, then finish
                              (stream -> page -> cont -> guest acknowledges);
* ``restore-template-cold``   in this process: restore_template, QEMU start included;
* ``clone-pool``              ``clone`` request of N copies to lightvmd -> reply, then until every
                              copy answered a daytime query on its own port (``ms``); also
                              ``reply_ms`` and ``pool_hits``;
* ``clone-cold``              the same in this process without lightvmd (QEMU starts included).

Each sample's VMs are destroyed after it (untimed), and the pool refilled before the next.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm.bench.ports import free_port, free_port_run
from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.split import daemon_answers, daemon_call, read_daytime
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError
from lightvm.util import wait_until

REPO = Path(__file__).resolve().parents[2]
REFERENCE = "restore-ckpt-pool"
RESTORE_OPS = ("restore-ckpt-pool", "restore-template-pool", "restore-template-prepared", "restore-template-cold")
CLONE_OPS = ("clone-pool", "clone-cold")


class _Templates:
    def __init__(self, opts: SuiteOptions) -> None:
        from lightvm.mobility.save import save
        from lightvm.mobility.template import create_template
        from lightvm.spec import load_spec
        from lightvm.toolstack import Toolstack

        self.opts = opts
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-template-")
        root = Path(self._tmp.name)
        self.state = root / "state"
        self.ts = Toolstack(self.state)
        self.port = free_port()
        spec = load_spec(REPO / "examples" / "daytime.toml").with_publish([f"127.0.0.1:{self.port}:13"], 1)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "lightvmd.log"
        try:
            self.ts.create(spec, accel=opts.accel)
            if not wait_until(lambda: read_daytime(self.port), timeout=20, interval=0.05):
                raise LightVMError("bench template: the daytime VM does not answer")
            self.ckpt = root / "daytime.lvm"
            save(self.ts, "daytime", self.ckpt)  # destroyed: its port is the restores' port
            self.tdir = root / "daytime.lvt"
            create_template(self.ts, str(self.ckpt), self.tdir)
            self.shells = max(opts.vms)
            self._start_daemon()
        except BaseException:
            self.close()
            raise

    def _start_daemon(self) -> None:
        argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(self.state), "daemon", "run"]
        argv += ["--accel", self.opts.accel, "--pool-size", "0", "--incoming-size", str(self.shells)]
        argv += ["--incoming", str(self.tdir), "--incoming", str(self.ckpt)]
        env = dict(os.environ)
        env.pop("LIGHTVM_STATE_DIR", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        if not wait_until(self._answers, timeout=30.0, interval=0.01, max_interval=0.1):
            raise LightVMError(f"lightvmd did not answer: {self.log_path.read_text()[-500:]}")

    def _answers(self) -> bool:
        assert self.proc is not None
        return daemon_answers(self.proc, self.state, lambda: self.log_path.read_text()[-500:])

    def _pool_full(self, timeout: float = 300.0) -> None:
        def full() -> bool:
            flavours = daemon_call(self.state, "ping")["incoming"] or []
            return len(flavours) == 2 and all(f["ready"] >= self.shells and not f["preparing"] for f in flavours)

        if not wait_until(full, timeout=timeout, interval=0.05, max_interval=0.5):
            raise LightVMError(f"lightvmd did not prepare {self.shells} shells per kind in {timeout:.0f} s")
        time.sleep(self.opts.settle_s)

    def _clean(self) -> None:
        """Destroy every VM of the run (the last sample's), so names are free for the next.

        A destroy that fails is tried again (lightvmd may still hold the VM a moment after
        its reply); names left after three rounds fail the sample with the reasons, rather
        than failing the next one with "already exists".
        """
        errors: dict[str, str] = {}
        for attempt in range(3):
            names = self.ts.state.names()
            if not names:
                return
            if attempt:
                time.sleep(0.2)
            for name in names:
                try:
                    self.ts.destroy(name)
                except LightVMError as exc:
                    errors[name] = str(exc)
        left = self.ts.state.names()
        if left:
            reasons = "; ".join(f"{n}: {errors.get(n, '?')}" for n in left[:3])
            raise LightVMError(f"bench template: {len(left)} VMs of the last sample would not go ({reasons})")

    def measure(self, op: str, n: int) -> Sample:
        self._clean()
        if op.endswith("-pool"):
            self._pool_full()
        if op == "restore-ckpt-pool" or op == "restore-template-pool":
            from lightvm.daemon import api

            file = str(self.ckpt if op == "restore-ckpt-pool" else self.tdir)
            c0 = time.perf_counter()
            with api.Client.connect(self.state, timeout=5.0) as client:
                client.call("ping")  # the connection served once before the sample
                connect_ms = (time.perf_counter() - c0) * 1000
                time.sleep(0.05)  # an idle kept connection, as a client's between requests
                t0 = time.perf_counter()
                out = client.call("restore", {"file": file, "name": "r", "timeout": 10.0}, timeout=60.0)
                ms = (time.perf_counter() - t0) * 1000
            assert out["path"] == "pool", out
            self._answered([self.port])
            return {
                "ms": ms,
                "connect_ms": connect_ms,
                "daemon_ready_ms": float(out["restore_ms"]),
                "finish_ms": float(out["finish_ms"]),
            }
        if op == "restore-template-prepared":
            from lightvm.mobility.template import prepare_from_template

            prepared, path, offset = prepare_from_template(self.ts, self.tdir, "r")
            time.sleep(0.05)  # QEMU settled, as a pool shell is
            t0 = time.perf_counter()
            result = prepared.finish(path, offset)
            ms = (time.perf_counter() - t0) * 1000
            self._answered([self.port])
            return {"ms": ms, "finish_ms": result.finish_ms}
        if op == "restore-template-cold":
            from lightvm.mobility.template import restore_template

            t0 = time.perf_counter()
            restore_template(self.ts, self.tdir, "r")
            ms = (time.perf_counter() - t0) * 1000
            self._answered([self.port])
            return {"ms": ms}
        first = free_port_run(n)
        ports = list(range(first, first + n))
        publish = f"127.0.0.1:{first}:13"
        t0 = time.perf_counter()
        if op == "clone-pool":
            args = {"source": str(self.tdir), "count": n, "name": "c{i}", "publish": publish, "timeout": 10.0}
            out = daemon_call(self.state, "clone", args, timeout=60.0 + n)
            extra = {"pool_hits": float(out["pool_hits"])}
        else:
            from lightvm.mobility.clone import clone

            clone(self.ts, str(self.tdir), n, "c{i}", publish)
            extra = {}
        reply = (time.perf_counter() - t0) * 1000
        self._answered(ports)
        ms = (time.perf_counter() - t0) * 1000
        return {"ms": ms, "reply_ms": reply, "per_clone_ms": ms / n, **extra}

    def _answered(self, ports: list[int]) -> None:
        """Every port answers a daytime query (asked in turn until each did, 10 s at most)."""
        left = list(ports)
        deadline = time.monotonic() + 10.0
        while left:
            left = [p for p in left if not read_daytime(p, timeout=1.0)]
            if left and time.monotonic() > deadline:
                raise LightVMError(f"{len(left)} of {len(ports)} VMs did not answer on their port")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self._clean()
        self._tmp.cleanup()


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    state: list[_Templates] = []

    def fixture() -> _Templates:
        if not state:
            state.append(_Templates(opts))
            stack.callback(state[0].close)
        return state[0]

    def row(op: str, n: int) -> Benchmark:
        return Benchmark(
            f"template/{op}/n={n}", lambda: fixture().measure(op, n), warmup=opts.warmup,
            iterations=opts.iterations, params={"variant": op, "n": n},
        )  # fmt: skip

    rows = [row(op, 1) for op in RESTORE_OPS]
    return rows + [row(op, n) for n in sorted(set(opts.vms)) for op in CLONE_OPS]


def describe() -> dict[str, Any]:
    doc = (__doc__ or "").split("Rows", 1)[-1]
    return {
        "variants": {
            op: {"kind": "lightvm", "doc": f"lightvm/bench/template.py: {op}"} for op in (*RESTORE_OPS, *CLONE_OPS)
        },
        "rows": doc.strip(),
        "not_implemented": ["clones on a tap network (refused: the guest does not re-read its IP)"],
        "reference": REFERENCE,
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    return plots.lines(
        [r for r in results if str(r.params.get("variant", "")).startswith("clone")],
        outdir / "template-clone",
        "Clones of a daytime template: request -> every clone answers",
        "ms",
        subtitle=subtitle,
    )


__all__ = ["CLONE_OPS", "REFERENCE", "RESTORE_OPS", "benchmarks", "describe", "plot"]

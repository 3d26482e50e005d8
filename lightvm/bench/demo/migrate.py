"""The live-migration demo (``scripts/demo-migrate.sh``): a daytime VM moved A -> B -> A
between two namespace "hosts" on one L2 segment while a client asks it the time every
10 ms (lightvm/bench/demo/segment.py is the layout, lightvm/bench/demo/client.py the client).

Per migration it prints the total time (request to the source's lightvmd -> its reply:
the guest runs on the destination, the source is gone), QEMU's downtime and bytes sent,
and what the client saw: the longest time between two answers around the migration
(the *gap*) and any failed query. Then a PNG timeline of the client's answers with the
migrations marked. Everything it made is removed at the end, on failure, on Ctrl-C and
on SIGTERM (not on SIGKILL: the names carry the PID, so a next run does not collide).

:class:`Demo` is also what the ``migrate-gap`` row of ``lightvm bench checkpoint`` measures with.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm import paths
from lightvm.bench.demo.client import Events, gap
from lightvm.bench.demo.segment import BRIDGE, PREFIX, VM_IP, DemoError, Host, Segment, reap_stale, wait_gone
from lightvm.bench.sshhost import call
from lightvm.errors import LightVMError
from lightvm.util import wait_until

VM = "daytime"
SETTLE_S = 0.3  # the client runs undisturbed this long between migrations


@dataclass
class Migration:
    index: int
    src: str
    dst: str
    t0: int  # request sent (CLOCK_MONOTONIC ns)
    t1: int  # reply received
    total_ms: float
    downtime_ms: float  # QEMU's
    handover_ms: float  # the destination: stream complete -> guest running there (page, cont, guest's ack)
    bytes: int
    gap_ms: float | None  # the client's longest time between two answers around it
    failed: int  # client queries started around it that failed

    def line(self) -> str:
        g = "no answer" if self.gap_ms is None else f"{self.gap_ms:6.1f} ms"
        return (
            f"#{self.index:<3} {self.src.upper()} -> {self.dst.upper()}  total {self.total_ms:6.1f} ms  "
            f"QEMU downtime {self.downtime_ms:4.1f} ms  handover {self.handover_ms:5.1f} ms  "
            f"sent {self.bytes / 1e3:6.1f} KB  "
            f"client gap {g}  failed queries {self.failed}"
        )


class Demo:
    """A running demo: segment up, client asking, the VM on host A. Use as a context manager."""

    def __init__(
        self,
        root: Path,
        timeout_ms: float = 1000.0,
        announce: bool = True,
        accel: str = "tcg",
        hedge_ms: float = 20.0,
        tunnel: bool = False,
    ) -> None:
        self.seg = Segment(root, tag=root.name)
        self.root = root
        self.timeout_ms = timeout_ms
        self.hedge_ms = hedge_ms
        # Direct TCP by default here: both "hosts" are namespaces of this machine, so the
        # stream never leaves it (lightvm migrate's own default is the encrypted tunnel).
        self.tunnel = tunnel
        self.announce = announce
        self.accel = accel
        self.events = Events([], [])
        self.migrations: list[Migration] = []
        self.where: Host = self.seg.a
        self._client: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Demo:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        problems = self.close()
        if problems and exc[0] is None:
            raise DemoError("cleanup left: " + "; ".join(problems))

    def start(self) -> None:
        progress(f"run {self.seg.tag}: setting up hosts A and B and the client (namespaces, bridges, sshd, lightvmd)")
        t = time.monotonic()
        self.seg.up(self.accel)
        if not self.announce:
            self.seg.block_announce()
        # Each lightvmd opens its kept SSH link to the other host now (host key checked
        # against the pinned one): the migrations then pay no handshake.
        for src, dst in ((self.seg.a, self.seg.b), (self.seg.b, self.seg.a)):
            call(src.state, "ssh", {"action": "connect", **dst.ssh.target_args(dst.state)}, timeout=60.0)
        progress(f"hosts up and linked in {time.monotonic() - t:.1f} s")
        config = self.root / "daytime.toml"
        images = paths.guests_dir()
        config.write_text(
            f'name = "{VM}"\nkernel = "{images / "daytime.elf"}"\nfirmware = "{images / "lvfw.bin"}"\n'
            f'memory = "4M"\nvcpus = 1\n\n[[vifs]]\nbridge = "{BRIDGE}"\nip = "{VM_IP}/{PREFIX}"\n'
        )
        progress(f"booting daytime on host A ({VM_IP}, a tap on A's bridge)")
        self.seg.a.lightvm("create", str(config), "--accel", self.accel)
        self._client = subprocess.Popen(
            [
                "ip", "netns", "exec", self.seg.client_ns, sys.executable, "-m", "lightvm.bench.demo.client", VM_IP,
                "--interval-ms", "10", "--timeout-ms", str(self.timeout_ms), "--hedge-ms", str(self.hedge_ms),
            ],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=paths.PACKAGE.parent,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._answered_after(time.monotonic_ns(), 20.0):
            raise DemoError(f"the client got no answer from {VM_IP}:13 within 20 s (is daytime up on host A?)")

    def _read(self) -> None:
        assert self._client is not None and self._client.stdout is not None
        for line in self._client.stdout:
            with self._lock:
                self.events.feed(line)

    def _answered_after(self, t: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.events.answers and self.events.answers[-1][0] > t:
                    return True
            if self._client is not None and self._client.poll() is not None:
                raise DemoError(f"the client exited (code {self._client.returncode})")
            time.sleep(0.005)
        return False

    def migrate(self) -> Migration:
        """Move the VM to the other host; wait for the client's next answer; the figures."""
        src, dst = self.where, (self.seg.b if self.where is self.seg.a else self.seg.a)
        # The previous move's source (now the destination) removes its copy of the VM right
        # after its reply (~5-60 ms): wait for that rather than be refused "exists".
        if not wait_until(lambda: not (dst.state / "vms" / VM).exists(), timeout=10.0, interval=0.01):
            raise DemoError(f"host {dst.side} still holds {VM} 10 s after it left; its lightvmd says:\n{self._logs()}")
        request = {"name": VM, "tunnel": self.tunnel, **dst.ssh.target_args(dst.state)}
        t0 = time.monotonic_ns()
        try:
            moved = call(src.state, "migrate", request, timeout=90.0)
        except LightVMError as exc:
            raise DemoError(f"migration {src.side.upper()} -> {dst.side.upper()}: {exc}\n{self._logs()}") from exc
        t1 = time.monotonic_ns()
        self.where = dst
        answered = self._answered_after(t1, self.timeout_ms / 1e3 + 2.0)
        time.sleep(SETTLE_S)  # (also lets a query that started during the migration finish or fail)
        with self._lock:
            answers = list(self.events.answers)
            failed = [
                f for f in self.events.failures if t0 - int(self.timeout_ms * 1e6) <= f <= t1 + int(SETTLE_S * 1e9)
            ]
        m = Migration(
            len(self.migrations) + 1, src.side, dst.side, t0, t1, (t1 - t0) / 1e6, float(moved["downtime_ms"]),
            float(moved["handover_ms"]),
            int(moved["bytes"]), gap(answers, t0, t1) if answered else None, len(failed),
        )  # fmt: skip
        self.migrations.append(m)
        return m

    def _logs(self, lines: int = 8) -> str:
        """The last lines of both lightvmds' logs (for an error message)."""
        out = []
        for h in self.seg.hosts:
            log = h.state / "lightvmd.log"
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(no log)"]
            prefix = f"  host {h.side.upper()}: "
            out.append(prefix + ("\n" + prefix).join(text))
        return "\n".join(out)

    def close(self) -> list[str]:
        if self._client is not None:
            with contextlib.suppress(OSError):
                assert self._client.stdin is not None
                self._client.stdin.close()
            try:
                self._client.wait(5)
            except subprocess.TimeoutExpired:
                self._client.kill()
                self._client.wait(5)
            if self._reader is not None:
                self._reader.join(5)
            self._client = None
        # The kept links first: the other host's relay is a client of this host's lightvmd,
        # which would wait its stop grace (15 s) for it.
        for src, dst in ((self.seg.a, self.seg.b), (self.seg.b, self.seg.a)):
            with contextlib.suppress(Exception):
                call(src.state, "ssh", {"action": "drop", **dst.ssh.target_args(dst.state)}, timeout=10.0)
        problems = self.seg.close()
        return problems + wait_gone(self.seg.tag)


def summary(demo: Demo) -> dict[str, Any]:
    """Medians over the migrations; ``failed_queries`` counts the whole run (between and
    after migrations too), not only those attributed to a migration."""
    ms = demo.migrations
    gaps = [m.gap_ms for m in ms if m.gap_ms is not None]
    with demo._lock:
        failed = len(demo.events.failures)
    return {
        "migrations": len(ms),
        "failed_queries": failed,
        "no_answer": sum(1 for m in ms if m.gap_ms is None),
        "median_gap_ms": statistics.median(gaps) if gaps else None,
        "max_gap_ms": max(gaps) if gaps else None,
        "median_total_ms": statistics.median(m.total_ms for m in ms) if ms else None,
        "median_downtime_ms": statistics.median(m.downtime_ms for m in ms) if ms else None,
        "median_bytes": statistics.median(m.bytes for m in ms) if ms else None,
    }


def timeline(demo: Demo, out: Path) -> Path:
    """The PNG: every answer's latency over time, failed queries, migrations shaded."""
    from lightvm.bench.plots import _pyplot

    with demo._lock:  # (before matplotlib's import: the client goes on answering meanwhile)
        answers, failures = list(demo.events.answers), list(demo.events.failures)
    plt = _pyplot()
    base = answers[0][0] if answers else 0
    xs = [(t - base) / 1e9 for t, _ in answers]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    top.plot(xs[1:], [(b - a) / 1e6 for (a, _), (b, _) in itertools.pairwise(answers)], ".", ms=2)
    top.set_ylabel("time since the previous answer (ms)")
    bottom.plot(xs, [lat / 1e3 for _, lat in answers], ".", ms=2, label="answer")
    if failures:
        bottom.plot([(t - base) / 1e9 for t in failures], [demo.timeout_ms] * len(failures), "rx", label="failed query")
    bottom.set_ylabel("query latency (ms)")
    bottom.set_xlabel("time (s)")
    for ax in (top, bottom):
        ax.set_yscale("log")
        for m in demo.migrations:
            ax.axvspan((m.t0 - base) / 1e9, (m.t1 - base) / 1e9, color="tab:orange", alpha=0.35, lw=0)
    for m in demo.migrations:
        label = f"{m.src.upper()}>{m.dst.upper()}" + ("" if m.gap_ms is None else f" {m.gap_ms:.0f}")
        top.annotate(
            label, ((m.t0 - base) / 1e9, 1.0), xycoords=("data", "axes fraction"), fontsize=6, rotation=90, va="top"
        )
    s = summary(demo)
    med = "-" if s["median_gap_ms"] is None else f"{s['median_gap_ms']:.1f}"
    top.set_title(
        f"daytime asked every 10 ms during {s['migrations']} live migrations (shaded: request -> reply; "
        f"label: client gap in ms); median gap {med} ms, {s['failed_queries']} failed queries",
        fontsize=9,
    )
    bottom.legend(loc="lower right", fontsize=8)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        fig.savefig(partial, dpi=110, bbox_inches="tight", format="png")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
        plt.close(fig)
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def progress(text: str) -> None:
    print(f"demo-migrate: {text}", file=sys.stderr, flush=True)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every cleanup, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo-migrate.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--migrations", type=int, default=20, help="A -> B -> A ... moves (default 20)")
    p.add_argument("-o", "--png", type=Path, default=Path("migration-demo.png"), help="the timeline (PNG)")
    p.add_argument("--timeout-ms", type=float, default=1000.0, help="a query with no answer by then failed (1000)")
    p.add_argument(
        "--hedge-ms", type=float, default=20.0, help="a query unanswered this long opens one more connection (20)"
    )
    p.add_argument("--no-announce", action="store_true", help="drop QEMU's self-announce (RARP) on the bridges")
    p.add_argument(
        "--tunnel",
        action="store_true",
        help="stream through the SSH connection, encrypted, as `lightvm migrate` does by default "
        "(default here: direct TCP, since both hosts are namespaces of this machine)",
    )
    p.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    p.add_argument("--clean", action="store_true", help="only remove what runs killed with SIGKILL left, then exit")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if args.clean:
        left = reap_stale()
        print(f"demo-migrate: removed what killed runs left: {', '.join(left) or 'nothing'}")
        return 0
    reap_stale()  # a run killed with SIGKILL could not clean up after itself
    tmp = Path(tempfile.mkdtemp(prefix=f"lvdemo{os.getpid()}-", dir="/tmp"))
    code = 1
    try:
        t = time.monotonic()
        with Demo(
            tmp,
            args.timeout_ms,
            announce=not args.no_announce,
            accel=args.accel,
            hedge_ms=args.hedge_ms,
            tunnel=args.tunnel,
        ) as demo:
            progress(f"client asks {VM_IP}:13 every 10 ms; {args.migrations} migrations follow")
            for _ in range(args.migrations):
                print(demo.migrate().line(), flush=True)
                time.sleep(SETTLE_S)
            s = summary(demo)
            png = timeline(demo, args.png.resolve())
            progress(f"{time.monotonic() - t:.1f} s so far; removing everything")
        print(
            f"summary: {s['migrations']} migrations, {s['failed_queries']} failed queries, "
            f"client gap median {fmt(s['median_gap_ms'])} ms (max {fmt(s['max_gap_ms'])}), "
            f"total median {fmt(s['median_total_ms'])} ms, QEMU downtime median {fmt(s['median_downtime_ms'])} ms"
        )
        print(f"timeline: {png}")
        print("cleanup: namespaces, sshd, lightvmd, QEMU, taps and NoXS files removed")
        code = 0 if s["failed_queries"] == 0 and s["no_answer"] == 0 else 2
    except KeyboardInterrupt:
        progress("interrupted; everything it made was removed")
        code = 130
    except (LightVMError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"demo-migrate: error: {exc}", file=sys.stderr)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

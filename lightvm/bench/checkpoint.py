"""``lightvm bench checkpoint``: save and restore times vs running VMs (paper Figs. 12-13).

Through the public API of :mod:`lightvm.mobility.save` and :mod:`lightvm.mobility.restore`
(the toolstack's save and restore), on the cold-path fleet of :mod:`lightvm.bench.fleets`: for each N the
fleet grows to N-1 running VMs, then every iteration creates one more VM and

* ``save``          saves it to a file and destroys it (``SaveResult.save_ms``:
                    request -> file complete; also the downtime and the file size);
* ``save-live``     saves it and keeps it running (``--keep-running``: the downtime
                    is stop -> resumed);
* ``restore``       saves it (untimed), then restores it from the file
                    (``RestoreResult.restore_ms``: one cold restore command, QEMU
                    spawn included, to the guest running again).

The measured VM and its file are removed after each iteration. Migration
(Fig. 13): ``migrate`` moves it to a second state dir of this host
(migrate.migrate_local: the migration proper, no SSH); ``restore-prepared`` times the
execute phase of a split restore (QEMU already waiting on ``-incoming defer``).

Through lightvmd and SSH (a second "host": sshd on loopback with its own host key, and
lightvmd on a destination state dir keeping one prepared ``-incoming`` shell per kind,
:mod:`lightvm.bench.sshhost`; needs root and openssh-server, else these rows are listed
as not run):

* ``restore-pool``     ``restore`` request to the destination lightvmd -> its reply
                       (guest running again), timed at the client; a prepared shell
                       is ready before each sample (as the split bench does);
* ``migrate-ssh``      one-shot ``migrate.migrate``: new SSH connection (host key
                       checked), ``migrate-receive`` started there, QEMU started there;
* ``migrate-ssh-warm`` ``migrate`` request to a lightvmd on the source state dir: its
                       kept SSH connection and relay, the destination lightvmd's prepared
                       shell; timed at the client (request -> reply: guest running there,
                       source destroyed). ``qemu_downtime_ms`` is QEMU's own figure.
* ``migrate-gap``      what a client sees (the migration demo's set-up, lightvm/bench/demo/):
                       a daytime VM moved between two namespace hosts (sshd and lightvmd
                       each, one shared L2 segment) while a client in a third namespace
                       asks it the time every 10 ms; ``ms`` is the client's gap (longest
                       time between two answers around the migration), with the
                       migration's total, QEMU's downtime and bytes, and the client's
                       failed queries (no answer within 1 s). Always the daytime guest,
                       moving A -> B -> A ...; the N-1 fleet VMs run beside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm.bench.fleets import LightvmColdFleet, guest_spec
from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions

if TYPE_CHECKING:
    from lightvm.bench.sshhost import SshHost
    from lightvm.toolstack import Toolstack

REFERENCE = "save"
LOCAL_OPS = ("save", "save-live", "restore", "restore-prepared", "migrate")
SSH_OPS = ("restore-pool", "migrate-ssh", "migrate-ssh-warm", "migrate-gap")
OPS = LOCAL_OPS + SSH_OPS


class _Checkpoints:
    def __init__(self, opts: SuiteOptions) -> None:
        self.opts = opts
        self.fleet: LightvmColdFleet | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-ckpt-")
        self.seq = 0
        self._there: Toolstack | None = None  # migrate's destination state dir
        self._ssh: SshHost | None = None
        self._dest = Path(self._tmp.name) / "dest"  # lightvmd with prepared -incoming shells
        self._oneshot = Path(self._tmp.name) / "oneshot"  # migrate-receive's state dir (no daemon)
        self._demo: Any = None  # lightvm.bench.demo.migrate.Demo, for migrate-gap (made at its first sample)

    def grow(self, n: int) -> None:
        if self.fleet is None:
            self.fleet = LightvmColdFleet(guest_spec(self.opts.app), self.opts.accel)
        self.fleet.grow(n)

    def measure(self, op: str) -> Sample:
        from lightvm.mobility.format import read_header
        from lightvm.mobility.restore import prepare_incoming, restore
        from lightvm.mobility.save import save

        assert self.fleet is not None, "grow() first"
        if op == "migrate-gap":
            return self._migrate_gap()
        ts = self.fleet.ts
        self.seq += 1
        name = f"ck{self.seq}"
        path = Path(self._tmp.name) / f"{name}.lvck"
        ts.create(self.fleet.spec, name=name, accel=self.opts.accel)
        try:
            if op in ("save", "save-live"):
                saved = save(ts, name, path, keep_running=op == "save-live")
                return {
                    "ms": saved.save_ms,
                    "downtime_ms": saved.downtime_ms,
                    "total_ms": saved.total_ms,
                    "file_kib": saved.bytes / 1024,
                }
            if op == "migrate":
                return self._migrate(name)
            if op in ("migrate-ssh", "migrate-ssh-warm"):
                return self._migrate_ssh(name, warm=op == "migrate-ssh-warm")
            save(ts, name, path)
            if op == "restore-pool":
                return self._restore_pool(path)
            if op == "restore-prepared":
                # Split restore: the -incoming QEMU is spawned first (untimed, like a pool
                # shell); timed is the execute phase: stream -> page rewrite -> cont -> guest runs.
                meta, offset = read_header(path)
                prepared = prepare_incoming(ts, meta, None, str(path))
                restored = prepared.finish(path, offset)
                return {"ms": restored.finish_ms, "prepare_and_finish_ms": restored.restore_ms}
            restored = restore(ts, path)
            return {"ms": restored.restore_ms, "finish_ms": restored.finish_ms}
        finally:
            with contextlib.suppress(Exception):
                ts.destroy(name)
            if self._there is not None:
                with contextlib.suppress(Exception):
                    self._there.destroy(name)
            if self._ssh is not None:
                from lightvm.toolstack import Toolstack

                for root in (self._dest, self._oneshot):
                    with contextlib.suppress(Exception):
                        Toolstack(root).destroy(name)
            path.unlink(missing_ok=True)

    def _ssh_host(self) -> SshHost:
        from lightvm.bench.sshhost import SshHost, unavailable

        why = unavailable()
        if why:
            raise RuntimeError(f"SSH rows not run: {why}")
        if self._ssh is None:
            assert self.fleet is not None
            ssh = SshHost(Path(self._tmp.name) / "ssh")
            self._ssh = ssh
            ssh.start()
            ssh.start_daemon(self._dest, self.opts.accel, incoming_size=1)
            ssh.start_daemon(self.fleet.ts.state.root, self.opts.accel, incoming_size=0)  # keeps the SSH link
        return self._ssh

    def _restore_pool(self, path: Path) -> Sample:
        from lightvm.bench import sshhost

        self._ssh_host()
        # A fresh flavour is learned by the first restore (the warm-up); then one is ready.
        sshhost.wait_incoming_ready(self._dest, timeout=30.0)
        t0 = time.perf_counter()
        restored = sshhost.call(self._dest, "restore", {"file": str(path)})
        wall = (time.perf_counter() - t0) * 1000
        return {
            "ms": wall,
            "daemon_ms": restored["restore_ms"],
            "finish_ms": restored["finish_ms"],
            "pool_hit": 1.0 if restored["path"] == "pool" else 0.0,
        }

    def _migrate_ssh(self, name: str, warm: bool) -> Sample:
        from lightvm.bench import sshhost
        from lightvm.mobility import migrate

        assert self.fleet is not None
        ssh = self._ssh_host()
        if warm:
            sshhost.wait_incoming_ready(self._dest, timeout=30.0)
            request = {"name": name, **ssh.target_args(self._dest)}
            t0 = time.perf_counter()
            moved = sshhost.call(self.fleet.ts.state.root, "migrate", request)
            wall = (time.perf_counter() - t0) * 1000
        else:
            t = ssh.target_args(self._oneshot)
            t0 = time.perf_counter()
            result = migrate.migrate(
                self.fleet.ts,
                name,
                t["target"],
                port=t["port"],
                known_hosts=Path(t["known_hosts"]),
                identity=Path(t["identity"]),
                remote_command=t["remote_command"],
                remote_state_dir=t["remote_state_dir"],
            )
            wall = (time.perf_counter() - t0) * 1000
            moved = result.as_dict()
        sample: Sample = {
            "ms": wall,
            "total_ms": moved["total_ms"],
            "prepare_ms": moved["prepare_ms"],
            "migrate_ms": moved["migrate_ms"],
            "qemu_downtime_ms": moved["downtime_ms"],
            "handover_ms": moved["handover_ms"],
            **({"teardown_ms": moved["teardown_ms"]} if moved.get("teardown_ms") is not None else {}),
            "bytes": moved["bytes"],
        }
        if warm:  # no handshake: the kept link; and did a prepared shell receive it
            sample["pool_hit"] = 1.0 if moved["receiver"] == "lightvmd-pool" else 0.0
        else:
            sample["ssh_ms"] = moved["ssh_ms"]
        return sample

    def _migrate_gap(self) -> Sample:
        from lightvm.bench.demo.migrate import Demo
        from lightvm.bench.demo.segment import DemoError

        if self._demo is None:
            demo = Demo(Path(self._tmp.name) / f"lvdemo{os.getpid()}-bench", accel=self.opts.accel)
            self._demo = demo.__enter__()  # (close() below exits it)
        m = self._demo.migrate()
        if m.gap_ms is None:
            raise DemoError(f"migration {m.src} -> {m.dst}: the client got no answer after it")
        return {
            "ms": m.gap_ms,
            "total_ms": m.total_ms,
            "qemu_downtime_ms": m.downtime_ms,
            "handover_ms": m.handover_ms,
            "bytes": m.bytes,
            "failed_queries": m.failed,
        }

    def _migrate(self, name: str) -> Sample:
        # Live migration to a second state dir of this host over loopback TCP (no SSH):
        # migrate.migrate_local. ms = whole operation incl. the destination's QEMU spawn.
        from lightvm.mobility.migrate import migrate_local
        from lightvm.toolstack import Toolstack

        assert self.fleet is not None
        if self._there is None:
            self._there = Toolstack(Path(self._tmp.name) / "there")
        moved = migrate_local(self.fleet.ts, name, self._there)
        return {
            "ms": moved.total_ms,
            "migrate_ms": moved.migrate_ms,
            "qemu_downtime_ms": moved.downtime_ms,  # QEMU's, whole ms
            "handover_ms": moved.handover_ms,
            "prepare_ms": moved.prepare_ms,  # destination QEMU spawned, QMP negotiated
            "dest_spawn_ms": moved.dest_spawn_ms,  # of which: folder, NoXS file, QEMU spawned
            "dest_qmp_ms": moved.dest_qmp_ms,  # of which: QEMU initialised until QMP answers
            "teardown_ms": moved.teardown_ms,  # source QEMU killed, its folder removed
            "bytes": moved.bytes,
        }

    def close(self) -> None:
        try:
            if self._demo is not None:
                demo, self._demo = self._demo, None
                demo.__exit__(None, None, None)
            if self._ssh is not None:
                self._ssh.close()  # the daemons first: they leave VMs running, destroyed below
                self._ssh = None
                from lightvm.toolstack import Toolstack

                for root in (self._dest, self._oneshot):
                    with contextlib.suppress(Exception):
                        Toolstack(root).destroy_all()
            if self._there is not None:
                self._there.destroy_all()
                self._there = None
            if self.fleet is not None:
                self.fleet.close()
                self.fleet = None
        finally:
            self._tmp.cleanup()


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    state = _Checkpoints(opts)
    stack.callback(state.close)

    def row(op: str, n: int) -> Benchmark:
        def before() -> None:
            state.grow(n - 1)

        def measure() -> Sample:
            return state.measure(op)

        return Benchmark(
            f"checkpoint/{op}/n={n}", measure, warmup=opts.warmup, iterations=opts.iterations,
            params={"variant": op, "n": n}, before=before,
        )  # fmt: skip

    # N outer: the fleet only grows; every op is measured at each N.
    from lightvm.bench.sshhost import unavailable

    ops = OPS if unavailable() is None else LOCAL_OPS
    return [row(op, n) for n in sorted(set(opts.vms)) for op in ops]


def describe() -> dict[str, Any]:
    return {
        "variants": {
            "save": {"kind": "lightvm", "doc": "checkpoint.save, VM destroyed after (save_ms)"},
            "save-live": {"kind": "lightvm", "doc": "checkpoint.save --keep-running (save_ms; downtime_ms)"},
            "restore": {"kind": "lightvm", "doc": "checkpoint.restore, one cold command (restore_ms)"},
            "restore-prepared": {
                "kind": "lightvm",
                "doc": "prepare_incoming untimed, then finish: stream -> page -> cont -> guest runs (finish_ms)",
            },
            "restore-pool": {
                "kind": "lightvm",
                "doc": "restore request to lightvmd with a prepared -incoming shell -> reply (client wall)",
            },
            "migrate-ssh": {
                "kind": "lightvm",
                "doc": "one-shot migrate.migrate over SSH on loopback: handshake + migrate-receive + QEMU start",
            },
            "migrate-ssh-warm": {
                "kind": "lightvm",
                "doc": "migrate request to the source lightvmd: kept SSH link, destination lightvmd's prepared shell",
            },
            "migrate-gap": {
                "kind": "lightvm",
                "doc": "daytime moved between two namespace hosts on one L2 segment (lightvm/bench/demo/): the gap a "
                "client asking every 10 ms saw (ms), total_ms, qemu_downtime_ms, bytes, failed_queries",
            },
            "migrate": {
                "kind": "lightvm",
                "doc": "migrate.migrate_local to another state dir over loopback TCP, no SSH (total_ms; "
                "QEMU total-time, downtime, bytes)",
            },
        },
        "not_implemented": [
            "libvirt save/restore baseline",
            *(
                [f"restore-pool, migrate-ssh, migrate-ssh-warm, migrate-gap: {why}"]
                if (why := _ssh_unavailable())
                else []
            ),
        ],
        "reference": REFERENCE,
    }


def _ssh_unavailable() -> str | None:
    from lightvm.bench.sshhost import unavailable

    return unavailable()


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    return plots.lines(
        results, outdir / "checkpoint", "Save and restore of one VM while N-1 run", "ms", subtitle=subtitle
    )


__all__ = ["OPS", "REFERENCE", "benchmarks", "describe", "plot"]

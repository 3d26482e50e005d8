"""The three ways the Tinyx suite (lightvm/bench/tinyx.py) runs one app, each timed from
its start request to the app's first good answer on a host port.

- :class:`ColdVMs`: ``Toolstack.create`` of the image's VM config with the app's port
  published (QEMU user networking), in a private state dir; the create returns at READY
  (the init saw the app accept), then the host probes the published port.
- :class:`SnapshotVMs`: the same VM started from the image's snapshot (its VM booted once
  by ``lightvm image build`` and kept serving), as a one-shot create does.
- :class:`PoolVMs`: a private lightvmd (:class:`lightvm.bench.split.SplitFleet`) pooling the
  image; a create request with ``publish`` takes a prepared shell (the app already started
  at the shell's wait point when the recipe says ``prestart``).
- :class:`PoolBridgedVMs`: the same pool with a tap NIC on a lightvm network (root), in a
  network namespace of the run's own (LIGHTVM_NETNS: the host's links are not touched);
  the client connects to the VM's own address from inside that namespace (the bridge's
  side, where the network's gateway address is): no port forward, no QEMU user networking.
- :class:`Containers`: the same image's files (its initramfs unpacked with tinyx/cpio.py)
  as an OCI bundle run by crun in the host's network namespace, through the crun
  baseline's worker (lightvm/bench/crun.py: it is what makes crun work on this host's
  cgroup layout, and it keeps the worker's own start-up out of the timing).

Every one of them removes what it started in ``close()``, and each sample removes its
instance (untimed) before it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.bench.fleets import network_setup
from lightvm.bench.ports import free_port
from lightvm.bench.procfs import children_of, cpu_ticks, smaps_rollup
from lightvm.bench.runner import Sample
from lightvm.bench.split import SplitFleet
from lightvm.errors import LightVMError
from lightvm.spec import load_spec
from lightvm.tcpprobe import wait_serving

BOOT_TIMEOUT_S = 60.0  # a Linux guest under TCG on a loaded 2-core host: ~1.3 s usually
SERVE_TIMEOUT_S = 60.0
CRUN_TIMEOUT_S = 30.0
# Appended to redis' argv in the container (a later option wins): it runs in the host's network
# namespace, where the recipe's "--bind 0.0.0.0 --protected-mode no" would open it to the network.
LOCAL_ONLY = ("--bind", "127.0.0.1")
BOOT_STEPS = ("qemu_up", "guest_entry", "devices_up", "ready")


@dataclass(frozen=True)
class Image:
    """What the suite needs from a ``lightvm image build`` folder."""

    folder: Path
    config: Path  # the VM config (APP.toml) the build wrote
    port: int  # the app's port in the guest
    send: bytes  # the recipe's probe
    expect: bytes
    kernel_bytes: int
    initramfs_bytes: int
    initramfs: Path
    initramfs_raw_bytes: int  # the archive uncompressed (the same as initramfs_bytes with --compress none)

    @classmethod
    def load(cls, folder: Path) -> Image:
        """:raise LightVMError: the folder is not a complete image of an app with a probe."""
        try:
            report = json.loads((folder / "report.json").read_text())
            app = report["app"]
            probe = app["probe"]
            if not probe or not app["port"]:
                raise LightVMError(f"{folder}: the app has no port or [probe] in its recipe: nothing to time")
            return cls(
                folder, folder / f"{report['name']}.toml", int(app["port"]), probe["send"].encode(),
                probe["expect"].encode(), int(report["kernel"]["bytes"]), int(report["initramfs"]["bytes"]),
                folder / report["initramfs"]["file"],
                int(report["initramfs"].get("uncompressed_bytes") or report["initramfs"]["bytes"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LightVMError(f"{folder}: not a complete Tinyx image ({exc}); rebuild it") from exc


@contextlib.contextmanager
def user_networking() -> Iterator[None]:
    """LIGHTVM_NET_MODE=user for an in-process create or destroy: as root the toolstack would
    choose taps, and ``publish`` (the host port forward) is user networking's."""
    old = os.environ.get("LIGHTVM_NET_MODE")
    os.environ["LIGHTVM_NET_MODE"] = "user"
    try:
        yield
    finally:
        if old is None:
            del os.environ["LIGHTVM_NET_MODE"]
        else:
            os.environ["LIGHTVM_NET_MODE"] = old


def idle_cost(pids: list[int], window_s: float) -> Sample:
    """An idle instance's processes: CPU over ``window_s`` (% of one core), then memory
    (smaps_rollup summed: Pss, its anonymous and shmem parts, Rss; in MiB)."""
    hz = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), sum(cpu_ticks(p) for p in pids)
    time.sleep(window_s)  # a measurement window, not a wait for a condition
    cpu = (sum(cpu_ticks(p) for p in pids) - c0) / hz / (time.monotonic() - t0) * 100
    total: dict[str, int] = {}
    for pid in pids:
        for key, kib in smaps_rollup(pid).items():
            total[key] = total.get(key, 0) + kib
    if not total.get("Pss"):
        raise LightVMError(f"processes {pids} are gone: nothing to weigh")
    sample: Sample = {f"{k.lower()}_mib": total.get(k, 0) / 1024 for k in ("Pss", "Pss_Anon", "Pss_Shmem", "Rss")}
    return {**sample, "cpu_pct": cpu, "processes": float(len(pids))}


class ColdVMs:
    """``Toolstack.create`` of the image's VM with its port published; destroy after."""

    variant = "tinyx-cold"

    def __init__(self, image: Image, accel: str) -> None:
        from lightvm.toolstack import Toolstack

        self.image = image
        self.accel = accel
        self.spec = load_spec(image.config)
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-tinyx-cold-")
        self.ts = Toolstack(Path(self._tmp.name) / "state", boot_timeout=BOOT_TIMEOUT_S)
        self.seq = 0

    def _start(self) -> tuple[str, int, float, Any]:
        self.seq += 1
        name, port = f"m{self.seq}", free_port()
        spec = self.spec.with_publish([f"127.0.0.1:{port}:{self.image.port}"])
        with user_networking():
            t0 = time.perf_counter()
            (result,) = self.ts.create(spec, name=name, accel=self.accel)
        return name, port, t0, result

    def _destroy(self, name: str) -> None:
        with user_networking():
            self.ts.destroy(name)

    def measure(self) -> Sample:
        name, port, t0, result = self._start()
        try:
            create_ms = (time.perf_counter() - t0) * 1000
            ms = wait_serving(port, self.image.send, self.image.expect, t0, SERVE_TIMEOUT_S)
        finally:
            self._destroy(name)
        sample: Sample = {"ms": ms, "create_ms": create_ms}
        sample.update({k: float(result.boot_ms[k]) for k in BOOT_STEPS if result.boot_ms.get(k) is not None})
        return sample

    def idle(self, window_s: float) -> Sample:
        name, port, t0, result = self._start()
        try:
            wait_serving(port, self.image.send, self.image.expect, t0, SERVE_TIMEOUT_S)
            return idle_cost([result.pid], window_s)
        finally:
            self._destroy(name)

    def close(self) -> None:
        with user_networking(), contextlib.suppress(LightVMError):
            self.ts.destroy_all()
        self._tmp.cleanup()


class SnapshotVMs(ColdVMs):
    """The image's snapshot (DIR/snapshot, made by ``lightvm image build``) started as a
    one-shot create starts it (lightvm/mobility/snapshot.py ``create_from_snapshot``), port
    published; destroy after. The digests of the snapshot's files are remembered by this
    process after the first sample, as a one-shot command finds them in its state dir."""

    variant = "tinyx-snapshot"

    def __init__(self, image: Image, accel: str) -> None:
        super().__init__(image, accel)
        if self.spec.snapshot is None or not (self.spec.snapshot / "state.lvm").is_file():
            raise LightVMError(f"{image.folder}: the image has no snapshot (built with --no-snapshot?)")

    def _start(self) -> tuple[str, int, float, Any]:
        from lightvm.mobility.snapshot import create_from_snapshot

        self.seq += 1
        name, port = f"s{self.seq}", free_port()
        spec = self.spec.with_publish([f"127.0.0.1:{port}:{self.image.port}"])
        t0 = time.perf_counter()
        (result,) = create_from_snapshot(self.ts, spec, name, accel=self.accel, timeout=BOOT_TIMEOUT_S)
        return name, port, t0, _Created(result["boot_ms"], int(result["pid"]))


@dataclass(frozen=True)
class _Created:
    """What ColdVMs reads of a create's result: its boot steps and QEMU's pid."""

    boot_ms: dict[str, Any]
    pid: int


class PoolVMs:
    """A private lightvmd pooling the image (one prepared shell, user networking)."""

    variant = "tinyx-pool"

    def __init__(self, image: Image, accel: str) -> None:
        self.image = image
        self.fleet = SplitFleet(config=image.config, accel=accel, pool_size=1, env={"LIGHTVM_NET_MODE": "user"})
        self.seq = 0

    def _start(self) -> tuple[str, int, float, float, dict[str, Any]]:
        fleet = self.fleet
        fleet._wait_pool_full()  # untimed: a full, quiet pool (no shell booting meanwhile)
        self.seq += 1
        name, port = f"m{self.seq}", free_port()
        args = {"config": str(self.image.config), "name": name, "accel": fleet.accel}
        with api_client(fleet) as client:
            client.call("ping")  # the connection served before the sample (as SplitFleet.measure)
            t0 = time.perf_counter()
            (result,) = client.call("create", {**args, "publish": [f"127.0.0.1:{port}:{self.image.port}"]})
            reply_ms = (time.perf_counter() - t0) * 1000
        if result["path"] != "pool":
            fleet.call("destroy", {"names": [name]})
            raise LightVMError(f"the create took the {result['path']} path, not a pooled shell: {result}")
        return name, port, t0, reply_ms, result

    def _serve(self, result: dict[str, Any], t0: float, port: int) -> float:
        """ms from ``t0`` to the app's first answer on the host's published ``port``."""
        return wait_serving(port, self.image.send, self.image.expect, t0, SERVE_TIMEOUT_S)

    def measure(self) -> Sample:
        name, port, t0, reply_ms, result = self._start()
        try:
            ms = self._serve(result, t0, port)
        finally:
            self.fleet.call("destroy", {"names": [name]})
        sample: Sample = {"ms": ms, "reply_ms": reply_ms}
        sample.update({k: float(result["boot_ms"][k]) for k in BOOT_STEPS[1:] if result["boot_ms"].get(k)})
        return sample

    def idle(self, window_s: float) -> Sample:
        """A VM from the pool, serving, weighed once the pool has refilled (the new shell's
        boot is not in the window)."""
        name, port, t0, _, result = self._start()
        try:
            self._serve(result, t0, port)
            self.fleet._wait_pool_full()
            return idle_cost([int(result["pid"])], window_s)
        finally:
            self.fleet.call("destroy", {"names": [name]})

    def close(self) -> None:
        self.fleet.close()


BRIDGE_NETWORK = "tb"
BRIDGE_SUBNET = "10.213.57.0/24"


class PoolBridgedVMs(PoolVMs):
    """The pool with a tap NIC on network ``tb`` (a bridge in a private namespace); the
    client probes the VM's address from a thread inside that namespace. Root only."""

    variant = "tinyx-pool-bridge"

    def __init__(self, image: Image, accel: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from lightvm.bench.netsetup import private_netns
        from lightvm.devices.netns import netns_path, setns

        if os.geteuid() != 0:
            raise LightVMError("tinyx-pool-bridge needs root (taps and a bridge); run the bench as root")
        self.image = image
        self.seq = 0
        self._stack = contextlib.ExitStack()
        try:
            self._tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="lightvm-bench-tinyx-br-"))
            ns = self._stack.enter_context(private_netns("lvtinyx"))
            self.config = bridged_config(image, Path(self._tmp))
            self.fleet = SplitFleet(
                config=self.config,
                accel=accel,
                pool_size=1,
                env={"LIGHTVM_NETNS": ns, "LIGHTVM_NET_MODE": "tap"},
                before_daemon=network_setup(BRIDGE_NETWORK, BRIDGE_SUBNET),
            )
            self._stack.callback(self.fleet.close)  # before the namespace goes (LIFO)
            nsfd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
            self._stack.callback(os.close, nsfd)
            # One thread that lives in the namespace: the client's sockets are made there.
            self.client = ThreadPoolExecutor(1, "tinyx-br-client", initializer=setns, initargs=(nsfd,))
            self._stack.callback(self.client.shutdown)
            self.client.submit(int).result(timeout=10)  # the thread is in: a failed setns says so here
        except BaseException:
            self._stack.close()
            raise

    def _start(self) -> tuple[str, int, float, float, dict[str, Any]]:
        fleet = self.fleet
        fleet._wait_pool_full()  # untimed: a full, quiet pool
        self.seq += 1
        name = f"m{self.seq}"
        args = {"config": str(self.config), "name": name, "accel": fleet.accel}
        with api_client(fleet) as client:
            client.call("ping")
            t0 = time.perf_counter()
            (result,) = client.call("create", args)
            reply_ms = (time.perf_counter() - t0) * 1000
        if result["path"] != "pool":
            fleet.call("destroy", {"names": [name]})
            raise LightVMError(f"the create took the {result['path']} path, not a pooled shell: {result}")
        return name, 0, t0, reply_ms, result

    def _serve(self, result: dict[str, Any], t0: float, port: int) -> float:
        # "networking: tap; vif0: 10.213.57.2/24 gw ..." (the create's network line)
        ip = str(result["network"]).split("vif0: ", 1)[1].split("/", 1)[0]
        job = self.client.submit(wait_serving, self.image.port, self.image.send, self.image.expect, t0,
                                 SERVE_TIMEOUT_S, ip)  # fmt: skip
        return float(job.result(timeout=SERVE_TIMEOUT_S + 10))

    def close(self) -> None:
        self._stack.close()


def bridged_config(image: Image, folder: Path) -> Path:
    """The image's VM config with its vif on network ``tb`` and absolute file paths."""
    text = image.config.read_text()
    for name in ("vmlinux", image.initramfs.name):
        text = text.replace(f'"{name}"', f'"{image.folder / name}"')
    if text.count("\n[[vifs]]\n") != 1:
        raise LightVMError(f"{image.config}: expected one [[vifs]] table (the image's NIC)")
    path = folder / image.config.name
    path.write_text(text.replace("\n[[vifs]]\n", f'\n[[vifs]]\nnetwork = "{BRIDGE_NETWORK}"\n'))
    return path


def api_client(fleet: SplitFleet) -> Any:
    from lightvm.daemon import api

    return api.Client.connect(fleet.state, timeout=5.0)


class Containers:
    """The image's files as a crun bundle; redis (the recipe's command) on a free host port."""

    variant = "crun"

    def __init__(self, image: Image) -> None:
        from lightvm.bench import crun

        why = crun.available()
        if why:
            raise LightVMError(f"crun baseline: {why}")
        self.image = image
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-tinyx-crun-")
        self.work = Path(self._tmp.name)
        self.bundle = self.work / "redis"
        self.seq = 0
        self.serve_timeout = CRUN_TIMEOUT_S
        try:
            self.rootfs_bytes, self.rootfs_files = unpack(image.initramfs, self.bundle / "rootfs")
            self.argv, self.env, self.cwd = app_conf(self.bundle / "rootfs")
            subprocess.run(["crun", "spec"], cwd=self.bundle, capture_output=True, timeout=CRUN_TIMEOUT_S, check=True)
            self.spec = json.loads((self.bundle / "config.json").read_text())
            self.worker = crun.CrunWorker(self.work)
        except BaseException:
            self._tmp.cleanup()
            raise

    def _config(self, port: int) -> None:
        """config.json for one run: the app's argv + ``--bind 127.0.0.1 --port PORT``, in the host's network
        namespace (no "network" namespace: the port is the host's, as a published VM port is)."""
        spec = json.loads(json.dumps(self.spec))
        spec["process"].update(terminal=False, args=[*self.argv, *LOCAL_ONLY, "--port", str(port)], cwd=self.cwd)
        spec["process"]["env"] = self.env
        spec["root"] = {"path": "rootfs", "readonly": True}
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
        (self.bundle / "config.json").write_text(json.dumps(spec))

    def _start(self) -> tuple[str, dict[str, Any]]:
        self.seq += 1
        cid, port = f"redis{self.seq}", free_port()
        self._config(port)
        send, expect = self.image.send.decode(), self.image.expect.decode()
        command = {"op": "serve", "bundle": str(self.bundle), "id": cid, "port": port, "send": send, "expect": expect}
        command["timeout"] = self.serve_timeout
        return cid, self.worker.call(command)

    def measure(self) -> Sample:
        cid, reply = self._start()
        self.worker.call({"op": "kill", "id": cid})
        return {"ms": float(reply["ms"]), "crun_ms": float(reply["crun_ms"])}

    def idle(self, window_s: float) -> Sample:
        cid, reply = self._start()
        try:
            pid = int(reply["pid"])
            return idle_cost([pid, *descendants(pid)], window_s)
        finally:
            self.worker.call({"op": "kill", "id": cid})

    def close(self) -> None:
        self.worker.close()
        self._tmp.cleanup()


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


def unpack(initramfs: Path, rootfs: Path) -> tuple[int, int]:
    """The initramfs' members (decompressed first, whatever its format) as a directory tree;
    (bytes of its files and link targets, regular files)."""
    from tinyx import cpio
    from tinyx.image.pack import archive_bytes

    entries = cpio.read(archive_bytes(initramfs))
    rootfs.mkdir(parents=True)
    cpio.extract(entries, rootfs)
    files = sum(1 for e in entries if stat.S_ISREG(e.mode))
    return sum(len(e.data) for e in entries), files


def app_conf(rootfs: Path) -> tuple[list[str], list[str], str]:
    """What the init would run (/etc/tinyx/app.conf): argv, environment (the init's
    defaults unless app.conf sets them) and working directory."""
    from tinyx.image import appconf

    conf = appconf.parse((rootfs / appconf.PATH).read_text())
    if not conf.get("arg"):
        raise LightVMError(f"{rootfs / appconf.PATH}: no arg= line: nothing to run")
    env = dict(
        PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME="/", TERM="linux"
    )  # as lvinit (docs/tinyx.md, "The init")
    for line in conf.get("env", []):
        key, _, value = line.partition("=")
        env[key] = value
    return conf["arg"], [f"{k}={v}" for k, v in env.items()], conf.get("cwd", ["/"])[0]

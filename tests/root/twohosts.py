"""Two "hosts" on one machine for the migration tests: two network namespaces joined by a
veth (a private /30 that exists only between them), an sshd in each (its own config, host
key and authorized_keys in the test's tmp dir, listening on its namespace address), and a
lightvm state dir per host. The ``hosts`` fixture is registered in tests/root/conftest.py.

Needs root and openssh-server (``apt-get install openssh-server``; only /usr/sbin/sshd is
used, never the system service).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import LightVM, guard_env, qemu_pids_mentioning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functional"))
from netclient import read_daytime_in

from lightvm.bench.sshhost import SSHD, spawn_sshd
from lightvm.daemon.server import read_pid
from lightvm.state import noxs_file
from lightvm.util import wait_until

REPO = Path(__file__).resolve().parents[2]
DAYTIME = REPO / "examples" / "daytime.toml"
SSH_PORT = 2222
SUBNET = "10.213.77"  # .1 = host A, .2 = host B (a /30 inside the test's namespaces only)
_counter = itertools.count()


def run(argv: list[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Host:
    ns: str
    addr: str
    dir: Path
    lv: Any  # tests/conftest.py's LightVM
    sshd: subprocess.Popen[bytes] | None = None

    def daytime(self, port: int, ip: str = "127.0.0.1") -> str | None:
        return read_daytime_in(self.ns, ip, port)

    def guest(self, name: str) -> dict[str, Any]:
        info = json.loads(self.lv.ok("info", name, "--json").out)
        return dict(info["guest"])


@dataclass
class TwoHosts:
    a: Host
    b: Host
    key: Path
    known_hosts: Path
    cache: Path
    veth_a: str

    def migrate_args(self, name: str, *extra: str, known_hosts: Path | None = None) -> list[str]:
        env = f"LIGHTVM_CACHE_DIR={self.cache} PYTHONDONTWRITEBYTECODE=1 {guard_env()}"  # sshd passes no env
        remote = f"env {env} {sys.executable} -m lightvm.cli"
        return [
            "migrate", name, f"root@{self.b.addr}", "--port", str(SSH_PORT),
            "--known-hosts", str(known_hosts or self.known_hosts), "--identity", str(self.key),
            "--remote-command", remote, "--remote-state-dir", str(self.b.lv.state_dir), *extra,
        ]  # fmt: skip


def _sshd(host: Host, authorized: Path) -> None:
    host.sshd = spawn_sshd(host.dir, host.addr, SSH_PORT, authorized, host.ns)


@pytest.fixture
def hosts(need_net_admin: None, tmp_path: Path, cache_dir: Path, images: Path) -> Iterator[TwoHosts]:
    if not SSHD.exists():
        pytest.skip("needs openssh-server (missing: apt-get install openssh-server)")
    tag = f"{os.getpid()}-{next(_counter)}"
    made_run_sshd = not Path("/run/sshd").exists()  # sshd's privilege separation dir
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    key = tmp_path / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{key}.pub").read_text())
    hs: list[Host] = []
    try:
        for side, addr in (("a", f"{SUBNET}.1"), ("b", f"{SUBNET}.2")):
            ns = f"lvmig-{tag}-{side}"
            run(["ip", "netns", "add", ns])
            d = tmp_path / side
            d.mkdir()
            lv = LightVM(d / "state", cache_dir)
            lv.argv0 = ["ip", "netns", "exec", ns, *lv.argv0]
            hs.append(Host(ns, addr, d, lv))
        a, b = hs
        va, vb = f"lvm{os.getpid() % 10000}a", f"lvm{os.getpid() % 10000}b"
        run(["ip", "link", "add", va, "netns", a.ns, "type", "veth", "peer", "name", vb, "netns", b.ns])
        for h, dev in ((a, va), (b, vb)):
            run(["ip", "-n", h.ns, "link", "set", "lo", "up"])
            run(["ip", "-n", h.ns, "addr", "add", f"{h.addr}/30", "dev", dev])
            run(["ip", "-n", h.ns, "link", "set", dev, "up"])
            _sshd(h, authorized)
        known = tmp_path / "known_hosts"
        hostkey = (b.dir / "ssh_host_ed25519_key.pub").read_text().split()
        known.write_text(f"[{b.addr}]:{SSH_PORT} {hostkey[0]} {hostkey[1]}\n")
        yield TwoHosts(a, b, key, known, cache_dir, va)
    finally:
        # Every step on every host runs whatever failed before it; the checks come last.
        problems: list[str] = []
        for h in hs:
            try:
                h.lv.remember_ids()
                if h.lv.vm_dirs():
                    h.lv.run("destroy", "--all", timeout=120)
                leftovers = h.lv.leftovers()
                if leftovers:
                    problems.append(f"leftovers on host {h.ns}: {leftovers}")
            except Exception as exc:
                problems.append(f"cleanup of host {h.ns}: {exc!r}")
            for pid in qemu_pids_mentioning(str(h.lv.state_dir)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if h.sshd is not None:
                h.sshd.terminate()
                try:
                    h.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    h.sshd.kill()
                    h.sshd.wait(10)
            # Kill fallback for whatever still runs in the namespace (a lightvmd the test left,
            # a migrate-receive, an SSH session): by PID, before the namespace goes.
            daemon = read_pid(h.lv.state_dir)
            if daemon is not None:
                problems.append(f"lightvmd (pid {daemon[0]}) still ran on host {h.ns}")
            pids = subprocess.run(["ip", "netns", "pids", h.ns], capture_output=True, text=True, timeout=10).stdout
            for pid in (int(p) for p in pids.split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            run(["ip", "netns", "del", h.ns], check=False)
            for vm_id in h.lv.seen_ids:
                noxs_file(vm_id).unlink(missing_ok=True)
        if made_run_sshd:
            with_sshd = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_sshd(p)]
            if not with_sshd:
                Path("/run/sshd").rmdir()
        assert not problems, problems


def _is_sshd(proc: Path) -> bool:
    try:
        return (proc / "comm").read_text().strip() == "sshd"
    except OSError:
        return False


def boot_daytime(hs: TwoHosts) -> int:
    port = 18000 + os.getpid() % 1000
    hs.a.lv.create(DAYTIME, "--publish", f"127.0.0.1:{port}:13")
    assert wait_until(lambda: hs.a.daytime(port), timeout=20, interval=0.05)
    return port


def _b_clean(hs: TwoHosts) -> bool:
    return not hs.b.lv.vm_dirs() and not qemu_pids_mentioning(str(hs.b.lv.state_dir))


def _migrating(hs: TwoHosts) -> bool:
    """True once the migration stream flows: an established TCP connection into B that is not SSH."""
    out = run(["ss", "-N", hs.b.ns, "-Htn", "state", "established"], check=False).stdout
    return any(line.split()[2].rsplit(":", 1)[1] != str(SSH_PORT) for line in out.splitlines() if line.split())


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids

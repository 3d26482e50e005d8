"""Two "hosts" and a client on one shared L2 segment, all in network namespaces of our own.

Layout (names carry the run's tag, so that parallel runs and other sessions' tests never
collide; no address of it exists outside these namespaces)::

    ns TAG-c (client)     bridge "sw" (the segment's switch), client 10.213.90.100/24
      | veth TAGa          | veth TAGb
    ns TAG-a (host A)     ns TAG-b (host B)
      bridge lvdbr:         bridge lvdbr:
        uplink veth,          uplink veth,
        host 10.213.90.1      host 10.213.90.2,
        + the VM's tap        + the VM's tap after a migration

Each host has the bridge of the same name (the VM's vif is ``bridge = "lvdbr"``, so a
migration recreates its tap there with the same IP and MAC), an sshd on its address
(its own host key, pinned in the peer's known_hosts: lightvm.bench.sshhost) and a
lightvmd on its own state dir and NoXS dir. This is the layout of two real machines
whose NICs are enslaved to a bridge on one LAN (docs/migration-demo.md).

:meth:`Segment.close` removes everything, whatever failed before; every step is
idempotent, so it is safe from a signal handler's unwinding too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lightvm.bench.sshhost import SshHost
from lightvm.errors import LightVMError

SUBNET = "10.213.90"
PREFIX = 24
VM_IP = f"{SUBNET}.10"
CLIENT_IP = f"{SUBNET}.100"
BRIDGE = "lvdbr"
SSH_PORT = 2222


class DemoError(LightVMError):
    """The migration demo could not set up or run; the message says what to install or check."""


def _ip(*args: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise DemoError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Host:
    """One side: namespace, state dir, NoXS dir, sshd (+ lightvmd through :attr:`ssh`)."""

    def __init__(self, side: str, tag: str, root: Path) -> None:
        self.side = side
        self.ns = f"{tag}-{side}"
        self.addr = f"{SUBNET}.{1 if side == 'a' else 2}"
        self.state = root / side / "state"
        self.shm = Path("/dev/shm") / f"{tag}-{side}"  # this host's NoXS files (a tmpfs)
        self.ssh = SshHost(
            root / side / "ssh", addr=self.addr, netns=self.ns, port=SSH_PORT, env={"LIGHTVM_SHM_DIR": str(self.shm)}
        )

    def lightvm(self, *args: str, timeout: float = 60.0) -> str:
        return self.ssh.lightvm(self.state, *args, timeout=timeout)


class Segment:
    """The namespaces, links, sshds and lightvmds of one demo run (see the module doc)."""

    def __init__(self, root: Path, tag: str | None = None) -> None:
        self.tag = tag or f"lvdemo{os.getpid()}-seg"  # (reap_stale: "lvdemo<PID>-")
        self.short = f"lvd{os.getpid() % 100000}"  # interface names: 15 bytes at most
        self.root = root
        self.client_ns = f"{self.tag}-c"
        self.a = Host("a", self.tag, root)
        self.b = Host("b", self.tag, root)
        self._made: list[str] = []  # namespaces, in creation order

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def up(self, accel: str = "tcg") -> None:
        """Build it all (about 2-3 s). :raise DemoError: a step failed (close() cleans up)."""
        for tool in ("ip", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise DemoError(
                    f"{tool} is missing: run scripts/bootstrap.sh (or apt-get install iproute2 openssh-client)"
                )
        if not Path("/usr/sbin/sshd").exists():
            raise DemoError("sshd is missing: apt-get install openssh-server (only /usr/sbin/sshd is used)")
        if os.geteuid() != 0:
            raise DemoError("the migration demo needs root (network namespaces, taps, sshd)")
        for ns in (self.client_ns, self.a.ns, self.b.ns):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        c = self.client_ns
        _ip("-n", c, "link", "add", "sw", "type", "bridge")
        _ip("-n", c, "addr", "add", f"{CLIENT_IP}/{PREFIX}", "dev", "sw")
        _ip("-n", c, "link", "set", "sw", "up")
        for h in self.hosts:
            port, uplink = f"{self.short}{h.side}", f"{self.short}u{h.side}"
            _ip("-n", c, "link", "add", port, "type", "veth", "peer", "name", uplink, "netns", h.ns)
            _ip("-n", c, "link", "set", port, "master", "sw", "up")
            _ip("-n", h.ns, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", h.ns, "link", "set", uplink, "master", BRIDGE, "up")
            _ip("-n", h.ns, "addr", "add", f"{h.addr}/{PREFIX}", "dev", BRIDGE)
            _ip("-n", h.ns, "link", "set", BRIDGE, "up")
        for h in self.hosts:
            h.shm.mkdir(mode=0o700, exist_ok=True)
            h.ssh.start()
        for h in self.hosts:  # no -incoming shells: a VM with a tap takes the cold path
            h.ssh.start_daemon(h.state, accel, incoming_size=0)

    def block_announce(self) -> None:
        """Drop RARP frames (QEMU's self-announce) on both hosts' bridges, to measure
        what the client sees without them (``--no-announce``). Needs nft."""
        if shutil.which("nft") is None:
            raise DemoError("--no-announce needs nft (apt-get install nftables)")
        rules = (
            "table bridge lvdemo {\n chain noannounce {\n  type filter hook forward priority 0;\n"
            "  ether type 0x8035 drop\n }\n}\n"
        )
        for h in self.hosts:
            done = subprocess.run(
                ["ip", "netns", "exec", h.ns, "nft", "-f", "-"],
                input=rules,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0:
                raise DemoError(f"nft in {h.ns}: {done.stderr.strip()}")

    def close(self) -> list[str]:
        """Remove everything; returns what could not be removed (empty: all gone)."""
        problems: list[str] = []
        for h in self.hosts:
            with contextlib.suppress(Exception):
                if h.state.exists():
                    h.lightvm("destroy", "--all", timeout=120)
        for h in self.hosts:
            try:
                h.ssh.close()  # lightvmd stopped, then sshd
            except Exception as exc:  # go on with the rest; reported below
                problems.append(f"host {h.side}: {exc}")
        for ns in reversed(self._made):
            # Whatever still runs in the namespace (QEMU, a receiver, an SSH session): by PID.
            _kill_netns(ns)
            if Path(f"/run/netns/{ns}").exists():
                problems.append(f"namespace {ns} is still there")
        self._made.clear()
        for h in self.hosts:
            shutil.rmtree(h.shm, ignore_errors=True)
            if h.shm.exists():
                problems.append(f"{h.shm} is still there")
        return problems


def _kill_netns(ns: str) -> None:
    """SIGKILL whatever runs in ``ns`` (by PID), then delete it (its links go with it)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
    for pid in (int(p) for p in pids.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _ip("netns", "del", ns, check=False)


def reap_stale() -> list[str]:
    """Remove what demo runs killed with SIGKILL left: namespaces, NoXS dirs and temporary
    dirs named ``lvdemo<PID>-...`` whose PID is no longer alive. Everything such a run
    started (sshd, lightvmd, QEMU, the client) ran inside its namespaces, so it goes with
    them. Returns what was removed."""

    def dead(name: str) -> bool:
        m = re.match(r"lvdemo(\d+)-", name)
        return m is not None and not Path(f"/proc/{m.group(1)}").exists()

    removed: list[str] = []
    netns = Path("/run/netns")
    for p in sorted(netns.glob("lvdemo*")) if netns.exists() else []:
        if dead(p.name):
            _kill_netns(p.name)
            removed.append(f"namespace {p.name}")
    for p in [*Path("/dev/shm").glob("lvdemo*"), *Path("/tmp").glob("lvdemo*")]:
        if p.is_dir() and dead(p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    if removed:  # their QEMUs' jail uids and cgroups (lightvm/jail.py, lightvm/cgroups.py)
        from lightvm import cgroups, jail

        removed += [f"jail uid {uid}" for uid in jail.sweep_stale()]
        cgroups.sweep()
    return removed


def leftovers(tag: str) -> list[str]:
    """What of run ``tag`` still exists: namespaces, NoXS dirs, processes naming it."""
    found = [f"namespace {p.name}" for p in Path("/run/netns").glob(f"{tag}-*")] if Path("/run/netns").exists() else []
    found += [f"{p}" for p in Path("/dev/shm").glob(f"{tag}-*")]
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if tag in cmd:
                found.append(f"process {proc.name}: {cmd[:120]}")
    return found


def wait_gone(tag: str, timeout: float = 5.0) -> list[str]:
    """:func:`leftovers` once it is empty or ``timeout`` passed (a killed process takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(tag)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


__all__ = ["BRIDGE", "CLIENT_IP", "VM_IP", "DemoError", "Host", "Segment", "leftovers", "reap_stale", "wait_gone"]

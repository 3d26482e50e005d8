"""A second "host" for the checkpoint benchmark: an sshd on loopback with its own host key,
and lightvmd on two state dirs (the source's and the destination's). The migration demo
(lightvm/bench/demo/) uses the same class for an sshd inside a network namespace (``netns``,
``addr``): one host of its shared L2 segment each.

Why loopback and not two network namespaces (as tests/root/test_migrate.py does): the
benchmark measures what lightvm adds (SSH handshake, process starts, QEMU start, the
stream, the handover), and both ends share this host's two cores either way; a veth
between namespaces adds nothing measurable for ~200 KB. Needs root (sshd) and
openssh-server; :func:`unavailable` says why not when it cannot run.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from lightvm.bench.ports import free_port
from lightvm.daemon import api
from lightvm.util import wait_until

SSHD = Path("/usr/sbin/sshd")


def unavailable() -> str | None:
    """Why the SSH rows cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (sshd)"
    if not SSHD.exists():
        return "needs openssh-server (apt-get install openssh-server)"
    return None


def spawn_sshd(root: Path, addr: str, port: int, authorized: Path, netns: str | None = None) -> subprocess.Popen[bytes]:
    """An sshd for tests and benchmarks, listening on ``addr:port`` (inside ``netns`` if given):
    a new host key (``root/ssh_host_ed25519_key``), its config and log in ``root``, keys from
    ``authorized`` only, never the system's service or settings. Returns once it listens.

    ``ClientAliveInterval 1``: a cut link must end the session (and with it the migration's
    receiver) within seconds. ``LogLevel INFO``: "Server listening" tells that a start
    inside a namespace is done (no connect from here).

    :raise RuntimeError: sshd exited or did not listen within 10 s (its log quoted).
    """
    hostkey = root / "ssh_host_ed25519_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)])
    cfg = root / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress {addr}\nHostKey {hostkey}\nPidFile {root}/sshd.pid\n"
        f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "ClientAliveInterval 1\nClientAliveCountMax 3\nLogLevel INFO\n"
    )
    log = root / "sshd.log"
    inside = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen(
        [*inside, str(SSHD), "-D", "-f", str(cfg), "-E", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        return proc.poll() is not None or (log.exists() and "Server listening" in log.read_text())

    if not wait_until(listening, timeout=10.0) or proc.poll() is not None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        raise RuntimeError(f"sshd did not start: {log.read_text() if log.exists() else 'no log'}")
    return proc


def _run(argv: list[str], timeout: float = 60.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return done.stdout


# Where lightvm keeps host resources and what it runs: the SSH side must use the same.
SHARED_ENV = (
    "LIGHTVM_JAIL",
    "LIGHTVM_JAIL_DIR",
    "LIGHTVM_CGROUP_PARENT",
    "LIGHTVM_SHM_DIR",
    "LIGHTVM_CACHE_DIR",
    "LIGHTVM_IMAGE_DIR",
    "LIGHTVM_QEMU",
    "LIGHTVM_CHECKPOINT_KEY_FILE",
)


class SshHost:
    """sshd on ADDR:PORT (keys and config in ``root``), and lightvmd helpers.

    By default on 127.0.0.1 and a free port of this namespace; with ``netns`` the sshd,
    the lightvmds and every command of :meth:`start_daemon` run inside that network
    namespace, listening on ``addr`` there. ``env`` goes to the daemons and to the
    remote command (sshd passes no environment), over this process's own settings of
    :data:`SHARED_ENV`: the "remote" host is this machine, and a migrate-receive that
    allocated jail uids, cgroups or NoXS files somewhere else than this process looks
    (a test's private jail dir, say) would leave them behind unseen.
    """

    def __init__(
        self,
        root: Path,
        addr: str = "127.0.0.1",
        netns: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.addr = addr
        self.netns = netns
        self.port = port or free_port()
        self.env = {k: os.environ[k] for k in SHARED_ENV if k in os.environ} | dict(env or {})
        self.key = root / "id_ed25519"
        self.known_hosts = root / "known_hosts"
        prefix = ["env", *(f"{k}={v}" for k, v in sorted(self.env.items()))] if self.env else []
        self.remote_command = " ".join(shlex.quote(a) for a in [*prefix, sys.executable, "-m", "lightvm.cli"])
        self._sshd: subprocess.Popen[bytes] | None = None
        self._daemons: list[Path] = []
        self._made_run_sshd = False

    def start(self) -> None:
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        authorized = self.root / "authorized_keys"
        authorized.write_text(Path(f"{self.key}.pub").read_text())
        if not Path("/run/sshd").exists():  # sshd's privilege separation dir
            Path("/run/sshd").mkdir(mode=0o755)
            self._made_run_sshd = True
        self._sshd = spawn_sshd(self.root, self.addr, self.port, authorized, self.netns)
        parts = (self.root / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.addr}]:{self.port} {parts[0]} {parts[1]}\n")

    def _inside(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def lightvm(self, state_dir: Path, *args: str, timeout: float = 60.0) -> str:
        """``lightvm --state-dir STATE_DIR ARGS`` on this host (in its namespace, with its env)."""
        env = ["env", *(f"{k}={v}" for k, v in sorted(self.env.items()))] if self.env else []
        argv = [*self._inside(), *env, sys.executable, "-m", "lightvm.cli", "--state-dir", str(state_dir), *args]
        return _run(argv, timeout)

    def target_args(self, state_dir: Path) -> dict[str, Any]:
        return {
            "target": f"root@{self.addr}",
            "port": self.port,
            "known_hosts": str(self.known_hosts),
            "identity": str(self.key),
            "remote_command": self.remote_command,
            "remote_state_dir": str(state_dir),
        }

    def start_daemon(self, state_dir: Path, accel: str, incoming_size: int) -> None:
        """``lightvm daemon start`` on ``state_dir`` (stopped by :meth:`close`)."""
        self._daemons.append(state_dir)
        self.lightvm(state_dir, "daemon", "start", "--accel", accel, "--incoming-size", str(incoming_size))

    def close(self) -> None:
        for state_dir in self._daemons:
            with contextlib.suppress(Exception):
                _run([sys.executable, "-m", "lightvm.cli", "--state-dir", str(state_dir), "daemon", "stop"], 90.0)
        self._daemons.clear()
        if self._sshd is not None:
            self._sshd.terminate()
            try:
                self._sshd.wait(10)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait(10)
            self._sshd = None
        if self._made_run_sshd:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()


def call(state_dir: Path, op: str, args: dict[str, Any], timeout: float = 60.0) -> Any:
    with api.Client.connect(state_dir, timeout=2.0) as client:
        return client.call(op, args, timeout=timeout)


def wait_incoming_ready(state_dir: Path, timeout: float = 30.0) -> bool:
    """Until the daemon on ``state_dir`` has a prepared -incoming shell (a quiet pool)."""

    def ready() -> bool:
        info = call(state_dir, "ping", {})
        return any(f["ready"] >= 1 and not f["preparing"] for f in info.get("incoming") or [])

    return bool(wait_until(ready, timeout=timeout, interval=0.01, max_interval=0.1))


__all__ = ["SshHost", "call", "unavailable", "wait_incoming_ready"]

"""Live migration between two "hosts" on one machine: two network namespaces joined by a
veth (a private /30 that exists only between them), an sshd in each (its own config, host
key and authorized_keys in the test's tmp dir, listening on its namespace address), and a
lightvm state dir per host. The source CLI runs inside namespace A.

Needs root and openssh-server (``apt-get install openssh-server``; only /usr/sbin/sshd is
used, never the system service).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import LightVM, guard_env, qemu_pids_mentioning

from lightvm.state import noxs_file
from lightvm.util import wait_until

pytestmark = [pytest.mark.root, pytest.mark.functional]

REPO = Path(__file__).resolve().parents[2]
DAYTIME = REPO / "examples" / "daytime.toml"
SSHD = Path("/usr/sbin/sshd")
SSH_PORT = 2222
SUBNET = "10.213.77"  # .1 = host A, .2 = host B (a /30 inside the test's namespaces only)
_counter = itertools.count()


def run(argv: list[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


DAYTIME_CLIENT = """
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as c:
        data = b""
        while not data.endswith(b"\\n"):
            chunk = c.recv(256)
            if not chunk:
                break
            data += chunk
    sys.stdout.write(data.decode(errors="replace"))
except OSError:
    pass
"""


@dataclass
class Host:
    ns: str
    addr: str
    dir: Path
    lv: Any  # tests/conftest.py's LightVM
    sshd: subprocess.Popen[bytes] | None = None

    def daytime(self, port: int) -> str | None:
        out = run(["ip", "netns", "exec", self.ns, sys.executable, "-c", DAYTIME_CLIENT, str(port)]).stdout
        return out or None

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
    key = host.dir / "ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    cfg = host.dir / "sshd_config"
    cfg.write_text(
        f"Port {SSH_PORT}\nListenAddress {host.addr}\nHostKey {key}\nPidFile {host.dir}/sshd.pid\n"
        f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        # A cut link must end the session (and with it the receiver) within seconds.
        "ClientAliveInterval 1\nClientAliveCountMax 3\nLogLevel INFO\n"
    )
    log = host.dir / "sshd.log"
    host.sshd = subprocess.Popen(
        ["ip", "netns", "exec", host.ns, str(SSHD), "-D", "-f", str(cfg), "-E", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listening = wait_until(
        lambda: "Server listening" in (log.read_text() if log.exists() else "") or host.sshd.poll() is not None,  # type: ignore[union-attr]
        timeout=10,
    )
    assert listening and host.sshd.poll() is None, f"sshd did not start: {log.read_text() if log.exists() else ''}"


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
        for h in hs:
            h.lv.remember_ids()
            if h.lv.vm_dirs():
                h.lv.run("destroy", "--all", timeout=120)
            leftovers = h.lv.leftovers()
            for pid in qemu_pids_mentioning(str(h.lv.state_dir)):
                os.kill(pid, signal.SIGKILL)
            if h.sshd is not None:
                h.sshd.terminate()
                try:
                    h.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    h.sshd.kill()
                    h.sshd.wait(10)
            run(["ip", "netns", "del", h.ns], check=False)
            for vm_id in h.lv.seen_ids:
                noxs_file(vm_id).unlink(missing_ok=True)
            assert not leftovers, f"leftovers on host {h.ns}: {leftovers}"
        if made_run_sshd:
            with_sshd = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_sshd(p)]
            if not with_sshd:
                Path("/run/sshd").rmdir()


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


def test_migrate_daytime(hosts: TwoHosts) -> None:
    port = boot_daytime(hosts)
    before = hosts.a.guest("daytime")
    assert before["app_counter"] >= 1
    out = hosts.a.lv.ok(*hosts.migrate_args("daytime", "--json")).out
    result = json.loads(out)
    assert result["bytes"] > 0 and result["downtime_ms"] >= 0 and result["migrate_ms"] > 0
    assert hosts.a.lv.status() == {}  # source destroyed
    assert hosts.b.lv.status() == {"daytime": "running"}
    reply = wait_until(lambda: hosts.b.daytime(port), timeout=20, interval=0.05)
    assert reply and str(__import__("time").gmtime().tm_year) in reply
    after = hosts.b.guest("daytime")
    # The same guest, not a reboot: its own counters continue.
    assert after["app_counter"] == before["app_counter"] + 1
    assert after["heartbeat"] >= before["heartbeat"] and after["state"] == "READY"


def test_migrate_through_tunnel(hosts: TwoHosts) -> None:
    port = boot_daytime(hosts)
    before = hosts.a.guest("daytime")
    result = json.loads(hosts.a.lv.ok(*hosts.migrate_args("daytime", "--tunnel", "--json")).out)
    assert result["tunnel"] and result["bytes"] > 0
    assert hosts.a.lv.status() == {} and hosts.b.lv.status() == {"daytime": "running"}
    assert wait_until(lambda: hosts.b.daytime(port), timeout=20, interval=0.05)
    assert hosts.b.guest("daytime")["app_counter"] == before["app_counter"] + 1


def test_wrong_or_unknown_host_key_refused(hosts: TwoHosts, tmp_path: Path) -> None:
    port = boot_daytime(hosts)
    other = tmp_path / "other"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    wrong = tmp_path / "wrong_known_hosts"
    parts = Path(f"{other}.pub").read_text().split()
    wrong.write_text(f"[{hosts.b.addr}]:{SSH_PORT} {parts[0]} {parts[1]}\n")
    result = hosts.a.lv.run(*hosts.migrate_args("daytime", known_hosts=wrong))
    assert result.code == 1 and "host key mismatch" in result.err and "refusing" in result.err, result.err
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    result = hosts.a.lv.run(*hosts.migrate_args("daytime", known_hosts=empty))
    assert result.code == 1 and "not in known_hosts" in result.err, result.err
    assert hosts.a.lv.status() == {"daytime": "running"} and hosts.b.lv.vm_dirs() == []
    assert hosts.a.daytime(port)


def _b_clean(hs: TwoHosts) -> bool:
    return not hs.b.lv.vm_dirs() and not qemu_pids_mentioning(str(hs.b.lv.state_dir))


def _start_slow_migration(hs: TwoHosts) -> subprocess.Popen[str]:
    # 48 KiB/s: the ~200 KiB stream takes seconds, so the fault lands mid-stream.
    proc = hs.a.lv.popen(*hs.migrate_args("daytime", "--bandwidth-mib", "0.05", "--timeout", "20"))
    assert wait_until(lambda: qemu_pids_mentioning(str(hs.b.lv.state_dir)), timeout=60), "receiver never started"
    return proc


def _fail_mid_migration(hosts: TwoHosts, fault: Callable[[], object]) -> str:
    """Boot daytime on A, start a slow migration to B, inject ``fault`` once the stream
    flows, and check what every mid-migration fault must leave: the command fails saying
    the VM keeps running on A, it does (daytime answers there), and B holds nothing.
    Returns the command's stderr for the fault's own checks."""
    port = boot_daytime(hosts)
    proc = _start_slow_migration(hosts)
    try:
        assert wait_until(lambda: _migrating(hosts), timeout=60)
        fault()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 1 and "keeps running here" in err, err
    assert hosts.a.lv.status() == {"daytime": "running"}
    assert wait_until(lambda: hosts.a.daytime(port), timeout=10, interval=0.05)
    assert wait_until(lambda: _b_clean(hosts), timeout=30), f"leftovers on B: {hosts.b.lv.vm_dirs()}"
    return err


def test_veth_cut_mid_migration(hosts: TwoHosts) -> None:
    # The link between the hosts is cut.
    err = _fail_mid_migration(hosts, lambda: run(["ip", "-n", hosts.a.ns, "link", "set", hosts.veth_a, "down"]))
    assert "stalled" in err and "network to the destination down" in err, err


def _migrating(hs: TwoHosts) -> bool:
    """True once the migration stream flows: an established TCP connection into B that is not SSH."""
    out = run(["ss", "-N", hs.b.ns, "-Htn", "state", "established"], check=False).stdout
    return any(line.split()[2].rsplit(":", 1)[1] != str(SSH_PORT) for line in out.splitlines() if line.split())


def test_destination_qemu_killed(hosts: TwoHosts) -> None:
    def kill_destination_qemu() -> None:
        for pid in qemu_pids_mentioning(str(hosts.b.lv.state_dir)):
            os.kill(pid, signal.SIGKILL)

    err = _fail_mid_migration(hosts, kill_destination_qemu)
    assert "the receiving QEMU exited" in err, err  # the receiver's explanation reaches the user


def test_migrate_daytime_on_a_tap(hosts: TwoHosts, tmp_path: Path) -> None:
    """Networking is recreated on the destination: a tap on the same-named network, same IP and MAC."""
    for h in (hosts.a, hosts.b):
        h.lv.ok("network", "create", "mignet", "--subnet", "10.214.9.0/24")
    cfg = tmp_path / "daytime.toml"
    text = DAYTIME.read_text().replace("[[vifs]]", '[[vifs]]\nnetwork = "mignet"')
    cfg.write_text(text.replace('"../images/build/', f'"{REPO}/images/build/'))
    (vm,) = hosts.a.lv.create(cfg)
    ip = next(w for w in vm["network"].split() if w.startswith("10.214.9.")).split("/")[0]
    client = DAYTIME_CLIENT.replace('"127.0.0.1"', f'"{ip}"').replace("int(sys.argv[1])", "13")

    def ask(h: Host) -> str | None:
        return run(["ip", "netns", "exec", h.ns, sys.executable, "-c", client]).stdout or None

    assert wait_until(lambda: ask(hosts.a), timeout=20, interval=0.05)
    hosts.a.lv.ok(*hosts.migrate_args("daytime"))
    assert hosts.b.lv.status() == {"daytime": "running"} and hosts.a.lv.status() == {}
    assert wait_until(lambda: ask(hosts.b), timeout=20, interval=0.05)
    leases = {h.ns: json.loads(h.lv.ok("network", "list", "--json").out)[0]["leases"] for h in (hosts.a, hosts.b)}
    assert leases[hosts.a.ns] == [] and [lease["ip"] for lease in leases[hosts.b.ns]] == [ip]
    taps = run(["ip", "-n", hosts.a.ns, "-o", "link", "show", "type", "tun"]).stdout
    assert taps.strip() == "", f"tap left on the source: {taps}"
    assert hosts.b.guest("daytime")["app_counter"] >= 1


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


def test_ssh_session_killed_mid_migration(hosts: TwoHosts) -> None:
    """Only the SSH connection dies (its sshd session on B is killed), the direct stream
    would go on: the receiver sees its control channel close and removes everything; the
    source sees the stream fail and resumes the VM."""

    def kill_ssh_session_on_b() -> None:
        assert hosts.b.sshd is not None
        sessions = _children(hosts.b.sshd.pid)
        assert sessions, "no sshd session on B"
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)

    err = _fail_mid_migration(hosts, kill_ssh_session_on_b)
    assert "SSH session" in err or "stalled" in err, err

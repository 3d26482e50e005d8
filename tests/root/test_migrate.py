"""Live migration between two "hosts" on one machine: two network namespaces joined by a
veth (a private /30 that exists only between them), an sshd in each (its own config, host
key and authorized_keys in the test's tmp dir, listening on its namespace address), and a
lightvm state dir per host (tests/root/twohosts.py, the ``hosts`` fixture). The source
CLI runs inside namespace A.

Needs root and openssh-server (``apt-get install openssh-server``; only /usr/sbin/sshd is
used, never the system service).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import qemu_pids_mentioning
from netclient import parse_daytime
from twohosts import DAYTIME, REPO, SSH_PORT, TwoHosts, _b_clean, _children, _migrating, boot_daytime, run

from lightvm.util import wait_until

pytestmark = [pytest.mark.root, pytest.mark.functional]


def test_migrate_daytime(hosts: TwoHosts) -> None:
    port = boot_daytime(hosts)
    before = hosts.a.guest("daytime")
    assert before["app_counter"] >= 1
    out = hosts.a.lv.ok(*hosts.migrate_args("daytime", "--json")).out
    result = json.loads(out)
    # QEMU reports the downtime in whole ms: a sub-millisecond stop reads 0.
    assert result["bytes"] > 0 and 0 <= result["downtime_ms"] < result["migrate_ms"], result
    assert hosts.a.lv.status() == {}  # source destroyed
    assert hosts.b.lv.status() == {"daytime": "running"}
    reply = wait_until(lambda: hosts.b.daytime(port), timeout=20, interval=0.05)
    assert reply is not None and abs(parse_daytime(reply) - time.time()) < 60, reply
    after = hosts.b.guest("daytime")
    # The same guest, not a reboot: its own counters continue.
    assert after["app_counter"] == before["app_counter"] + 1
    assert after["heartbeat"] >= before["heartbeat"] and after["state"] == "READY"


def test_migrate_is_encrypted_unless_direct(hosts: TwoHosts) -> None:
    """The stream goes inside the SSH connection by default; --direct is plain TCP."""
    port = boot_daytime(hosts)
    before = hosts.a.guest("daytime")
    run = hosts.a.lv.ok(*hosts.migrate_args("daytime", "--json"))
    result = json.loads(run.out)
    assert result["tunnel"] and result["bytes"] > 0
    assert re.search(r"migrate: completed: [0-9.]+ MiB sent; downtime [0-9.]+ ms", run.err), run.err
    assert hosts.a.lv.status() == {} and hosts.b.lv.status() == {"daytime": "running"}
    assert wait_until(lambda: hosts.b.daytime(port), timeout=20, interval=0.05)
    assert hosts.b.guest("daytime")["app_counter"] == before["app_counter"] + 1
    r = hosts.a.lv.run(*hosts.migrate_args("daytime", "--direct", "--tunnel"))
    assert r.returncode == 2 and "not allowed with argument" in r.stderr  # one or the other


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


def _start_slow_migration(hs: TwoHosts, mode: str = "--direct") -> subprocess.Popen[str]:
    # 48 KiB/s: the ~200 KiB stream takes seconds, so the fault lands mid-stream. Direct
    # TCP by default: a fault of the SSH connection alone must not be confused with one of
    # the stream.
    proc = hs.a.lv.popen(*hs.migrate_args("daytime", mode, "--bandwidth-mib", "0.05", "--timeout", "20"))
    assert wait_until(lambda: qemu_pids_mentioning(str(hs.b.lv.state_dir)), timeout=60), "receiver never started"
    return proc


def _fail_mid_migration(hosts: TwoHosts, fault: Callable[[], object], mode: str = "--direct") -> str:
    """Boot daytime on A, start a slow migration to B, inject ``fault`` once the stream
    flows, and check what every mid-migration fault must leave: the command fails saying
    the VM keeps running on A, it does (daytime answers there), and B holds nothing.
    Returns the command's stderr for the fault's own checks."""
    port = boot_daytime(hosts)
    proc = _start_slow_migration(hosts, mode)
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


def test_veth_cut_mid_migration_through_the_tunnel(hosts: TwoHosts) -> None:
    # The same cut with the stream inside the SSH connection (the default): the tunnel's
    # pump blocks in the SSH transport's write; the migration must still fail in seconds.
    cut = lambda: run(["ip", "-n", hosts.a.ns, "link", "set", hosts.veth_a, "down"])  # noqa: E731
    err = _fail_mid_migration(hosts, cut, "--tunnel")
    assert "stalled" in err, err


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
    assert wait_until(lambda: hosts.a.daytime(13, ip), timeout=20, interval=0.05)
    hosts.a.lv.ok(*hosts.migrate_args("daytime"))
    assert hosts.b.lv.status() == {"daytime": "running"} and hosts.a.lv.status() == {}
    reply = wait_until(lambda: hosts.b.daytime(13, ip), timeout=20, interval=0.05)
    assert reply is not None and abs(parse_daytime(reply) - time.time()) < 60, reply
    leases = {h.ns: json.loads(h.lv.ok("network", "list", "--json").out)[0]["leases"] for h in (hosts.a, hosts.b)}
    assert leases[hosts.a.ns] == [] and [lease["ip"] for lease in leases[hosts.b.ns]] == [ip]
    taps = run(["ip", "-n", hosts.a.ns, "-o", "link", "show", "type", "tun"]).stdout
    assert taps.strip() == "", f"tap left on the source: {taps}"
    assert hosts.b.guest("daytime")["app_counter"] >= 1


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
    # Which side notices first is a race; either way the user gets one of the two explanations.
    assert re.search(r"the SSH session to \S+ is gone|stalled: nothing sent for", err), err

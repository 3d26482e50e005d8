"""lightvmd: start/stop/status, socket permissions, the CLI routing, API bad input, restarts."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
from daemonlib import NOOP, Lightvmd, wait_pool
from harness import qemu_pids_mentioning

from lightvm.daemon import api
from lightvm.util import proc_alive, wait_until

pytestmark = pytest.mark.functional


def test_start_status_stop(lightvmd: Lightvmd) -> None:
    r = lightvmd.cli("daemon", "start", "--accel", "tcg", "--pool", str(NOOP), "--pool-size", "1")
    assert r.returncode == 0, r.stderr
    assert "lightvmd started" in r.stdout
    sock = api.socket_path(lightvmd.state_dir)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    status = lightvmd.cli("daemon", "status", "--json")
    info = json.loads(status.stdout)
    assert status.returncode == 0 and info["running"] and info["v"] == api.VERSION
    assert proc_alive(info["pid"], None)
    again = lightvmd.cli("daemon", "start", "--accel", "tcg")
    assert again.returncode == 1 and "already runs" in again.stderr
    wait_pool(lightvmd, 1)
    shells = lightvmd.shell_records()
    assert len(shells) == 1
    r = lightvmd.cli("daemon", "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not proc_alive(info["pid"], None)
    assert lightvmd.cli("daemon", "status").returncode == 3
    assert not sock.exists() and not (lightvmd.state_dir / "lightvmd.pid").exists()
    assert not proc_alive(shells[0]["pid"], shells[0]["pid_start"])  # the prepared shell is discarded
    assert not Path(shells[0]["noxs_path"]).exists()


def test_group_socket_mode(lightvmd: Lightvmd) -> None:
    lightvmd.start("--group", "root", pool=None)
    st = os.stat(api.socket_path(lightvmd.state_dir))
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 0


def test_routed_create_auto_says_why_tcg(lightvmd: Lightvmd) -> None:
    """The reason of an auto->tcg verdict comes back from lightvmd and is printed as in one-shot mode."""
    from lightvm import accel

    if accel.kvm_open_error() is None and not accel.PVM_MODULE.exists():
        pytest.skip("kvm may be usable here: auto would probe, not fall back without one")
    reason = accel.select("auto").reason
    lightvmd.start(size=1)
    wait_pool(lightvmd, 1)
    routed = lightvmd.cli("create", str(NOOP), "--accel", "auto", "--name", "auto")
    assert routed.returncode == 0, routed.stderr
    assert f"accel: tcg ({reason})" in routed.stderr.splitlines() and "via lightvmd" in routed.stderr
    assert "path: pool" in routed.stdout
    as_json = json.loads(lightvmd.cli("create", str(NOOP), "--accel", "auto", "--name", "auto2", "--json").stdout)
    assert as_json["accel"] == "tcg" and as_json["accel_reason"] == reason
    assert lightvmd.create("asked")["accel_reason"] == "requested"  # --accel tcg


def test_second_daemon_refused_first_keeps_serving(lightvmd: Lightvmd) -> None:
    lightvmd.start(pool=None)
    r = lightvmd.cli("daemon", "run", "--accel", "tcg", timeout=60)
    assert r.returncode == 1 and "already runs" in r.stderr
    assert lightvmd.call("ping")["pid"] == lightvmd.proc.pid  # type: ignore[union-attr]


def test_cli_routes_through_daemon_and_falls_back(lightvmd: Lightvmd) -> None:
    one_shot = lightvmd.cli("create", str(NOOP), "--accel", "tcg", "--name", "a")
    assert one_shot.returncode == 0, one_shot.stderr
    assert "path: cold (one-shot" in one_shot.stdout and "via lightvmd" not in one_shot.stderr
    lightvmd.start(size=1)
    wait_pool(lightvmd, 1)
    routed = lightvmd.cli("create", str(NOOP), "--accel", "tcg", "--name", "b")
    assert routed.returncode == 0, routed.stderr
    assert "via lightvmd" in routed.stderr and "path: pool" in routed.stdout and "READY in" in routed.stdout
    listed = json.loads(lightvmd.cli("list", "--json").stdout)
    assert {vm["name"]: vm["status"] for vm in listed} == {"a": "running", "b": "running"}
    assert lightvmd.cli("pause", "b").returncode == 0
    assert lightvmd.cli("unpause", "b").returncode == 0
    info = json.loads(lightvmd.cli("info", "b", "--json").stdout)
    assert info["guest"]["state"] == "READY" and info["qemu_status"] == "running"
    missing = lightvmd.cli("destroy", "nope")
    assert missing.returncode == 1 and "no VM named 'nope'" in missing.stderr
    assert lightvmd.cli("shutdown", "a").returncode == 0
    assert lightvmd.cli("destroy", "b").returncode == 0
    assert json.loads(lightvmd.cli("list", "--json").stdout) == []


def test_api_bad_input_gets_structured_errors(lightvmd: Lightvmd) -> None:
    lightvmd.start(pool=None)
    cases = [
        (b"this is not json\n", "ProtocolError"),
        (b"[1, 2]\n", "ProtocolError"),
        (b'{"v": 99, "id": 1, "op": "ping"}\n', "ProtocolError"),
        (b'{"v": 1, "id": 1}\n', "ProtocolError"),
        (b'{"v": 1, "id": 1, "op": "ping", "args": [1]}\n', "ProtocolError"),
        (b'{"v": 1, "id": 7, "op": "format-disk"}\n', "UnknownOpError"),
        (b'{"v": 1, "id": 1, "op": "destroy", "args": {"names": ["ghost"]}}\n', "NotFoundError"),
        (b'{"v": 1, "id": 1, "op": "info", "args": {"name": "../../etc"}}\n', "NotFoundError"),
        (b'{"v": 1, "id": 1, "op": "create", "args": {}}\n', "SpecError"),
        (b'{"v": 1, "id": 1, "op": "create", "args": {"config": "rel.toml"}}\n', "SpecError"),
        (b'{"v": 1, "id": 1, "op": "create", "args": {"config": "/nonexistent.toml"}}\n', "SpecError"),
        (b'{"v": 1, "id": 1, "op": "create", "args": {"config": 5}}\n', "SpecError"),
        (b'{"v": 1, "id": 1, "op": "pause", "args": {"name": true}}\n', "SpecError"),
        (b"\xff\xfe\x00garbage\n", "ProtocolError"),
        (b"x" * (api.MAX_REQUEST + 10), "ProtocolError"),  # huge, no newline
        (b"x" * (api.MAX_REQUEST + 10) + b"\n", "ProtocolError"),
    ]
    for data, kind in cases:
        reply = lightvmd.raw(data)
        assert reply["ok"] is False and reply["v"] == 1, (data[:80], reply)
        assert reply["error"]["type"] == kind and reply["error"]["message"], (data[:80], reply)
    assert lightvmd.raw(b'{"v": 1, "id": 7, "op": "nope"}\n')["id"] == 7  # the id is echoed
    # A client that connects and hangs up, or sends half a request, costs nothing.
    with lightvmd.client() as c:
        c.send_raw(b'{"v": 1, "id": 1, "op": "pi')
    with lightvmd.client():
        pass
    # The client re-raises the daemon's error as the same lightvm class.
    from lightvm.errors import NotFoundError

    with pytest.raises(NotFoundError):
        lightvmd.call("destroy", {"names": ["ghost"]})
    assert lightvmd.call("ping")["pid"] == lightvmd.proc.pid  # type: ignore[union-attr]
    assert lightvmd.proc is not None and lightvmd.proc.poll() is None


def test_kill9_then_restart_readopts_vms_and_discards_shells(lightvmd: Lightvmd) -> None:
    lightvmd.start(size=2)
    wait_pool(lightvmd, 2)
    vm = lightvmd.create("keep")
    assert vm["path"] == "pool"
    wait_pool(lightvmd, 2)
    old_shells = lightvmd.shell_records()
    assert len(old_shells) == 2 and all(proc_alive(s["pid"], s["pid_start"]) for s in old_shells)
    lightvmd.kill9()
    # The orphaned shells still run (nothing reaps them but the next daemon).
    assert all(proc_alive(s["pid"], s["pid_start"]) for s in old_shells)
    lightvmd.start(size=1)
    for s in old_shells:
        assert not proc_alive(s["pid"], s["pid_start"]), s
        assert not Path(s["noxs_path"]).exists()
        assert not (lightvmd.state_dir / "pool" / s["id"]).exists()
    (listed,) = lightvmd.call("list")
    assert listed["name"] == "keep" and listed["status"] == "running" and listed["pid"] == vm["pid"]
    info = lightvmd.call("info", {"name": "keep"})
    assert info["qemu_status"] == "running" and info["guest"]["state"] == "READY"
    wait_pool(lightvmd, 1)
    assert lightvmd.create("after")["path"] == "pool"
    lightvmd.call("destroy", {"names": ["keep", "after"]})
    assert not proc_alive(vm["pid"], None)


def test_sigterm_discards_shells_vms_keep_running(lightvmd: Lightvmd) -> None:
    lightvmd.start(size=2)
    wait_pool(lightvmd, 2)
    vm = lightvmd.create("stays")
    wait_pool(lightvmd, 2)
    shells = lightvmd.shell_records()
    assert lightvmd.stop() == 0
    assert all(not proc_alive(s["pid"], s["pid_start"]) for s in shells)
    assert not list((lightvmd.state_dir / "pool").iterdir())
    assert proc_alive(vm["pid"], None)
    assert set(qemu_pids_mentioning(str(lightvmd.state_dir), live_only=True)) == {vm["pid"]}
    # One-shot mode serves the VM the daemon made.
    r = lightvmd.cli("destroy", "stays")
    assert r.returncode == 0 and "via lightvmd" not in r.stderr


def test_kill9_mid_life_leaves_socket_cli_falls_back(lightvmd: Lightvmd) -> None:
    lightvmd.start(pool=None)
    pid = lightvmd.proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)
    lightvmd.proc.wait(10)  # type: ignore[union-attr]
    lightvmd.proc = None
    assert api.socket_path(lightvmd.state_dir).exists()  # stale: nobody accepts on it
    r = lightvmd.cli("list")
    assert r.returncode == 0 and "no VMs" in r.stdout and "via lightvmd" not in r.stderr
    assert wait_until(lambda: not proc_alive(pid, None), timeout=5.0)
    lightvmd.start(pool=None)  # takes over the stale socket and pid file
    assert lightvmd.call("ping")["pid"] == lightvmd.proc.pid  # type: ignore[union-attr]


def _warm_cli_server(daemon_pid: int) -> int | None:
    """lightvmd's warm CLI server (lightvm/daemon/warmcli.py): its child running lightvm.cli.warm."""
    for task in os.listdir(f"/proc/{daemon_pid}/task"):
        with open(f"/proc/{daemon_pid}/task/{task}/children") as f:
            for child in map(int, f.read().split()):
                with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                    if b"lightvm.cli.warm" in cmdline.read():
                        return child
    return None


def test_the_warm_cli_server_lives_and_dies_with_lightvmd(lightvmd: Lightvmd) -> None:
    """Started with lightvmd (STATE/cli.sock, 0600); gone with its socket when lightvmd is
    killed with -9 (its lifetime pipe), and when it stops."""
    sock = lightvmd.state_dir / "cli.sock"
    for end in ("kill9", "stop"):
        lightvmd.start(pool=None)
        assert lightvmd.proc is not None
        server = wait_until(lambda: _warm_cli_server(lightvmd.proc.pid), timeout=10.0)  # type: ignore[union-attr]
        assert server, "lightvmd started no warm CLI server"
        assert wait_until(sock.exists, timeout=30.0, interval=0.01)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert lightvmd.call("ping")["warm_cli"] == {"pid": server}  # what `daemon status` shows
        if end == "kill9":
            lightvmd.kill9()  # its own socket and pid file stay: the next start takes them over
        else:
            assert lightvmd.stop() == 0
        gone = wait_until(lambda pid=server: not proc_alive(pid, None), timeout=10.0)
        assert gone, f"the warm CLI server outlived lightvmd ({end})"
        assert not sock.exists(), end

"""Pooled user networking: lightvmd's daytime shells come with a QEMU user netdev, and a
create's ``--publish`` forwards are added at execute (HMP ``hostfwd_add`` over QMP), so
a daytime VM users reach on a host port takes the pool path (lightvm/devices/shellnet.py).
No root needed: nothing is made on the host but the forwards' listening sockets."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from daemonlib import Lightvmd, wait_pool
from netclient import parse_daytime, read_daytime

from lightvm.errors import ExistsError, NetworkError
from lightvm.util import proc_alive

pytestmark = pytest.mark.functional

DAYTIME = Path(__file__).resolve().parents[2] / "examples" / "daytime.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_published_daytime_from_the_pool_answers(lightvmd: Lightvmd, images: Path) -> None:
    lightvmd.env["LIGHTVM_NET_MODE"] = "user"
    lightvmd.start(pool=DAYTIME, size=2)
    stats = wait_pool(lightvmd, 2)
    assert stats["flavours"][0]["flavour"].endswith("/1user"), stats

    ports = [_free_port(), _free_port()]
    r = lightvmd.cli("create", str(DAYTIME), "--accel", "tcg", "--name", "u1", "--publish", f"127.0.0.1:{ports[0]}:13")
    assert r.returncode == 0, r.stderr
    assert "path: pool" in r.stdout and "10.0.2.15/24" in r.stdout, r.stdout
    u2 = lightvmd.create("u2", DAYTIME, publish=[f"127.0.0.1:{ports[1]}:13"])
    assert u2["path"] == "pool" and f"127.0.0.1:{ports[1]}->13/tcp" in u2["network"], u2
    for port in ports:
        text = read_daytime("127.0.0.1", port, timeout=5.0)
        assert text is not None, f"nothing answered on port {port}"
        parse_daytime(text)
    # Each VM has its own MAC from its name, as on the cold path (the device's own is the shell's).
    assert u2["network"].split(" mac ", 1)[1][:17] not in r.stdout

    # A host port already taken: QEMU refuses the forward, the create fails and says so,
    # the shell is gone with its QEMU (the leak guard checks), and the VM never appears.
    wait_pool(lightvmd, 2)
    with pytest.raises(NetworkError, match=f"cannot publish 127.0.0.1:{ports[0]}->13/tcp"):
        lightvmd.create("u3", DAYTIME, publish=[f"127.0.0.1:{ports[0]}:13"])
    assert [vm["name"] for vm in lightvmd.call("list")] == ["u1", "u2"]
    status = lightvmd.cli("daemon", "status")
    assert "last create: path: pool" in status.stdout, status.stdout  # u2's: u3 failed before a path was taken


def test_a_pooled_vm_keeps_its_forwards_across_save_and_restore(
    lightvmd: Lightvmd, images: Path, tmp_path: Path
) -> None:
    lightvmd.env["LIGHTVM_NET_MODE"] = "user"
    lightvmd.start(pool=DAYTIME, size=1)
    wait_pool(lightvmd, 1)
    port = _free_port()
    vm = lightvmd.create("kept", DAYTIME, publish=[f"127.0.0.1:{port}:13"])
    assert vm["path"] == "pool", vm
    ckpt = tmp_path / "kept.ckpt"
    r = lightvmd.cli("save", "kept", str(ckpt))
    assert r.returncode == 0, r.stderr
    assert read_daytime("127.0.0.1", port, timeout=1.0) is None  # saved: stopped, its port closed
    r = lightvmd.cli("restore", str(ckpt))
    assert r.returncode == 0, r.stderr
    text = read_daytime("127.0.0.1", port, timeout=5.0)
    assert text is not None, "the restored VM lost its forward"
    parse_daytime(text)


def test_a_taken_name_discards_the_user_networking_shell(lightvmd: Lightvmd, images: Path) -> None:
    """With user networking the name is checked while the guest wakes (only QEMU's slirp
    sees that NIC), as without devices: the same refusal, the shell gone with its QEMU
    (and the forward it may have added), the VM with the name untouched."""
    lightvmd.env["LIGHTVM_NET_MODE"] = "user"
    lightvmd.start(pool=DAYTIME, size=1)
    wait_pool(lightvmd, 1)
    first_port, port = _free_port(), _free_port()
    first = lightvmd.create("dup", DAYTIME, publish=[f"127.0.0.1:{first_port}:13"])
    assert first["path"] == "pool", first
    wait_pool(lightvmd, 1)
    (shell,) = lightvmd.shell_records()
    with pytest.raises(ExistsError, match="already exists"):
        lightvmd.create("dup", DAYTIME, publish=[f"127.0.0.1:{port}:13"])
    assert not proc_alive(shell["pid"], shell["pid_start"]) and not Path(shell["noxs_path"]).exists()
    with socket.socket() as s:  # the refused create's forward went with its QEMU
        s.bind(("127.0.0.1", port))
    (vm,) = lightvmd.call("list")
    assert (vm["name"], vm["status"], vm["id"]) == ("dup", "running", first["id"])
    text = read_daytime("127.0.0.1", first_port, timeout=5.0)
    assert text is not None, "the VM that has the name stopped answering"
    parse_daytime(text)


def test_a_cold_create_says_why(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    lightvmd.env["LIGHTVM_NET_MODE"] = "user"
    lightvmd.start(pool=DAYTIME, size=1)
    wait_pool(lightvmd, 1)
    bigger = tmp_path / "daytime8.toml"
    bigger.write_text(
        DAYTIME.read_text().replace('memory = "4M"', 'memory = "8M"').replace("../images", str(images.parent))
    )
    r = lightvmd.cli("create", str(bigger), "--accel", "tcg", "--name", "big")
    assert r.returncode == 0, r.stderr
    assert "path: cold (lightvmd; no pool of flavour daytime.elf/8M/1cpu/tcg/1user" in r.stdout, r.stdout
    status = lightvmd.cli("daemon", "status").stdout
    assert "last create: path: cold (no pool of flavour daytime.elf/8M/1cpu/tcg/1user" in status, status


def test_a_pooled_daytime_keeps_its_clock_across_a_pause(lightvmd: Lightvmd, images: Path) -> None:
    """Pause and unpause through lightvmd, on a VM that came from the pool (its page was a
    WAIT_CONFIG placeholder before the real one): the unpause stamps the page, so the guest's
    clock does not stay behind by the 10 s its TSC stood still (noxs-virtio/SPEC.md)."""
    lightvmd.env["LIGHTVM_NET_MODE"] = "user"
    lightvmd.start(pool=DAYTIME, size=1)
    wait_pool(lightvmd, 1)
    port = _free_port()
    vm = lightvmd.create("clock", DAYTIME, publish=[f"127.0.0.1:{port}:13"])
    assert vm["path"] == "pool", vm
    assert lightvmd.cli("pause", "clock").returncode == 0
    time.sleep(10)
    assert lightvmd.cli("unpause", "clock").returncode == 0
    text = read_daytime("127.0.0.1", port, timeout=5.0)
    assert text is not None
    assert abs(parse_daytime(text) - time.time()) < 2, text

"""The jail's per-VM uids and arguments (lightvm/jail.py), without starting QEMU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightvm import jail


@pytest.fixture
def jail_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(jail.DIR_ENV, str(tmp_path / "jail"))
    monkeypatch.delenv(jail.ENV, raising=False)
    monkeypatch.setattr(jail, "sandbox_supported", lambda binary: True)
    monkeypatch.setattr(jail.os, "geteuid", lambda: 0)
    return tmp_path / "jail"


def test_each_vm_gets_its_own_uid_and_the_layers(jail_dir: Path) -> None:
    a, b = jail.allocate("vm-a", "qemu"), jail.allocate("vm-b", "qemu")
    assert a.uid is not None and b.uid is not None and a.uid != b.uid
    assert a.uid >= jail.UID_BASE and b.uid >= jail.UID_BASE
    assert a.args == ("-sandbox", jail.SANDBOX, "-runas", f"{a.uid}:{a.uid}", "-chroot", str(jail_dir / "root"))
    assert sorted(os.listdir(jail_dir / "uids")) == sorted([str(a.uid), str(b.uid)])
    assert os.listdir(jail_dir / "root") == [] and (jail_dir / "root").stat().st_mode & 0o777 == 0o555
    assert os.readlink(jail_dir / "vms" / "vm-a") == str(a.uid)  # found by the VM's id alone
    a.release()
    assert os.listdir(jail_dir / "uids") == [str(b.uid)] and os.listdir(jail_dir / "vms") == ["vm-b"]
    jail.release_vm("vm-b")  # what destroy does, from the record's id
    assert os.listdir(jail_dir / "uids") == [] == os.listdir(jail_dir / "vms")


def test_the_same_vm_id_probes_past_a_live_holder(jail_dir: Path) -> None:
    first = jail.allocate("same", "qemu")
    second = jail.allocate("same", "qemu")  # this process holds the first: alive, not stale
    assert first.uid is not None and second.uid == first.uid + 1


def test_a_dead_holders_uid_is_reused(jail_dir: Path) -> None:
    first = jail.allocate("vm", "qemu")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    first.hand_to(dead.pid, 12345)  # the "QEMU" that held it is gone (and its start time is not this)
    again = jail.allocate("vm", "qemu")
    assert again.uid == first.uid  # the stale marker was taken over
    assert (jail_dir / "uids" / str(again.uid)).read_text().split()[0] == str(os.getpid())


def test_a_create_killed_mid_claim_leaves_nothing_that_stays(jail_dir: Path) -> None:
    """Markers are claimed by linking a written file into place: a kill -9 can leave only
    the claimer's .new- file (swept once it is dead), never an empty marker; an empty one
    an older lightvm left is taken back after a minute."""
    first = jail.allocate("vm", "qemu")  # makes the folders
    assert first.uid is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    uids = jail_dir / "uids"
    orphan = uids / f"{jail.NEW_PREFIX}{dead.pid}-{dead.pid}-{first.uid + 7}"
    orphan.write_text(f"{dead.pid} 1 other\n")
    mine = uids / f"{jail.NEW_PREFIX}{os.getpid()}-1-{first.uid + 8}"  # a live claimer's: kept
    mine.write_text("x")
    old_claim = (
        uids / f"{jail.NEW_PREFIX}{os.getpid()}-2-{first.uid + 11}"
    )  # live PID, but a minute old: its PID reused
    old_claim.write_text("x")
    os.utime(old_claim, (1, 1))
    empty_old, empty_new = uids / str(first.uid + 9), uids / str(first.uid + 10)
    empty_old.write_text("")
    empty_new.write_text("")
    os.utime(empty_old, (1, 1))
    assert jail.sweep_stale() == [first.uid + 9]
    assert sorted(os.listdir(uids)) == sorted([str(first.uid), mine.name, empty_new.name])
    mine.unlink()


def test_threads_racing_for_one_uid(jail_dir: Path) -> None:
    """Threads of one process (create -j) claiming the same marker: exactly one wins, the
    marker holds the winner's line, and no claim file is left (they once shared one name:
    a loser's O_TRUNC emptied the winner's marker, or its link failed with ENOENT)."""
    import threading

    jail.allocate("vm", "qemu")  # makes the folders
    uids = jail_dir / "uids"
    for round_ in range(30):
        path = uids / str(jail.UID_BASE + 100 + round_)
        start = threading.Barrier(8)
        won: list[str] = []

        def claim(n: int, path: Path = path, start: threading.Barrier = start, won: list[str] = won) -> None:
            start.wait(10)
            if jail._claim(path, f"{os.getpid()} 0 vm-{n}\n"):
                won.append(f"vm-{n}")

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(won) == 1, won
        assert path.read_text().split()[2] == won[0]
        assert not [n for n in os.listdir(uids) if n.startswith(jail.NEW_PREFIX)]


def test_settings(jail_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jail.ENV, "off")
    assert jail.allocate("x", "qemu").args == () and jail.layers("qemu") == [] and not jail.layers_drop_root()
    monkeypatch.setenv(jail.ENV, "seccomp")
    only = jail.allocate("x", "qemu")
    assert only.uid is None and only.args == ("-sandbox", jail.SANDBOX)
    assert jail.layers("qemu") == ["seccomp", "no_new_privs"] and not jail.layers_drop_root()
    monkeypatch.setenv(jail.ENV, "on")
    monkeypatch.setattr(jail.os, "geteuid", lambda: 1000)  # rootless: the filter only
    assert jail.allocate("x", "qemu").args == ("-sandbox", jail.SANDBOX) and not jail.layers_drop_root()
    monkeypatch.setattr(jail.os, "geteuid", lambda: 0)
    monkeypatch.setattr(jail, "sandbox_supported", lambda binary: False)  # a QEMU without libseccomp
    plain = jail.allocate("x", "qemu")
    assert "-sandbox" not in plain.args and "-runas" in plain.args
    assert jail.layers("qemu") == ["uid", "no_capabilities", "chroot"]


def test_sandbox_probe_is_real_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTVM_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / "qemu-no-seccomp"
    fake.write_text('#!/bin/sh\n[ "$1" = -sandbox ] && { echo "There is no option group sandbox" >&2; exit 1; }\n')
    fake.chmod(0o755)
    assert jail.sandbox_supported(str(fake)) is False
    fake.write_text("#!/bin/sh\nexit 0\n")  # another build: a new size and mtime, a new cache key
    os.utime(fake, (1, 1))
    assert jail.sandbox_supported(str(fake)) is True


def test_destroying_a_vm_whose_create_died_takes_that_create_s_uid_claim(jail_dir: Path, tmp_path: Path) -> None:
    # A create killed inside _claim (create -n 4 -j 2, kill -9: seen in CI) leaves its
    # claim file, which no record names: the destroy of what it left sweeps it.
    from lightvm.instance import destroy
    from lightvm.state import VMDir

    jail.allocate("kept", "qemu")  # a live holder: stays
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    pid = int(dead.stdout)
    claim = jail_dir / "uids" / f"{jail.NEW_PREFIX}{pid}-{pid}-{jail.UID_BASE + 7}"
    claim.write_text(f"{pid} 1 gone\n")
    finished, unfinished = VMDir(tmp_path / "vms" / "done"), VMDir(tmp_path / "vms" / "half")
    for vmdir in (finished, unfinished):
        vmdir.path.mkdir(parents=True)
    destroy(finished, None)
    assert claim.exists()  # a finished VM's destroy scans nothing
    unfinished.creating_path.write_text(json.dumps({"pid": pid, "start": 1}))
    destroy(unfinished, None)
    assert not claim.exists() and not unfinished.path.exists()
    assert os.listdir(jail_dir / "vms") == ["kept"]


def test_a_destroy_racing_the_create_is_not_undone_by_hand_to(jail_dir: Path) -> None:
    """`destroy --all` during a create gives the VM's uid back between allocate and the QEMU
    launch (release_vm by the record's id); hand_to must not make the marker again (it
    would name a QEMU that nothing gives back: the leak guard's "a VM's uid not given
    back" in test_create_racing_destroy_all), nor overwrite the marker of a VM that took
    the uid since."""
    from lightvm.errors import StateError

    raced = jail.allocate("vm", "qemu")
    assert raced.uid is not None
    jail.release_vm("vm")  # the racing destroy
    with pytest.raises(StateError, match="destroyed while it was created"):
        raced.hand_to(4242, 1)
    assert os.listdir(jail_dir / "uids") == []  # still given back

    taken = jail.allocate("vm", "qemu")
    assert taken.uid is not None
    marker = jail_dir / "uids" / str(taken.uid)
    marker.write_text("1 0 another-vm\n")  # given back and claimed by another VM meanwhile
    with pytest.raises(StateError, match="another's now"):
        taken.hand_to(4242, 1)
    assert marker.read_text() == "1 0 another-vm\n"

    mine = jail.allocate("vm2", "qemu")  # the usual case: the QEMU holds it from now on
    assert mine.uid is not None
    mine.hand_to(4242, 7)
    assert (jail_dir / "uids" / str(mine.uid)).read_text() == "4242 7 vm2\n"

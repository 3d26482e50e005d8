"""lightvmd as a service: its options from a TOML file (lightvm/cli/daemonconf.py), the
systemd unit `lightvm daemon unit` prints, and sd_notify datagrams (lightvm/daemon/sdnotify.py)."""

from __future__ import annotations

import configparser
import socket
import sys
from pathlib import Path

import pytest

from lightvm.cli import daemon as daemon_cli
from lightvm.cli import main as cli
from lightvm.daemon import sdnotify
from lightvm.errors import SpecError


def parsed(*argv: str):  # type: ignore[no-untyped-def]
    args = cli.build_parser(with_network=False).parse_args(["daemon", *argv])
    daemon_cli._configure(args)
    return args


def test_file_fills_what_the_command_line_leaves(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "lightvmd.toml"
    conf.parent.mkdir()
    conf.write_text(
        'state-dir = "/run/lv-test"\ngroup = "kvm"\npool = ["vms/a.toml", "/abs/b.toml"]\n'
        'pool-size = 7\naccel = "tcg"\npool-variant = "stopped"\n'
    )
    args = parsed("run", "--config", str(conf), "--pool-size", "2")
    assert args.pool_size == 2  # the command line wins
    assert args.pool == [conf.parent / "vms" / "a.toml", Path("/abs/b.toml")]  # relative to the file
    assert (args.group, args.accel, args.pool_variant, args.state_dir) == (
        "kvm",
        "tcg",
        "stopped",
        Path("/run/lv-test"),
    )
    assert args.pool_max == 64 and args.incoming == []  # neither: the defaults


def test_without_a_file_the_defaults_hold(tmp_path: Path) -> None:
    args = parsed("start", "--state-dir", str(tmp_path))
    assert (args.pool_size, args.pool_max, args.accel, args.pool, args.group) == (4, 64, "auto", [], None)
    assert args.state_dir == tmp_path
    before = cli.build_parser(with_network=False).parse_args(["--state-dir", str(tmp_path), "daemon", "run"])
    daemon_cli._configure(before)
    assert before.state_dir == tmp_path  # given before the command: not overwritten


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pool-sise = 3\n", r"unknown key 'pool-sise' \(known: .*pool-size"),
        ('pool-size = "3"\n', "pool-size: want an integer, got '3'"),
        ("pool-size = true\n", "pool-size: want an integer, got True"),
        ('accel = "hvf"\n', "accel: 'hvf' is not one of auto, kvm, tcg"),
        ("pool = [1]\n", "pool: want a string, got 1"),
        ("config = 'x'\n", "unknown key 'config'"),
        ("pool-size = \n", "not valid TOML"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "d.toml"
    conf.write_text(text)
    with pytest.raises(SpecError, match=rf"daemon config {conf}: .*{message}"):
        parsed("run", "--config", str(conf))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"daemon config .*nope.toml: No such file"):
        parsed("run", "--config", str(tmp_path / "nope.toml"))


def test_unit_runs_this_lightvm_under_notify(tmp_path: Path) -> None:
    text = daemon_cli.unit_text(tmp_path / "d.toml", str(tmp_path / "state"))
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(text)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["KillMode"] == "process"
    assert service["ExecStart"] == (
        f"{sys.executable} -m lightvm.cli --state-dir {tmp_path / 'state'} daemon run --config {tmp_path / 'd.toml'}"
    )
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "@" not in service["ExecStart"]


def test_sd_notify_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sdnotify.ENV, raising=False)
    assert sdnotify.notify(ready=1) is None  # not under a service manager: nothing to do
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.settimeout(2.0)
        monkeypatch.setenv(sdnotify.ENV, str(path))
        assert sdnotify.notify(ready=1, status="serving x") is None
        assert manager.recv(4096) == b"READY=1\nSTATUS=serving x"
    abstract = f"@lightvm-test-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + abstract[1:])
        manager.settimeout(2.0)
        monkeypatch.setenv(sdnotify.ENV, abstract)
        assert sdnotify.notify(stopping=1) is None
        assert manager.recv(4096) == b"STOPPING=1"
    monkeypatch.setenv(sdnotify.ENV, str(tmp_path / "gone"))
    assert "cannot notify" in (sdnotify.notify(ready=1) or "")  # said, never raised
    monkeypatch.setenv(sdnotify.ENV, "relative")
    assert "neither a path" in (sdnotify.notify(ready=1) or "")

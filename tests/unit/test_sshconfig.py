"""The SSH config applied to a migration target: aliases, User, Port, IdentityFile, and the
command line winning over the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lightvm.cli.checkpoint import add_ssh_args, target_args
from lightvm.mobility.migrate import MigrationError
from lightvm.mobility.sshconfig import resolve


@pytest.fixture
def config(tmp_path: Path) -> Path:
    key = tmp_path / "id_demo"
    key.write_text("not a real key: only its existence matters here\n")
    path = tmp_path / "config"
    path.write_text(
        "Host demo-b\n"
        "    HostName 10.99.0.2\n"
        "    User migrator\n"
        "    Port 2222\n"
        f"    IdentityFile {key}\n"
        "    IdentityFile ~/.ssh/does-not-exist-lightvm\n"
        "Host *.lab\n"
        "    Port 2200\n"
    )
    return path


def test_alias_gives_host_user_port_and_key(config: Path) -> None:
    where = resolve("demo-b", None, None, config)
    assert where.target == "migrator@10.99.0.2"
    assert where.port == 2222
    assert where.identity == config.parent / "id_demo"
    assert where.alias == "demo-b"


def test_command_line_wins(config: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    where = resolve("root@demo-b", 22, mine, config)
    assert (where.target, where.port, where.identity) == ("root@10.99.0.2", 22, mine)


def test_patterns_and_unmatched_hosts(config: Path) -> None:
    assert resolve("db.lab", None, None, config).port == 2200
    plain = resolve("otherhost", None, None, config)
    assert (plain.target, plain.port, plain.identity, plain.alias) == ("otherhost", 22, None, None)


def test_no_config_file_means_ssh_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config there
    where = resolve("alice@h1", None, None)
    assert (where.target, where.port, where.identity, where.alias) == ("alice@h1", 22, None, None)


def test_bad_config_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("Host x\n    Port many\n")
    with pytest.raises(MigrationError, match=r"SSH config .*config: Port 'many' is not a TCP port"):
        resolve("x", None, None, path)
    with pytest.raises(MigrationError, match=r"SSH config .*missing"):
        resolve("x", None, None, tmp_path / "missing")


def test_cli_sends_the_resolved_target_to_the_daemon(config: Path) -> None:
    parser = argparse.ArgumentParser()
    add_ssh_args(parser)
    args = parser.parse_args(["demo-b", "--ssh-config", str(config)])
    sent = target_args(args)
    assert (sent["target"], sent["port"], sent["identity"]) == (
        "migrator@10.99.0.2",
        2222,
        str(config.parent / "id_demo"),
    )

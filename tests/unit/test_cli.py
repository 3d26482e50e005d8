"""CLI parsing and error reporting, without QEMU: bad input fails in one line and creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightvm.cli import main as cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parser_commands() -> None:
    parser = cli.build_parser(with_network=False)
    args = parser.parse_args(["create", "x.toml", "--name", "a", "--accel", "tcg", "-n", "3", "--json"])
    assert (args.command, args.name, args.accel, args.count, args.json) == ("create", "a", "tcg", 3, True)
    assert args.config == Path("x.toml")
    for command in ("list", "destroy", "shutdown", "pause", "unpause", "console", "info"):
        assert command in parser.format_help()


def test_state_dir_before_or_after_the_command(tmp_path: Path) -> None:
    parser = cli.build_parser(with_network=False)
    assert parser.parse_args(["--state-dir", str(tmp_path), "list"]).state_dir == tmp_path
    assert parser.parse_args(["list", "--state-dir", str(tmp_path)]).state_dir == tmp_path


def test_bad_accel_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["create", "x.toml", "--accel", "hvf"])
    assert info.value.code == 2


def test_network_command_is_registered() -> None:
    assert "network" in cli.build_parser(with_network=True).format_help()
    assert cli._wants_network(["network", "list"]) and not cli._wants_network(["list"])


def test_missing_config_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--state-dir", str(tmp_path / "s"), "create", str(tmp_path / "nope.toml"))
    assert code == 1
    assert err.startswith("lightvm: error: ") and err.count("\n") == 1 and "nope.toml" in err
    assert not (tmp_path / "s" / "vms").exists() or not any((tmp_path / "s" / "vms").iterdir())


def test_unknown_key_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "vm.toml"
    cfg.write_text('kernel = "k"\nbogus = 1\n')
    code, _, err = run(capsys, "--state-dir", str(tmp_path / "s"), "create", str(cfg))
    assert code == 1 and "unknown key 'bogus'" in err and err.count("\n") == 1


def test_list_empty(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "--state-dir", str(tmp_path), "list", "--json")
    assert code == 0 and out.strip() == "[]"
    code, out, _ = run(capsys, "--state-dir", str(tmp_path), "list")
    assert code == 0 and "no VMs" in out


def test_destroy_unknown(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--state-dir", str(tmp_path), "destroy", "ghost")
    assert code == 1 and "no VM named 'ghost'" in err


def test_destroy_needs_names_or_all(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--state-dir", str(tmp_path), "destroy")
    assert code == 1 and "--all" in err


def test_env_state_dir(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTVM_STATE_DIR", str(tmp_path))
    (tmp_path / "vms" / "leftover").mkdir(parents=True)
    code, out, _ = run(capsys, "list")
    assert code == 0 and "leftover" in out and "incomplete" in out


def test_main_leaves_no_sigterm_handler(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    run(capsys, "--state-dir", str(tmp_path), "list")
    assert signal.getsignal(signal.SIGTERM) == before



def test_daemon_pool_variants_are_the_pools(capsys: pytest.CaptureFixture[str]) -> None:
    """daemon_cli spells the variants out (importing the pool would slow every CLI start):
    they must stay the pool's own."""
    from lightvm.daemon.pool import VARIANTS

    parser = cli.build_parser(with_network=False)
    for variant in VARIANTS:
        assert parser.parse_args(["daemon", "run", "--pool-variant", variant]).pool_variant == variant
    with pytest.raises(SystemExit):
        parser.parse_args(["daemon", "run", "--pool-variant", "spinning"])
    choices = capsys.readouterr().err.split("choose from", 1)[1]
    assert sorted(c.strip(" '\n)") for c in choices.split(",")) == sorted(VARIANTS)

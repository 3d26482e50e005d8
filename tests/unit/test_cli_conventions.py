"""The CLI's conventions (docs/cli.md): the global options before or after any command, --json
on every printing command (one object per VM acted on), errors as JSON objects under --json
with the exit status unchanged, -q, and -v's logging, without QEMU (a fake backend)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from clilib import run_with

from lightvm.cli import main as cli
from lightvm.cli import output
from lightvm.errors import GuestError, LightVMError, NotFoundError


class Backend:
    """The VM commands' backend, answering without QEMU (the numbers are the fake's own)."""

    routed = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def destroy(self, names: list[str] | None) -> tuple[list[str], list[str]]:
        return (names or ["a", "b"]), []

    def shutdown(self, name: str, keep: bool, timeout: float) -> float:
        self.calls.append(("shutdown", (name, keep, timeout)))
        return 12.5

    def pause(self, name: str) -> float:
        return 0.25

    def unpause(self, name: str) -> float:
        if name == "bad":
            raise NotFoundError("no VM named 'bad'")
        return 0.5

    def create(self, request: dict[str, Any], progress: Any) -> list[dict[str, Any]]:
        raise GuestError("guest never became READY in 0.1 s")


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return run_with(monkeypatch, capsys, Backend(), *argv)


@pytest.mark.parametrize("where", ["before", "after"])
def test_destroy_pause_unpause_shutdown_print_one_object_per_vm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    def argv(*command: str) -> list[str]:
        return ["--json", *command] if where == "before" else [*command, "--json"]

    code, out, err = _run(monkeypatch, capsys, *argv("destroy", "x", "y"))
    assert (code, err) == (0, "") and _lines(out) == [
        {"name": "x", "action": "destroyed"},
        {"name": "y", "action": "destroyed"},
    ]
    code, out, _ = _run(monkeypatch, capsys, *argv("pause", "x", "y"))
    assert code == 0 and _lines(out) == [
        {"name": "x", "action": "paused", "ms": 0.25},
        {"name": "y", "action": "paused", "ms": 0.25},
    ]
    code, out, _ = _run(monkeypatch, capsys, *argv("unpause", "x"))
    assert code == 0 and _lines(out) == [{"name": "x", "action": "resumed", "ms": 0.5}]
    code, out, _ = _run(monkeypatch, capsys, *argv("shutdown", "x", "--keep"))
    assert code == 0 and _lines(out) == [{"name": "x", "action": "shutdown", "ms": 12.5, "kept": True}]


def test_without_json_the_lines_are_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, capsys, "pause", "x") == (0, "x: paused in 0.25 ms\n", "")
    assert _run(monkeypatch, capsys, "shutdown", "x") == (0, "x: powered off in 12.5 ms\n", "")
    assert _run(monkeypatch, capsys, "destroy", "x", "y") == (0, "destroyed 2 VMs\n", "")


def test_an_error_under_json_is_one_object_on_stdout_with_the_same_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(monkeypatch, capsys, "unpause", "x", "bad", "--json")
    first, error = _lines(out)
    assert (code, err, first["name"]) == (1, "", "x")
    assert error == {"error": "no VM named 'bad'", "kind": "NotFoundError", "hint": output.HINTS["NotFoundError"]}
    code, out, err = _run(monkeypatch, capsys, "unpause", "bad")
    assert (code, out, err) == (1, "", "lightvm: error: no VM named 'bad'\n")
    code, out, _ = _run(monkeypatch, capsys, "--json", "create", "x.toml")
    assert code == 1 and _lines(out)[0]["kind"] == "GuestError"


def test_a_usage_error_under_json_is_an_object_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--json", "create"])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and err == ""
    (obj,) = _lines(out)
    assert obj["kind"] == "UsageError" and "config" in obj["error"] and obj["hint"] == "lightvm create --help"
    with pytest.raises(SystemExit) as stop:
        cli.main(["create"])  # without --json: argparse's own usage message, unchanged
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == "" and err.startswith("usage: lightvm create")


def test_hint_is_the_error_s_own_then_its_kind_s() -> None:
    class Hinted(LightVMError):
        hint = "run this"

    assert output.hint_for(Hinted("x")) == "run this"
    assert output.hint_for(GuestError("x")) == output.HINTS["GuestError"]
    assert output.hint_for(LightVMError("x")) is None
    from lightvm.errors import AddressExhaustedError

    assert output.hint_for(AddressExhaustedError("x")) == output.HINTS["NetworkError"]  # by its base


def _every_parser(p: argparse.ArgumentParser, path: str = "lightvm") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _every_parser(child, f"{path} {name}")
    return out


def test_every_command_takes_the_global_options_before_or_after() -> None:
    parser = cli.build_parser(with_network=True)
    for path, p in _every_parser(parser):
        for flag in ("--state-dir", "--json", "-q", "--quiet", "-v", "--verbose"):
            action = p._option_string_actions.get(flag)
            assert action is not None and action.default == argparse.SUPPRESS, (path, flag)
    parse = parser.parse_args
    assert parse(["network", "list", "--json", "--state-dir", "/s"]).state_dir == Path("/s")
    assert parse(["--json", "network", "list"]).json is True
    assert parse(["--state-dir", "/s", "network", "--json", "list"]).state_dir == Path("/s")
    assert parse(["-q", "image", "list"]).quiet is True
    assert parse(["host", "check", "-vv"]).verbose == 2
    assert parse(["-v", "host", "check", "-v"]).verbose == 2  # counted over both sides
    assert parse(["-v", "list"]).verbose == 1  # a new parse counts from 0
    assert parse(["migrate", "a", "h", "-q"]).quiet is True  # migrate's own -q is the global one
    # a value given before the command survives the subcommand's parser
    assert parse(["--json", "info", "a"]).json is True
    assert parse(["--json", "daemon", "status"]).json is True


def test_globals_default_when_not_given(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = cli.build_parser(with_network=False).parse_args(["list"])
    assert not hasattr(args, "json")
    cli.fill_globals(args)
    assert (args.json, args.quiet, args.verbose) == (False, False, 0)


def test_quiet_drops_progress_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class Many(Backend):
        def create(self, request: dict[str, Any], progress: Any) -> list[dict[str, Any]]:
            boot = {"ready": 5.0}
            results = [{"name": f"v-{i}", "boot_ms": boot, "accel": "tcg", "accel_reason": "no kvm"} for i in range(2)]
            for i, r in enumerate(results):
                progress(r, i + 1, 2)
            return results

    loud = run_with(monkeypatch, capsys, Many(), "create", "x.toml", "-n", "2", "--accel", "auto")
    quiet = run_with(monkeypatch, capsys, Many(), "-q", "create", "x.toml", "-n", "2", "--accel", "auto")
    assert loud[1].count("READY in") == 2 and "accel: tcg (no kvm)" in loud[2]
    assert "READY in" not in quiet[1] and quiet[1].startswith("created 2 VMs") and "accel:" not in quiet[2]


def test_console_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from lightvm.cli import vm

    log = tmp_path / "console.log"
    log.write_bytes(b"hello \xff\n")

    class Ts:
        def console_path(self, name: str) -> Path:
            return log

    monkeypatch.setattr(vm, "toolstack", lambda args: Ts())
    assert cli.main(["console", "a", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "a", "console": "hello \ufffd\n"}
    assert cli.main(["console", "a", "-f", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["kind"] == "LightVMError"


def test_verbose_logs_the_lightvm_loggers_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from lightvm.cli import logsetup

    logger = logging.getLogger("lightvm")
    before = (logger.level, list(logger.handlers))
    try:
        logsetup.configure(1)
        logging.getLogger("lightvm.toolstack").info("step one")
        logging.getLogger("lightvm.qmp").debug("not at -v")
        logsetup.configure(2)  # a second call changes the level, adds no second handler
        logging.getLogger("lightvm.qmp").debug("qmp at -vv")
        err = capsys.readouterr().err
        assert "lightvm.toolstack: step one" in err and "qmp at -vv" in err and "not at -v" not in err
        assert err.count("step one") == 1
    finally:
        logger.setLevel(before[0])
        logger.handlers[:] = before[1]


def test_completion_table_is_the_parser_s() -> None:
    """Every command with a help line, its options and what its operand completes to."""
    from lightvm.cli import completion

    parser = cli.build_parser(with_network=True)
    table = completion.spec(parser)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    shown = [a.dest for a in sub._choices_actions]
    assert table["lightvm"]["subs"] == shown and "migrate-receive" not in shown
    assert table["lightvm network"]["subs"] == ["create", "list", "delete"]
    for command in ("destroy", "pause", "unpause", "shutdown", "info", "console", "save", "migrate", "events"):
        assert table[f"lightvm {command}"]["operand"] == "vm", command
    assert table["lightvm create"]["operand"] == "file" and table["lightvm restore"]["operand"] == "file"
    create = table["lightvm create"]
    assert create["values"]["--accel"] == "choice" and create["choices"]["--accel"] == ["auto", "kvm", "tcg"]
    assert create["values"]["--state-dir"] == "file" and "--json" not in create["values"]
    assert table["lightvm completion"]["choices"][""] == ["bash", "zsh"]
    assert table["lightvm daemon start"]["values"]["--pool"] == "file"
    script = completion.bash_script(parser)
    assert script.rstrip().endswith("complete -o filenames -F _lightvm lightvm")
    assert completion.zsh_script(parser).startswith("#compdef lightvm\n")


def test_daemon_and_image_json_forms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    assert cli.main(["--state-dir", state, "daemon", "stop", "--json"]) == 0
    assert _lines(capsys.readouterr().out) == [{"action": "none", "pid": None}]
    assert cli.main(["--json", "--state-dir", state, "daemon", "status"]) == 3  # as systemctl: not running
    assert _lines(capsys.readouterr().out) == [{"running": False}]
    assert cli.main(["daemon", "unit", "--json"]) == 0
    (unit,) = _lines(capsys.readouterr().out)
    assert "ExecStart=" in unit["unit"] and "daemon run" in unit["unit"]
    store = tmp_path / "images"
    (store / "app").mkdir(parents=True)
    (store / "app" / "report.json").write_text("{}")
    assert cli.main(["image", "rm", "app", "--store", str(store), "--json"]) == 0
    assert _lines(capsys.readouterr().out) == [{"name": "app", "action": "removed", "folder": str(store / "app")}]
    assert cli.main(["image", "rm", "app", "--store", str(store), "--json"]) == 1
    assert _lines(capsys.readouterr().out)[0]["kind"] == "NotFoundError"


def test_quiet_reaches_the_image_build(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`-q image build` builds without progress lines (tinyx/image's Options.quiet)."""
    from tinyx.image import build

    seen: list[bool] = []

    def fake_build(opts: Any) -> tuple[Path, dict[str, Any]]:
        seen.append(opts.quiet)
        return Path("/img/app"), {"name": "app"}

    monkeypatch.setattr(build, "build", fake_build)
    for argv in (["-q", "image", "build", "app", "--json"], ["image", "build", "app", "--json"]):
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out) == {"name": "app"}  # the report, indented
    assert seen == [True, False]

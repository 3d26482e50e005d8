"""The CLI's thin path (lightvm/cli/thin.py): the same namespace as argparse for every form it
takes, argparse for every other, and the same output, errors and exit status as the full
path, through a lightvmd (a fake one serving the real protocol in a thread) or without one."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clilib import FakeDaemon

from lightvm.cli import main as cli
from lightvm.cli import thin
from lightvm.daemon import api, proto

REPO = Path(__file__).resolve().parents[2]

# Every form here is one thin.parse takes; each must give argparse's namespace.
TAKEN = [
    ["list"],
    ["list", "--json"],
    ["--state-dir", "/x/", "list"],
    ["--state-dir=./s", "list", "--json"],
    ["list", "--state-dir", "//a/./b"],
    ["--state-dir", "/a", "list", "--state-dir", "/b"],  # the last one wins, as in argparse
    ["--state-dir", "list", "list"],
    ["create", "x.toml"],
    ["create", "--json", "./cfg/x.toml", "--name", "v", "--accel", "tcg", "-n", "3", "-j", "2"],
    ["create", "x.toml", "--name=-v", "--count=2", "--timeout", "2.5", "--jobs=1"],
    ["create", "x.toml", "--publish", "8080:80", "--publish=53:53/udp", "--accel=kvm"],
    ["create", "", "--timeout", "inf"],
    ["info", "a"],
    ["info", "--json", "a", "--state-dir", "/s"],
    ["destroy"],
    ["destroy", "--all"],
    ["destroy", "a", "b"],
    ["destroy", "--all", "a", "b"],
    ["destroy", "a", "b", "--all"],
    ["shutdown", "a", "--keep", "--timeout", "1"],
    ["pause", "--state-dir", "/x", "a", "b"],
    ["unpause", "a"],
    ["--json", "destroy", "a"],
    ["-q", "create", "x.toml", "--json"],
    ["pause", "a", "--quiet", "--json"],
    ["--json", "list", "--json"],
]

# Forms thin.parse leaves to argparse: help, versions, errors, and what it does not read.
LEFT = [
    [],
    ["-h"],
    ["--version"],
    ["list", "-h"],
    ["create", "x.toml", "memory=8M"],  # KEY=VALUE overrides: argparse reads them
    ["list", "--help"],
    ["create", "x.toml", "--help"],
    ["list", "--js"],  # argparse takes abbreviations; thin.parse does not
    ["--state", "/x", "list"],
    ["create"],
    ["create", "a.toml", "b.toml"],
    ["create", "x.toml", "-n5"],
    ["create", "x.toml", "-n=5"],
    ["create", "x.toml", "-n", "-1"],
    ["create", "x.toml", "-n", "two"],
    ["create", "x.toml", "--count="],
    ["create", "x.toml", "--accel", "hvf"],
    ["create", "x.toml", "--name"],
    ["create", "x.toml", "--name", "-v"],
    ["create", "x.toml", "--json=1"],
    ["list", "extra"],
    ["info"],
    ["info", "-1"],
    ["destroy", "a", "--all", "b"],
    ["destroy", "--", "a"],
    ["pause"],
    ["pause", "a", "--state-dir", "/x", "b"],
    ["console", "a"],
    ["restore", "f"],
    ["save", "a", "f"],
    ["daemon", "status"],
    ["network", "list"],
    ["bench", "boot"],
    ["--state-dir"],
    ["--state-dir", "/x"],
    ["nosuch"],
    ["-v", "list"],
    ["list", "-vv"],
    ["-qv", "list"],
]


def _argparse(argv: list[str]) -> dict[str, Any]:
    args = cli.build_parser(with_network=False).parse_args(argv)
    return {k: os.fspath(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_thin_gives_the_namespace_of_argparse(argv: list[str]) -> None:
    got = thin.parse(argv)
    assert got is not None, "a form the thin path should take"
    want = _argparse(argv)
    # argparse makes Paths of config and --state-dir; the commands take either
    assert {k: os.fspath(Path(v)) if k in ("config", "state_dir") else v for k, v in vars(got).items()} == want


@pytest.mark.parametrize("argv", LEFT, ids=lambda a: " ".join(a) or "(none)")
def test_thin_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert thin.parse(argv) is None


def _routed_subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser(with_network=False)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: p for name, p in sub.choices.items() if name in thin.COMMANDS}


def test_thin_knows_every_option_and_default_of_the_routed_commands() -> None:
    """An option added to vm.register is one the thin path must learn (or leave alone)."""
    subparsers = _routed_subparsers()
    assert set(subparsers) == set(thin.COMMANDS)
    for name, parser in subparsers.items():
        options, operand, count, defaults = thin.COMMANDS[name]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings and action.nargs == "*" and action.dest in defaults:
                assert defaults[action.dest] == action.default, name  # more operands: left to argparse
                continue
            if not action.option_strings:
                assert action.dest == operand and action.nargs == (None if count == 1 else count), name
                continue
            if action.dest in ("state_dir", "json", "quiet", "verbose"):
                # a global option: thin.GLOBALS, or (-v) left to argparse; no default in either
                assert action.default == argparse.SUPPRESS, (name, action.dest)
                for flag in action.option_strings:
                    assert flag in ("-v", "--verbose") or thin.GLOBALS[flag][0] == action.dest, (name, flag)
                continue
            for flag in action.option_strings:
                assert options[flag][0] == action.dest, (name, flag)
            if action.dest in defaults:
                assert defaults[action.dest] == action.default, (name, action.dest)
            else:
                assert action.dest == "publish" and action.default == [], (name, action.dest)


@pytest.mark.parametrize("root", ["/tmp/s", "/tmp/s/", "./s", "s/./t", "//a", "///a", "/", ".", "", "a/../b"])
def test_socket_file_is_what_pathlib_prints(root: str) -> None:
    assert proto.socket_file(root) == str(api.socket_path(Path(root)))
    assert proto.pure_path(root) == str(Path(root))


# ---------------------------------------------------------------- against a lightvmd


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], full: bool
) -> tuple[int, str, str]:
    """``lightvm ARGV`` in process, through the thin path or (``full``) the argparse one."""
    with monkeypatch.context() as m:
        if full:
            m.setattr(thin, "parse", lambda argv: None)
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    out, err = capsys.readouterr()
    # the one figure measured per run: create's "request -> READY reply N ms at the client"
    return code, re.sub(r"reply [0-9.]+ ms", "reply N ms", out), err


COMMANDS = [
    ["list"],
    ["list", "--json"],
    ["info", "a"],
    ["info", "a", "--json"],
    ["info", "ghost"],
    ["create", "examples/noop.toml", "--name", "web"],
    ["create", "examples/noop.toml", "--json", "--accel", "tcg"],
    ["destroy", "a", "b"],
    ["destroy", "ghost"],
    ["destroy"],
    ["pause", "a", "b"],
    ["unpause", "a"],
    ["shutdown", "a", "--keep"],
    ["--json", "destroy", "a"],
    ["-q", "pause", "a"],
    ["info", "ghost", "--json"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_same_output_as_the_full_path(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    argv = ["--state-dir", str(daemon.state), *argv]
    thin_run = _run(monkeypatch, capsys, argv, full=False)
    thin_requests = list(daemon.requests)
    daemon.requests.clear()
    full_run = _run(monkeypatch, capsys, argv, full=True)
    assert thin_run == full_run
    assert thin_requests == daemon.requests  # the same requests, args and all
    code, out, err = thin_run
    if "--json" in argv and "ghost" in argv:
        assert code == 1 and json.loads(out)["kind"] == "NotFoundError"
    elif "ghost" in argv or argv[-1] == "destroy":
        assert code == 1 and err.strip().splitlines()[-1].startswith("lightvm: error: ")
    elif "-q" in argv:
        assert code == 0 and out and err == ""  # not even "via lightvmd"
    else:
        assert code == 0 and out and f"via lightvmd ({daemon.state}/lightvmd.sock)" in err


def test_a_state_dir_past_the_unix_socket_path_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / ("d" * 110)
    deep.mkdir()
    assert len(str(api.socket_path(deep))) > 107
    fake = FakeDaemon(deep)
    try:
        code, out, err = _run(monkeypatch, capsys, ["--state-dir", str(deep), "list"], full=False)
    finally:
        fake.close()
    assert code == 0 and out.startswith("NAME ") and f"via lightvmd ({deep}/lightvmd.sock)" in err


def test_create_sends_the_config_as_an_absolute_path(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    code, out, _ = _run(
        monkeypatch, capsys, ["--state-dir", str(daemon.state), "create", "./examples//noop.toml"], False
    )
    assert code == 0 and "path: pool (lightvmd; request -> READY reply N ms at the client)" in out
    ((op, args),) = daemon.requests
    assert op == "create" and args["config"] == str((REPO / "examples" / "noop.toml").resolve())
    assert args == {"name": None, "count": 1, "accel": "auto", "timeout": 10.0, "publish": [], "config": args["config"]}


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["destroy", "nosuch"], ["info", "nosuch"]])
def test_without_a_daemon_the_thin_path_works_one_shot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """No socket, or one nobody serves: this process does the work, as on the full path."""
    argv = ["--state-dir", str(tmp_path), *argv]
    for dead_socket in (False, True):
        if dead_socket:
            api.socket_path(tmp_path).touch()
        thin_run = _run(monkeypatch, capsys, argv, full=False)
        assert thin_run == _run(monkeypatch, capsys, argv, full=True)
        assert "via lightvmd" not in thin_run[2]
    assert (thin_run[0], thin_run[1]) in ((0, "no VMs\n"), (0, "[]\n"), (1, ""))


def test_usage_errors_and_help_are_argparse_s(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, code in ((["create"], 2), (["list", "--help"], 0), (["create", "x", "-n", "two"], 2)):
        with pytest.raises(SystemExit) as info:
            cli.main(["--state-dir", str(tmp_path), *argv])
        assert info.value.code == code
    assert "usage: lightvm list" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["list", "--json"], ["create", "examples/noop.toml", "--json"], ["create", "examples/noop.toml"]]
)
def test_the_thin_path_imports_no_parser(daemon: FakeDaemon, argv: list[str]) -> None:
    """What makes it thin: a ``list`` or ``create`` through lightvmd imports neither argparse,
    the other command groups, the bench harness, the toolstack, nor pathlib, typing or
    socket; nor, for create, the host-facts cache behind the QEMU note (ctypes)."""
    code = (
        "import sys; from lightvm.cli.main import main; rc = main(sys.argv[1:]); "
        "heavy = ('argparse', 'pathlib', 'typing', 'dataclasses', 'subprocess', 'socket', 'lightvm.cli.parser', "
        "'lightvm.cli.daemon', 'lightvm.bench.cli', 'lightvm.toolstack', 'lightvm.daemon.api', 'lightvm.util', "
        "'lightvm.hostfacts', 'lightvm.qemubin', 'ctypes'); "
        "print(rc, [m for m in heavy if m in sys.modules], file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LIGHTVM_NO_DAEMON"}
    # -S: no site, whose .pth files (the editable install's finder) import pathlib themselves
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code, "--state-dir", str(daemon.state), *argv],
        capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    if argv[0] == "list":
        assert json.loads(proc.stdout)[0]["name"] == "a"
    elif "--json" in argv:
        assert "name" in json.loads(proc.stdout.splitlines()[0])
    else:
        assert "READY" in proc.stdout, proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "0 []"


@pytest.mark.parametrize("argv", [["list"], ["create", "examples/noop.toml"]])
def test_the_installed_command_imports_no_re(daemon: FakeDaemon, argv: list[str]) -> None:
    """bin/lightvm-py, the Python command a wheel installs next to the ``lightvm`` launcher
    (pip writes the interpreter into its ``#!python`` line): a command lightvmd serves imports neither ``re`` (pip's
    generated console-script wrapper did: ~5 ms of an installed wheel's start-up) nor
    ``types``, ``enum``, ``json`` or ``signal``. ``-X importtime`` names every import, though
    the command ends with ``os._exit``; ``-S``: no site (the editable finder imports ``re``)."""
    script = REPO / "bin" / "lightvm-py"
    assert script.read_text().startswith("#!python\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LIGHTVM_NO_DAEMON", "LIGHTVM_STATE_DIR")}
    proc = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", str(script), "--state-dir", str(daemon.state), *argv],
        capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"lightvm.cli.thin", "lightvm.daemon.proto"} <= imported  # served by the fake lightvmd
    assert not imported & {"re", "enum", "types", "json", "signal"}, sorted(imported)


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["info", "ghost"], ["create", "examples/noop.toml"]])
def test_the_command_ends_without_finalization_with_the_same_output(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """``python -m lightvm.cli`` (main as the command: it ends served commands with os._exit
    after flushing) prints all of a long output, with the exit status of the in-process run."""
    daemon.many = 3000
    argv = ["--state-dir", str(daemon.state), *argv]
    env = {k: v for k, v in os.environ.items() if k not in ("LIGHTVM_NO_DAEMON", "LIGHTVM_STATE_DIR")}
    proc = subprocess.run(
        [sys.executable, "-m", "lightvm.cli", *argv], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )
    monkeypatch.chdir(REPO)
    code, out, err = _run(monkeypatch, capsys, argv, full=True)
    assert (proc.returncode, re.sub(r"reply [0-9.]+ ms", "reply N ms", proc.stdout), proc.stderr) == (code, out, err)
    assert code == (1 if "ghost" in argv else 0)
    if argv[2] == "list":
        assert len(out) > 3000 * 40  # every VM's line or object


def test_only_a_command_lightvmd_served_skips_finalization(daemon: FakeDaemon, tmp_path: Path) -> None:
    """An atexit handler tells: skipped after ``list`` through lightvmd, run after a one-shot
    ``list`` (the toolstack may leave work for the interpreter's exit) and after a usage error."""
    code = (
        "import atexit, sys; atexit.register(lambda: print('finalized', file=sys.stderr)); "
        "sys.argv[1:] = sys.argv[2:]; from lightvm.cli.main import main; sys.exit(main())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LIGHTVM_NO_DAEMON", "LIGHTVM_STATE_DIR")}
    results = {}
    for label, state in (("daemon", daemon.state), ("one-shot", tmp_path / "none"), ("usage", daemon.state)):
        rest = ["list", "--js=x"] if label == "usage" else ["list"]
        proc = subprocess.run(
            [sys.executable, "-c", code, "lightvm", "--state-dir", str(state), *rest],
            capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
        )  # fmt: skip
        results[label] = (proc.returncode, "finalized" in proc.stderr)
    assert results == {"daemon": (0, False), "one-shot": (0, True), "usage": (2, True)}

"""The CLI's conventions on a real VM (docs/cli.md): --json of pause/unpause/shutdown/destroy,
errors as JSON objects with the exit status kept, and the bash/zsh completion scripts
completing commands, options and the names of the VMs that run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.functional


def test_json_of_the_vm_commands_and_of_errors(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    def objects(*argv: str, code: int = 0) -> list[dict[str, Any]]:
        result = lightvm.run(*argv)
        assert result.code == code, (argv, result.err, result.out)
        return [json.loads(line) for line in result.out.splitlines()]

    (paused,) = objects("--json", "pause", "noop")
    assert (paused["name"], paused["action"]) == ("noop", "paused") and paused["ms"] > 0
    assert lightvm.status() == {"noop": "paused"}
    (resumed,) = objects("unpause", "noop", "--json")
    assert (resumed["name"], resumed["action"]) == ("noop", "resumed") and resumed["ms"] > 0
    (off,) = objects("shutdown", "noop", "--keep", "--json")
    assert (off["name"], off["action"], off["kept"]) == ("noop", "shutdown", True) and off["ms"] > 0
    assert lightvm.status() == {"noop": "halted"}
    (gone,) = objects("destroy", "--json", "noop")
    assert gone == {"name": "noop", "action": "destroyed"}
    assert lightvm.list() == []

    (error,) = objects("info", "noop", "--json", code=1)
    assert error["kind"] == "NotFoundError" and "noop" in error["error"] and error["hint"]
    (usage,) = objects("--json", "pause", code=2)
    assert usage["kind"] == "UsageError" and usage["hint"] == "lightvm pause --help"
    plain = lightvm.run("info", "noop")
    assert plain.code == 1 and plain.out == "" and plain.err.startswith("lightvm: error: no VM named 'noop'")


@pytest.fixture
def lightvm_on_path(tmp_path: Path, lightvm: Any) -> dict[str, str]:
    """An environment whose PATH has a ``lightvm`` running this checkout (the script calls it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "lightvm"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m lightvm.cli "$@"\n')
    wrapper.chmod(0o755)
    return dict(lightvm.env, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _script(lightvm: Any, shell: str, tmp_path: Path) -> Path:
    path = tmp_path / f"lightvm.{shell}"
    path.write_text(lightvm.ok("completion", shell).out)
    return path


BASH_PROBE = """
source "$1"; shift
complete -p lightvm
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
_lightvm
echo "${COMPREPLY[*]}"
"""


def test_bash_completion(
    lightvm: Any, noop_vm: dict[str, Any], lightvm_on_path: dict[str, str], tmp_path: Path
) -> None:
    script = _script(lightvm, "bash", tmp_path)
    state = str(lightvm.state_dir)
    examples = Path(__file__).resolve().parents[2] / "examples"

    def complete(*words: str) -> str:
        run = subprocess.run(
            ["bash", "-c", BASH_PROBE, "probe", str(script), *words],
            env=lightvm_on_path, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        registered, candidates = run.stdout.splitlines()
        assert registered == "complete -o filenames -F _lightvm lightvm"
        return candidates

    assert complete("lightvm", "pa") == "pause"
    assert complete("lightvm", "network", "") == "create list delete"
    assert complete("lightvm", "create", "--acc") == "--accel"
    assert complete("lightvm", "create", "--accel", "") == "auto kvm tcg"
    assert complete("lightvm", "--state-dir", state, "pause", "") == "noop"  # lightvm list's names
    assert complete("lightvm", "info", "--state-dir", state, "no") == "noop"
    assert complete("lightvm", "--state-dir", state, "destroy", "x") == ""
    assert complete("lightvm", "create", f"{examples}/noop.t") == f"{examples}/noop.toml"
    assert complete("lightvm", "migrate-re") == ""  # lightvm's own internal commands are not offered


ZPTY = """
zmodload zsh/zpty
zpty -b z 'zsh -f -i'
zpty -w z 'stty cols 1000; PS1="> "; autoload -U compinit && compinit -u; source "$SCRIPT"'
zpty -w -n z "$LINE"$'\\t'
zpty -w -n z ' ZEND'
zpty -r z out '*ZEND*'
zpty -d z
print -r -- "$out"
"""
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>])")


def test_zsh_completion(lightvm: Any, noop_vm: dict[str, Any], lightvm_on_path: dict[str, str], tmp_path: Path) -> None:
    """Through zsh's real completion system (compinit, bashcompinit), typing TAB in a pty.
    zsh is a test dependency (apt-get install zsh): without it this fails, saying so."""
    assert shutil.which("zsh"), "zsh is needed by this test: apt-get install zsh"
    script = _script(lightvm, "zsh", tmp_path)
    assert script.read_text().startswith("#compdef lightvm\n")

    def completed(line: str) -> str:
        env = dict(lightvm_on_path, SCRIPT=str(script), LINE=line)
        run = subprocess.run(["zsh", "-f", "-c", ZPTY], env=env, capture_output=True, text=True, timeout=60, check=True)
        # what zle echoed: the typed line, then what TAB inserted, then " ZEND"
        echoed = ANSI.sub("", run.stdout).replace("\r", "").rsplit("ZEND", 1)[0]
        return echoed[echoed.rfind("lightvm ") :].rstrip()

    assert completed("lightvm network cr") == "lightvm network create"
    assert completed("lightvm create --acc") == "lightvm create --accel"
    assert (
        completed(f"lightvm --state-dir {lightvm.state_dir} unpause n")
        == f"lightvm --state-dir {lightvm.state_dir} unpause noop"
    )


def test_verbose_logs_steps_and_qmp_on_stderr_only(lightvm: Any) -> None:
    quiet = lightvm.ok("create", "noop", "--accel", "tcg", "--name", "a", "--json")
    steps = lightvm.ok("-v", "create", "noop", "--accel", "tcg", "--name", "b", "--json")
    qmp = lightvm.ok("create", "noop", "--accel", "tcg", "--name", "c", "--json", "-vv")
    assert quiet.err == "" and [json.loads(x)["name"] for x in (quiet.out, steps.out, qmp.out)] == ["a", "b", "c"]
    for step in ("create b: accel tcg", "b: create NoXS region", "b: launch QEMU", "b: write NoXS page", "b: boot"):
        assert f"INFO  lightvm.toolstack: {step}" in steps.err, steps.err
    assert "lightvm.qmp" not in steps.err
    assert 'DEBUG lightvm.qmp: -> {"execute": "cont"' in qmp.err and "DEBUG lightvm.qmp: <- " in qmp.err
    destroyed = lightvm.ok("-v", "destroy", "--all")
    assert all(f"lightvm.toolstack: {n}: destroy" in destroyed.err for n in "abc")


@pytest.mark.timeout(120)
def test_daemon_log_of_a_started_daemon(lightvm: Any) -> None:
    """`daemon start` logs to STATE/lightvmd.log; `daemon log` prints it, `-f` follows it."""
    noop = Path(__file__).resolve().parents[2] / "examples" / "noop.toml"
    lightvm.ok("daemon", "start", "--pool", str(noop), "--pool-size", "1", "--accel", "tcg", "-v")
    follower = None
    try:
        log = lightvm.ok("daemon", "log").out
        assert "INFO lightvm.daemon: serving " in log and "INFO lightvm.toolstack: " in log, log
        follower = lightvm.popen("daemon", "log", "-f", "-n", "1", "--json")
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["line"]  # its last line: it is following now
        lightvm.ok("create", "noop", "--accel", "tcg", "--name", "followed")
        lightvm.ok("destroy", "followed")
        assert follower.stdout is not None
        while "followed: destroy" not in (line := json.loads(follower.stdout.readline())["line"]):
            assert line  # a line of the daemon's, before the one looked for
    finally:
        if follower is not None:
            follower.terminate()
            follower.communicate(timeout=10)
        lightvm.ok("daemon", "stop")
    assert (lightvm.state_dir / "lightvmd.out").read_text() == ""  # nothing bypassed the log

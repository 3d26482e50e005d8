"""lightvmd's log set-up (lightvm/daemon/logsetup.py) and ``lightvm daemon log``
(lightvm/cli/daemonlog.py): a bounded rotated file, journal lines with their priority,
printing oldest first, ``-n``, ``--json``, and ``-f`` following across a rotation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightvm.cli import daemonlog
from lightvm.cli import main as cli
from lightvm.daemon import logsetup

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_lightvm_logger() -> Iterator[None]:
    logger = logging.getLogger("lightvm")
    daemon = logging.getLogger("lightvm.daemon")
    saved = (logger.level, list(logger.handlers), logger.propagate, daemon.level)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]
    daemon.setLevel(saved[3])


def test_the_file_is_rotated_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_lightvm_logger: None
) -> None:
    monkeypatch.setattr(logsetup, "MAX_BYTES", 4096)
    log = tmp_path / "state" / "lightvmd.log"
    handler = logsetup.configure(log, verbose=0)
    try:
        for i in range(2000):
            logging.getLogger("lightvm.daemon").info("message %d %s", i, "x" * 40)
        logging.getLogger("lightvm.toolstack").info("a step: not logged without -v")
    finally:
        logsetup.unconfigure(handler)
    files = logsetup.log_files(log)
    assert [f.name for f in files] == ["lightvmd.log.3", "lightvmd.log.2", "lightvmd.log.1", "lightvmd.log"]
    assert sum(f.stat().st_size for f in files) <= 4 * 4096 + 200
    assert (log.stat().st_mode & 0o777) == 0o600
    text = log.read_text()
    assert "INFO lightvm.daemon: message 1999" in text and "a step" not in text


def test_verbose_levels(tmp_path: Path, restore_lightvm_logger: None) -> None:
    log = tmp_path / "lightvmd.log"
    handler = logsetup.configure(log, verbose=2)
    try:
        logging.getLogger("lightvm.toolstack").info("step")
        logging.getLogger("lightvm.qmp").debug("-> cont")
    finally:
        logsetup.unconfigure(handler)
    text = log.read_text()
    assert "lightvm.toolstack: step" in text and "lightvm.qmp: -> cont" in text


def test_journal_lines_carry_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_lightvm_logger: None
) -> None:
    """Under systemd, stderr is the journal: JOURNAL_STREAM names its device and inode."""
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setattr(sys, "stderr", f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.under_journal()
        handler = logsetup.configure(None, verbose=0)
        try:
            logging.getLogger("lightvm.daemon").info("serving")
            logging.getLogger("lightvm.daemon").warning("two\nlines")
        finally:
            logsetup.unconfigure(handler)
    assert err.read_text().splitlines() == [
        "<6>lightvm.daemon: serving",
        "<4>lightvm.daemon: two",
        "<4>lines",
    ]
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not logsetup.under_journal()


def test_systemd_unit_of_a_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def fake_open(path: str, *a: object, **k: object) -> object:
        if path == "/proc/4242/cgroup":
            return real_open(tmp_path / "cgroup")
        return real_open(path, *a, **k)  # type: ignore[call-overload]

    (tmp_path / "cgroup").write_text("0::/system.slice/lightvmd.service\n")
    monkeypatch.setattr("builtins.open", fake_open)
    assert daemonlog.systemd_unit(4242) == "lightvmd.service"
    (tmp_path / "cgroup").write_text("0::/user.slice/user-0.slice/session-3.scope\n")
    assert daemonlog.systemd_unit(4242) is None
    assert daemonlog.systemd_unit(999_999_999) is None  # no such process


def _write_logs(state: Path) -> None:
    state.mkdir()
    (state / "lightvmd.log.2").write_text("one\ntwo\n")
    (state / "lightvmd.log.1").write_text("three\n")
    (state / "lightvmd.log").write_text("four\nfive\n")


def test_daemon_log_prints_oldest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "s"
    _write_logs(state)
    assert cli.main(["--state-dir", str(state), "daemon", "log"]) == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\nfour\nfive\n"
    assert cli.main(["daemon", "log", "-n", "2", "--state-dir", str(state), "--json"]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == [{"line": "four"}, {"line": "five"}]


def test_daemon_log_without_a_log_says_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--state-dir", str(tmp_path), "daemon", "log"]) == 1
    assert "no lightvmd log in" in capsys.readouterr().err


@pytest.mark.timeout(30)  # a line that never comes fails the readline here, not in 180 s
def test_follow_across_a_rotation(tmp_path: Path) -> None:
    """``daemon log -f`` as a command: the lines appended, then those of the new file after
    lightvmd's handler renamed the old one."""
    state = tmp_path / "s"
    _write_logs(state)
    log = state / "lightvmd.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightvm.cli", "--state-dir", str(state), "daemon", "log", "-f", "-n", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "five\n"
        time.sleep(0.5)  # it is following from the end now (its poll is 0.2 s)
        with open(log, "a") as f:
            f.write("six\n")
        assert proc.stdout.readline() == "six\n"
        os.replace(log, state / "lightvmd.log.1")  # what RotatingFileHandler does
        log.write_text("seven\n")
        assert proc.stdout.readline() == "seven\n"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 143  # SIGTERM unwinds as 128 + 15 (lightvm/cli/main.py)


def _fake_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``journalctl`` on PATH that writes its arguments, one a line, to a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args = tmp_path / "journalctl.args"
    script = bin_dir / "journalctl"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args}\necho "-- journal lines --"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return args


def test_a_daemon_under_systemd_is_read_from_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """No log file, and the state dir's lightvmd (here: this process, by its pid file) runs in
    a systemd service: ``daemon log`` is ``journalctl --unit`` of that service."""
    from lightvm.daemon.server import PID_NAME
    from lightvm.util import proc_start_time

    state = tmp_path / "state"
    state.mkdir()
    (state / PID_NAME).write_text(json.dumps({"pid": os.getpid(), "start": proc_start_time(os.getpid())}))
    monkeypatch.setattr(daemonlog, "systemd_unit", lambda pid: "lightvmd.service" if pid == os.getpid() else None)
    args = _fake_journalctl(tmp_path, monkeypatch)
    assert cli.main(["--state-dir", str(state), "daemon", "log", "-n", "5"]) == 0
    assert capfd.readouterr().out == "-- journal lines --\n"
    assert args.read_text().split() == [
        "--unit", "lightvmd.service", "--no-pager", "--output", "short-iso", "--lines", "5",
    ]  # fmt: skip
    assert cli.main(["--state-dir", str(state), "daemon", "log", "--json"]) == 0
    assert args.read_text().split()[-2:] == ["--output", "json"]
    assert cli.main(["--state-dir", str(state), "daemon", "log", "-f"]) == 0  # the fake one ends at once
    assert args.read_text().split()[-1] == "--follow"
    # the same daemon outside systemd: it logs to its own stderr, and the command says so
    monkeypatch.setattr(daemonlog, "systemd_unit", lambda pid: None)
    assert cli.main(["--state-dir", str(state), "daemon", "log"]) == 1
    assert "logs to its own stderr" in capfd.readouterr().err

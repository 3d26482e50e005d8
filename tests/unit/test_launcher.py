"""The compiled ``lightvm`` launcher (bin/launcher.c) and the warm CLI server it hands VM
commands to (lightvm/cli/warm.py, started as lightvmd starts it: lightvm/daemon/warmcli.py).

Next to the launcher, ``lightvm-py`` is a trap: a script that prints its arguments and exits
99. So a command the warm server ran never shows the trap, and one it refused shows it
with the launcher's arguments unchanged. The served commands go to a fake lightvmd serving
the real protocol (clilib.FakeDaemon); their output and exit status must be those of the
Python command run directly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clilib import FakeDaemon

from lightvm.cli import warm
from lightvm.daemon.warmcli import WarmCLI
from lightvm.util import wait_until

REPO = Path(__file__).resolve().parents[2]
TRAP = 99
TIMEOUT = 60


@pytest.fixture(scope="module")
def bindir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The launcher, compiled as setup.py compiles it, and the trap as ``lightvm-py``."""
    folder = tmp_path_factory.mktemp("bin")
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(folder / "lightvm"), str(REPO / "bin" / "launcher.c")],
        check=True, timeout=120,
    )  # fmt: skip
    trap = folder / "lightvm-py"
    trap.write_text(f"#!{sys.executable}\nimport sys\nprint('lightvm-py', sys.argv[1:])\nsys.exit({TRAP})\n")
    trap.chmod(0o755)
    return folder


@pytest.fixture
def server(daemon: FakeDaemon) -> Iterator[WarmCLI]:
    """The warm CLI server on the fake daemon's state dir, as lightvmd runs it."""
    logged: list[str] = []
    warm_cli = WarmCLI(logged.append)
    warm_cli.start(daemon.state)
    assert warm_cli.proc is not None, logged
    sock = daemon.state / warm.SOCKET_NAME
    assert wait_until(sock.exists, timeout=30.0, interval=0.01), "the warm CLI server did not listen"
    try:
        yield warm_cli
    finally:
        warm_cli.stop()


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LIGHTVM_NO_DAEMON", "LIGHTVM_STATE_DIR")}
    return {**env, **extra}


def launch(bindir: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bindir / "lightvm"), *argv], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO,
        env=client_env() if env is None else env,
    )  # fmt: skip


def fell_back(done: subprocess.CompletedProcess[str], *argv: str) -> bool:
    """The trap ran with ``argv``, and nothing else wrote (no half-run command in the server)."""
    return done.returncode == TRAP and done.stdout == f"lightvm-py {list(argv)!r}\n" and done.stderr == ""


def ran_trap(done: subprocess.CompletedProcess[str]) -> bool:
    """lightvm-py (the trap) ran at all: the launcher fell back."""
    return done.returncode == TRAP or "lightvm-py [" in done.stdout


def python_command(*argv: str) -> subprocess.CompletedProcess[str]:
    """The same command by the Python command itself (what the launcher stands in for)."""
    return subprocess.run(
        [sys.executable, "-m", "lightvm.cli", *argv], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO,
        env=client_env(),
    )  # fmt: skip


def same_figures(text: str) -> str:
    return re.sub(r"reply [0-9.]+ ms", "reply N ms", text)


def test_without_a_warm_server_it_runs_lightvm_py_with_its_arguments(bindir: Path, tmp_path: Path) -> None:
    for argv in (
        [],
        ["--version"],
        ["--state-dir", str(tmp_path), "list"],
        ["create", "a b.toml", "--name", "é", ""],  # spaces, non-ASCII and empty arguments unchanged
    ):
        done = launch(bindir, *argv)
        assert fell_back(done, *argv), (argv, done)


@pytest.mark.parametrize(
    "argv",
    [["list"], ["list", "--json"], ["info", "ghost"], ["create", "examples/noop.toml"], ["-q", "pause", "a"]],
)
def test_the_warm_server_runs_served_commands_as_the_python_command_does(
    bindir: Path, daemon: FakeDaemon, server: WarmCLI, argv: list[str]
) -> None:
    argv = ["--state-dir", str(daemon.state), *argv]
    done = launch(bindir, *argv)
    assert not ran_trap(done), done
    direct = python_command(*argv)
    got = (done.returncode, same_figures(done.stdout), done.stderr)
    assert got == (direct.returncode, same_figures(direct.stdout), direct.stderr)
    assert done.returncode == (1 if "ghost" in argv else 0)
    if "create" in argv:  # a relative config path: the launcher's working directory was the command's
        (create,) = [args for op, args in daemon.requests if op == "create"][:1]
        assert create["config"] == str(REPO / "examples" / "noop.toml")


def test_the_command_gets_the_launchers_environment(bindir: Path, daemon: FakeDaemon, server: WarmCLI) -> None:
    """No --state-dir: the child finds the daemon through the launcher's LIGHTVM_STATE_DIR."""
    done = launch(bindir, "list", "--json", env=client_env(LIGHTVM_STATE_DIR=str(daemon.state)))
    assert done.returncode == 0 and not ran_trap(done), done
    assert [vm["name"] for vm in json.loads(done.stdout)] == ["a"]


def test_what_the_warm_server_does_not_take_runs_in_lightvm_py(
    bindir: Path, daemon: FakeDaemon, server: WarmCLI, tmp_path: Path
) -> None:
    state = str(daemon.state)
    refused = {
        "help": (["--state-dir", state, "list", "--help"], client_env()),
        "another command": (["--state-dir", state, "network", "list"], client_env()),
        "a usage error": (["--state-dir", state, "list", "--bogus"], client_env()),
        "no daemon for its state dir": (["--state-dir", str(tmp_path / "none"), "list"], client_env()),
        "LIGHTVM_NO_DAEMON": (["--state-dir", state, "list"], client_env(LIGHTVM_NO_DAEMON="1")),
        "LIGHTVM_NO_LAUNCHER": (["--state-dir", state, "list"], client_env(LIGHTVM_NO_LAUNCHER="1")),
        "another PYTHONPATH": (["--state-dir", state, "list"], client_env(PYTHONPATH="/elsewhere")),
    }
    for why, (argv, env) in refused.items():
        done = launch(bindir, *argv, env=env)
        assert fell_back(done, *argv), (why, done)
    # The server is still there for the next one.
    assert not ran_trap(launch(bindir, "--state-dir", state, "list"))


def test_a_bad_client_costs_the_server_nothing(bindir: Path, daemon: FakeDaemon, server: WarmCLI) -> None:
    """Garbage, a cut-short request, a huge length, a silent client: each gets F (or a
    closed socket) and the server serves the next launcher."""
    path = str(daemon.state / warm.SOCKET_NAME)
    payloads = [
        b"",  # silent until the server's handshake timeout
        b"\x05\x00\x00\x00abc",  # cut short, then the client hangs up
        struct.pack("<I", warm.MAX_REQUEST + 1),
        struct.pack("<I", 4) + b"xyz\0",  # well framed, not this protocol (and no descriptors)
    ]
    for payload in payloads:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(path)
            if payload:
                sock.sendall(payload)
            if payload.startswith(b"\x05"):
                continue
            assert sock.recv(1) in (warm.FALLBACK, b"")
    argv = ["--state-dir", str(daemon.state), "list"]
    done = launch(bindir, *argv)
    assert done.returncode == 0 and not ran_trap(done), done


def _raw_request(sock: socket.socket, argv: list[str]) -> None:
    """What the launcher sends (lightvm/cli/warm.py's wire), from this process."""
    env = [f"{k}={v}" for k, v in client_env().items()]
    fields = [warm.MAGIC.decode(), sys.executable, "22", str(len(argv)), *argv, *env]
    body = b"".join(os.fsencode(f) + b"\0" for f in fields)
    cwd = os.open(str(REPO), os.O_PATH | os.O_DIRECTORY)
    try:
        socket.send_fds(sock, [struct.pack("<I", len(body)) + body], [0, 1, 2, cwd])
    finally:
        os.close(cwd)


@pytest.mark.timeout(120)
def test_a_command_runs_only_after_the_launchers_commit(daemon: FakeDaemon, server: WarmCLI) -> None:
    """A launcher that got R and hung up without its commit (it timed out and ran
    lightvm-py), or stalled past COMMIT_TIMEOUT: the child ends without running the
    command, and a late commit gets no answer (the launcher says the server ended). With
    the commit it runs and the status comes back."""
    argv = ["--state-dir", str(daemon.state), "unpause", "a"]
    for how in ("hang up", "stall", "commit"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30.0)
            sock.connect(str(daemon.state / warm.SOCKET_NAME))
            _raw_request(sock, argv)
            assert sock.recv(1) == warm.RUNNING
            assert server.proc is not None
            child = _child_of(server.proc.pid)
            assert child is not None
            if how == "stall":
                stalled = warm.COMMIT_TIMEOUT + 10
                gone = wait_until(lambda pid=child: not os.path.exists(f"/proc/{pid}"), timeout=stalled)
                assert gone, "the child waited for a commit past COMMIT_TIMEOUT"
                try:  # the launcher's late commit: refused (it then runs lightvm-py), or never answered
                    sock.sendall(warm.COMMIT)
                    assert sock.recv(2) == b""
                except BrokenPipeError:
                    pass
            elif how == "commit":
                sock.sendall(warm.COMMIT)
                assert sock.recv(2) == b"E\0"
        assert wait_until(lambda pid=child: not os.path.exists(f"/proc/{pid}"), timeout=10.0), how
        assert [op for op, _ in daemon.requests].count("unpause") == (1 if how == "commit" else 0), how


def _child_of(parent: int) -> int | None:
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        children = [int(p) for p in f.read().split()]
    return children[0] if children else None


def _slow_pause(daemon: FakeDaemon, bindir: Path, server: WarmCLI) -> tuple[subprocess.Popen[str], int]:
    """A launcher running ``pause a`` that the fake daemon holds; the child's pid."""
    daemon.hold = True
    proc = subprocess.Popen(
        [str(bindir / "lightvm"), "--state-dir", str(daemon.state), "pause", "a"], cwd=REPO, env=client_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.proc is not None
    assert wait_until(lambda: any(op == "pause" for op, _ in daemon.requests), timeout=30.0, interval=0.01)
    child = _child_of(server.proc.pid)
    assert child is not None
    return proc, child


def test_a_signal_to_the_launcher_reaches_the_command(bindir: Path, daemon: FakeDaemon, server: WarmCLI) -> None:
    proc, _child = _slow_pause(daemon, bindir, server)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130 and "lightvm: interrupted" in err, (proc.returncode, out, err)


def test_a_killed_launcher_ends_its_command(bindir: Path, daemon: FakeDaemon, server: WarmCLI) -> None:
    proc, child = _slow_pause(daemon, bindir, server)
    proc.kill()
    proc.communicate(timeout=TIMEOUT)
    assert wait_until(lambda: not os.path.exists(f"/proc/{child}"), timeout=10.0), "the command outlived its launcher"


def test_the_server_ends_when_lightvmd_does_and_removes_its_socket(daemon: FakeDaemon, server: WarmCLI) -> None:
    """lightvmd's end of the lifetime pipe closes (as when it is killed with -9)."""
    assert server.proc is not None and server._lifetime is not None
    os.close(server._lifetime)
    server._lifetime = None
    assert server.proc.wait(10) == 0
    assert not (daemon.state / warm.SOCKET_NAME).exists()


def test_takes_only_the_same_user_and_installation() -> None:
    request = warm.Request([])
    request.interpreter, request.argv = sys.executable, ["list"]
    request.env = {k: v for k, v in os.environ.items() if k.startswith("PYTHON")}
    assert warm.takes(request, os.getuid())
    assert not warm.takes(request, os.getuid() + 1)
    request.interpreter = sys.executable + "3.99"
    assert not warm.takes(request, os.getuid())
    request.interpreter = sys.executable
    request.env["PYTHONPYCACHEPREFIX"] = "/tmp/elsewhere"  # only where caches go: still the same code
    assert warm.takes(request, os.getuid())
    request.env["PYTHONOPTIMIZE"] = "2"
    assert not warm.takes(request, os.getuid())


def test_a_deep_state_dir_works_both_ways(bindir: Path, tmp_path: Path) -> None:
    """Past AF_UNIX's 108 bytes, both ends name the socket through the folder's descriptor."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    fake = FakeDaemon(deep)
    warm_cli = WarmCLI(lambda line: None)
    try:
        warm_cli.start(deep)
        assert wait_until((deep / warm.SOCKET_NAME).exists, timeout=30.0, interval=0.01)
        argv = ["--state-dir", str(deep), "list"]
        done = launch(bindir, *argv)
        assert done.returncode == 0 and not ran_trap(done), done
    finally:
        warm_cli.stop()
        fake.close()
    assert not (deep / warm.SOCKET_NAME).exists()


def test_a_changed_module_file_sends_commands_to_lightvm_py(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Sources: a file replaced (as pip does) or edited in place since the server loaded it
    makes it refuse (the launcher then runs lightvm-py on the files as they are now), and
    says why once on its stderr."""
    module, other = tmp_path / "a.py", tmp_path / "b.py"
    module.write_text("x = 1\n")
    other.write_text("y = 1\n")
    sources = warm.Sources([str(module), str(other)])
    assert sources.unchanged()
    replaced = tmp_path / "a.py.new"
    replaced.write_text("x = 2\n")
    os.replace(replaced, module)
    assert not sources.unchanged() and not sources.unchanged()
    assert capsys.readouterr().err.count("a.py changed since lightvmd started") == 1
    edited = warm.Sources([str(other)])
    with open(other, "a") as f:
        f.write("z = 2\n")
    assert not edited.unchanged()
    assert warm.Sources.loaded().stamps  # the server's own modules: lightvm.cli.warm and what it imports
    assert str(Path(warm.__file__)) in warm.Sources.loaded().stamps

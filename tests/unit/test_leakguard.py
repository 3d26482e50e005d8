"""The leak guard itself (tests/leakguard.py), run in pytester sub-sessions: a test that
leaks a NoXS file, a process, a namespace fails at teardown naming it, and the guard
removes it; a clean test passes; what is not this session's is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent

CONFTEST = 'pytest_plugins = ["leakguard"]\n'

LEAKY = """
import os, subprocess, sys
from pathlib import Path

OUT = Path(__file__).with_name("out")

def test_clean():
    Path(os.environ["LIGHTVM_SHM_DIR"], "lightvm-0000000000000001").write_bytes(b"x")
    Path(os.environ["LIGHTVM_SHM_DIR"], "lightvm-0000000000000001").unlink()

def test_leaks_a_noxs_file():
    path = Path(os.environ["LIGHTVM_SHM_DIR"]) / "lightvm-feedfacecafe0001"
    path.write_bytes(bytes(4096))
    (OUT / "noxs").write_text(str(path))

def test_leaks_a_qemu():
    # a process named like QEMU, started the way the harness starts everything
    proc = subprocess.Popen(["qemu-system-x86_64-leaked", "600"], executable="/bin/sleep")
    (OUT / "pid").write_text(str(proc.pid))

def test_after_the_leaks_is_clean():
    assert not any(Path(os.environ["LIGHTVM_SHM_DIR"]).iterdir())
"""


@pytest.fixture
def subsession(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], pytest.RunResult]:
    """Run a test file in a fresh pytest process that loads the guard (as tests/conftest.py does)."""
    pytester.makeconftest(CONFTEST)
    (pytester.path / "out").mkdir()
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), str(REPO), path])))

    def run(source: str) -> pytest.RunResult:
        pytester.makepyfile(test_subject=source)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)

    return run


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_leaking_test_fails_and_the_leak_is_removed(
    pytester: pytest.Pytester, subsession: Callable[[str], pytest.RunResult]
) -> None:
    result = subsession(LEAKY)
    result.assert_outcomes(passed=4, errors=2)
    out = result.stdout.str()
    noxs = Path((pytester.path / "out" / "noxs").read_text())
    pid = int((pytester.path / "out" / "pid").read_text())
    assert "ERROR at teardown of test_leaks_a_noxs_file" in out and f"NoXS file {noxs}" in out, out
    assert (
        "ERROR at teardown of test_leaks_a_qemu" in out and f"process {pid} (sleep): qemu-system-x86_64-leaked" in out
    )
    assert "removed by the leak guard" in out
    assert not noxs.exists() and not noxs.parent.exists()  # and the session's NoXS dir is gone
    assert not _alive(pid)


def test_a_session_fixture_that_leaks_fails_the_session(
    pytester: pytest.Pytester, subsession: Callable[[str], pytest.RunResult]
) -> None:
    source = """
import os, pytest
from pathlib import Path

@pytest.fixture(scope="session")
def region():
    path = Path(os.environ["LIGHTVM_SHM_DIR"]) / "lightvm-feedfacecafe0002"
    path.write_bytes(b"x")
    yield path  # and never removed

def test_one(region):
    pass

def test_two(region):
    pass
"""
    result = subsession(source)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2)  # a fixture wider than a test is judged at the end
    assert "the session leaked 1 resource(s)" in result.stdout.str()


def test_a_leaked_namespace_is_named_and_deleted(
    pytester: pytest.Pytester, subsession: Callable[[str], pytest.RunResult]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_SYS_ADMIN) to make a network namespace")
    source = """
import subprocess
from harness import unique_name

def test_leaks_a_namespace():
    subprocess.run(["ip", "netns", "add", unique_name("lvtest-")], check=True, timeout=30)
"""
    result = subsession(source)
    result.assert_outcomes(passed=1, errors=1)
    names = [line.split()[-1] for line in result.stdout.lines if "network namespace lvtest-" in line]
    assert names, result.stdout.str()
    assert not Path("/run/netns", names[0]).exists()


def test_other_sessions_resources_are_not_ours(
    pytester: pytest.Pytester, subsession: Callable[[str], pytest.RunResult]
) -> None:
    """A process without this session's marker and a namespace of another pid: left alone."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_SYS_ADMIN) to make a network namespace")
    foreign_ns = f"lvtest-{os.getpid()}-foreign"  # the outer session's pid: not the sub-session's
    source = f'''
import os, subprocess
from pathlib import Path

def test_starts_foreign_things():
    # as another session's QEMU would be: without our marker, and not our child (bash exits)
    env = {{k: v for k, v in os.environ.items() if k != "LIGHTVM_TEST_SESSION"}}
    script = "(exec -a qemu-system-x86_64-foreign sleep 600) >/dev/null 2>&1 </dev/null & echo $!"
    pid = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30).stdout
    Path("out", "pid").write_text(pid.strip())
    subprocess.run(["ip", "netns", "add", "{foreign_ns}"], check=True, timeout=30)
'''
    try:
        result = subsession(source)
        result.assert_outcomes(passed=1)
        pid = int((pytester.path / "out" / "pid").read_text())
        assert _alive(pid) and Path("/run/netns", foreign_ns).exists()
    finally:
        subprocess.run(["ip", "netns", "del", foreign_ns], capture_output=True, timeout=30, check=False)
        pid_file = pytester.path / "out" / "pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)


def test_runner_teardown_runs_every_step_when_destroy_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `lightvm` fixture's teardown (harness.teardown): destroy --all timing out does
    not skip the QEMU kill nor the NoXS unlink, and the teardown then fails naming it."""
    from harness import LightVM, teardown

    from lightvm.state import noxs_file

    runner = LightVM(tmp_path / "state", tmp_path / "cache")
    (runner.state_dir / "vms" / "vm").mkdir(parents=True)
    (runner.state_dir / "vms" / "vm" / "vm.json").write_text('{"id": "feedfacecafe0003"}')
    noxs = noxs_file("feedfacecafe0003")
    noxs.write_bytes(bytes(4096))
    qemu = tmp_path / "qemu-system-x86_64"  # a "QEMU" of the state dir: named so, mentioning it
    qemu.symlink_to(sys.executable)  # (a python that sleeps: one process, nothing forked)
    proc = subprocess.Popen([str(qemu), "-c", "import time; time.sleep(600)", str(runner.state_dir)])

    def hung(*args: str, timeout: float = 0) -> None:
        raise subprocess.TimeoutExpired(["lightvm", *args], timeout)

    monkeypatch.setattr(runner, "run", hung)
    try:
        with pytest.raises(AssertionError, match="destroy --all: TimeoutExpired"):
            teardown(runner)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert not noxs.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        noxs.unlink(missing_ok=True)

"""The Python API (lightvm/client.py, docs/api.md): docs/api_example.py runs as documented
with and without lightvmd and leaves nothing; the same calls give the same shapes either
way; ``import lightvm`` stays cheap; the errors are lightvm's and say what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemonlib import NOOP, Lightvmd

import lightvm
from lightvm.daemon.proto import DaemonUnavailable
from lightvm.errors import ExistsError, NotFoundError, SpecError, StateError

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "api_example.py"


def run_example(env: dict[str, str], state_dir: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), str(state_dir), "tcg"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def test_the_example_runs_without_lightvmd(lightvm: Any) -> None:
    out = run_example(lightvm.env, lightvm.state_dir)
    assert out.startswith(f"lightvm {lightvm_version()}, in this process\n"), out
    for words in ("api-demo: READY in", "api-demo: running, 8 MiB", "api-demo: saved", "api-demo: restored in"):
        assert words in out, out
    assert "VMs: api-demo running\n" in out and out.endswith("api-demo: destroyed\n")
    assert lightvm.ok("list", "--json").json() == []


def test_the_example_runs_through_lightvmd(lightvmd: Lightvmd) -> None:
    lightvmd.start(pool=None)
    out = run_example(lightvmd.env, lightvmd.state_dir)
    assert "through lightvmd" in out.splitlines()[0], out
    # The save in the script's process destroyed the VM: lightvmd says destroyed, not crashed.
    assert "api-demo: events created ready paused resumed saved destroyed restored\n" in out, out
    assert lightvmd.call("list") == []


def lightvm_version() -> str:
    return lightvm.__version__


def same_shape(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert set(a) - {"path", "path_reason", "pool_take_ms", "daemon_ms"} == set(b) - {"path", "path_reason"}


def test_the_same_calls_with_and_without_lightvmd(lightvmd: Lightvmd, tmp_path: Path) -> None:
    lightvmd.start(pool=None)
    direct = lightvm.connect(lightvmd.state_dir, daemon=False)
    served = lightvm.connect(lightvmd.state_dir)
    assert (direct.via_daemon, served.via_daemon) == (False, True)
    (a,) = direct.create(NOOP, "a", accel="tcg", vcpus=2)
    (b,) = served.create(NOOP, "b", accel="tcg", vcpus=2)
    lightvmd.seen_ids.update({a["id"], b["id"]})
    same_shape(b, a)
    assert b["path"] == "cold"
    for lv in (direct, served):
        assert {v["name"]: v["vcpus"] for v in lv.list()} == {"a": 2, "b": 2}
        assert lv.info("a")["spec"]["vcpus"] == 2
        assert lv.pause("b") >= 0 and lv.info("b")["status"] == "paused"
        assert lv.unpause("b") >= 0 and lv.info("b")["status"] == "running"
        assert "READY noop" in lv.console("a")
    with pytest.raises(ExistsError):
        served.create(NOOP, "a", accel="tcg")
    with pytest.raises(SpecError, match="override memory='64X'"):
        direct.create(NOOP, "c", accel="tcg", memory="64X")
    with pytest.raises(SpecError, match="override memory='64X'"):
        served.create(NOOP, "c", accel="tcg", memory="64X")
    # lightvmd saw what it did: not the pause and unpause done in this process, nor "a".
    events = list(served.events(vm="b"))
    assert [e["event"] for e in events] == ["created", "ready", "paused", "resumed"]
    assert list(served.events(vm="a")) == []
    # save (always in this process) and restore through lightvmd, with progress for both
    saving: list[dict[str, Any]] = []
    saved = served.save("a", tmp_path / "a.lvm", progress=saving.append)
    assert saved["bytes"] == (tmp_path / "a.lvm").stat().st_size
    assert saving[-1]["status"] == "completed" and saving[-1]["total"] >= 4 << 20
    restoring: list[dict[str, Any]] = []
    restored = served.restore(tmp_path / "a.lvm", progress=restoring.append)
    lightvmd.seen_ids.add(restored["id"])
    assert restored["name"] == "a" and restored["path"] == "cold"
    assert restoring[-1]["status"] == "completed" and restoring[-1]["remaining"] == 0
    assert served.destroy("a") == ["a"] and direct.destroy("b") == ["b"]
    with pytest.raises(NotFoundError):
        served.info("a")
    assert direct.list() == [] == served.list()


def test_without_lightvmd(tmp_path: Path, images: Path) -> None:
    with pytest.raises(DaemonUnavailable):
        lightvm.connect(tmp_path / "s", daemon=True)
    lv = lightvm.connect(tmp_path / "s")
    assert not lv.via_daemon
    with pytest.raises(StateError, match="events need lightvmd"):
        lv.events()
    assert isinstance(DaemonUnavailable("x"), lightvm.LightVMError)


def test_import_lightvm_stays_cheap() -> None:
    code = "import sys, lightvm; print(sorted(m for m in sys.modules if m.startswith('lightvm')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "['lightvm']"
    code = "import lightvm; print(lightvm.connect.__module__, 'connect' in dir(lightvm))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.split() == ["lightvm.client", "True"]


def test_py_typed_is_package_data() -> None:
    assert (REPO / "lightvm" / "py.typed").is_file()
    assert 'lightvm = ["py.typed"]' in (REPO / "pyproject.toml").read_text()

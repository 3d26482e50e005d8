"""The kernel trimming loop (tinyx/kernel/loop.py, loopstep.py) with fake builds and boots:
the order of adds and trims, what is kept, the candidate file, the report; and the step
cache: a pass or a refusal is cached, a failed or interrupted build is not, a killed
make's objects are removed before the next build, and the image builder takes
tinyx/kconfig/APP.config when there is one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lightvm.errors import TinyxError
from tinyx.image import kernel as ik
from tinyx.image.recipe import Probe, Recipe
from tinyx.kernel import build as kb
from tinyx.kernel import loop, loopstep
from tinyx.kernel.loop import Candidate, StepResult

PLATFORM = "CONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_BLOCK=y\n"
CANDIDATES = Path(__file__).parents[2] / "tinyx" / "kconfig" / "loop-candidates.txt"


def cand(kind: str, opt: str, value: str = "n") -> Candidate:
    return Candidate(kind, f"CONFIG_{opt}", value, f"why {opt}")


class FakeKernel:
    """A step that 'configures' the fragment (last assignment wins, like Kconfig), then
    decides: refused if an option is in ``selected`` and set to n, a failed build if one
    in ``breaks`` is set to n, and the probe passes only if every option in ``needed`` is y."""

    def __init__(
        self, needed: set[str] = frozenset(), breaks: set[str] = frozenset(), selected: set[str] = frozenset()
    ):
        self.needed, self.breaks, self.selected = needed, breaks, selected
        self.fragments: list[str] = []

    def __call__(self, fragment: str) -> StepResult:
        self.fragments.append(fragment)
        config = {k: v for k, v in kb.parse_fragment(fragment).items() if v != "n"}
        for s in self.selected:
            config[s] = "y"
        if any(kb.parse_fragment(fragment).get(s) == "n" for s in self.selected):
            return StepResult(False, "kconfig", "olddefconfig dropped fragment options", config)
        size = 1_000_000 + 100_000 * len(config)
        if any(kb.parse_fragment(fragment).get(b) == "n" for b in self.breaks):
            return StepResult(False, "build", "make vmlinux failed", config, kernel_bytes=size)
        ok = all(config.get(n) == "y" for n in self.needed)
        return StepResult(ok, "pass" if ok else "probe", "" if ok else "got b''", config, size, size, 1.0, 900.0)


def test_trims_that_pass_are_kept_and_the_others_undone() -> None:
    k = FakeKernel(needed={"CONFIG_PCI"}, selected={"CONFIG_SEL"})
    trims = [cand("trim", "BLOCK"), cand("trim", "PCI"), cand("trim", "SEL"), cand("trim", "NOHZ", "y")]
    out = loop.run_loop(PLATFORM, [], trims, k)
    assert [c.option for c in out.kept] == ["CONFIG_BLOCK", "CONFIG_NOHZ"]
    assert out.final.ok and out.final.config.get("CONFIG_BLOCK") is None and out.final.config["CONFIG_NOHZ"] == "y"
    assert [(t.action, t.result.stage, t.kept) for t in out.history] == [
        ("base", "pass", True),
        ("trim", "pass", True),
        ("trim", "probe", False),
        ("trim", "kconfig", False),
        ("trim", "pass", True),
    ]
    # every step's fragment is the platform's, then the kept lines, then the one tried
    assert k.fragments[2].startswith(PLATFORM) and "# CONFIG_BLOCK is not set" in k.fragments[2]
    assert "# CONFIG_PCI is not set" not in k.fragments[3]
    assert kb.parse_fragment(out.fragment) == {**kb.parse_fragment(PLATFORM), "CONFIG_BLOCK": "n", "CONFIG_NOHZ": "y"}


def test_adds_until_the_probe_passes_then_drop_the_unneeded_ones() -> None:
    k = FakeKernel(needed={"CONFIG_IPV6"}, selected={"CONFIG_REFUSED"})
    adds = [cand("add", "AIO", "y"), cand("add", "REFUSED", "n"), cand("add", "IPV6", "y"), cand("add", "LATE", "y")]
    out = loop.run_loop(PLATFORM, adds, [], k)
    assert [c.option for c in out.kept] == ["CONFIG_IPV6"]  # AIO was dropped again, LATE never tried
    actions = [(t.action, t.candidate.option if t.candidate else None, t.kept) for t in out.history]
    assert actions == [
        ("base", None, False),
        ("add", "CONFIG_AIO", True),
        ("add", "CONFIG_REFUSED", False),
        ("add", "CONFIG_IPV6", True),
        ("drop-add", "CONFIG_AIO", True),
    ]
    assert out.final.ok and "CONFIG_AIO" not in out.final.config


def test_no_add_helps_is_an_error_that_says_what_to_do() -> None:
    k = FakeKernel(needed={"CONFIG_NEVER"})
    with pytest.raises(TinyxError, match=r"loop-candidates\.txt"):
        loop.run_loop(PLATFORM, [cand("add", "AIO", "y")], [cand("trim", "BLOCK")], k)


def test_max_trims_bounds_the_tries_and_options_already_so_are_skipped() -> None:
    k = FakeKernel()
    trims = [cand("trim", "ABSENT"), cand("trim", "BLOCK"), cand("trim", "PCI"), cand("trim", "64BIT")]
    out = loop.run_loop(PLATFORM, [], trims, k, max_trims=2)
    assert [c.option for c in out.kept] == ["CONFIG_BLOCK", "CONFIG_PCI"]
    assert len(k.fragments) == 3  # base + two trims; ABSENT is already n and costs no step


def test_a_failed_build_undoes_the_trim() -> None:
    k = FakeKernel(breaks={"CONFIG_PCI"})
    out = loop.run_loop(PLATFORM, [], [cand("trim", "PCI"), cand("trim", "BLOCK")], k)
    assert [c.option for c in out.kept] == ["CONFIG_BLOCK"]
    assert out.history[1].result.stage == "build" and not out.history[1].kept


def test_report_lists_removed_options_and_sizes() -> None:
    out = loop.run_loop(PLATFORM, [], [cand("trim", "BLOCK")], FakeKernel())
    rep = loop.report(out, "app", {"measured_at": "now"})
    assert rep["removed"] == ["# CONFIG_BLOCK is not set"] and rep["added"] == []
    assert rep["kernel_before"]["packed_bytes"] > rep["kernel_after"]["packed_bytes"]
    assert "config" not in rep["steps"][0]
    text = loop.report_text(rep)
    assert "removed: # CONFIG_BLOCK is not set" in text and "measured_at: now" in text
    json.dumps(rep)


def test_the_candidate_file_parses_and_every_line_says_why() -> None:
    adds, trims = loop.parse_candidates(CANDIDATES.read_text())
    assert adds and trims
    assert all(c.why and c.option.startswith("CONFIG_") for c in adds + trims)
    with pytest.raises(TinyxError, match=":2: expected"):
        loop.parse_candidates("# ok\ntrim CONFIG_X=n\n")
    with pytest.raises(TinyxError, match="twice"):
        loop.parse_candidates("trim CONFIG_X=n # a\ntrim CONFIG_X=y # b\n")


# --- the real step's cache, with make and the boot faked ---------------------------------


@pytest.fixture
def stepper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> loopstep.Stepper:
    monkeypatch.setattr(kb, "BUILD", tmp_path / "build")
    monkeypatch.setattr(kb, "source_version", lambda: "6.1.0-test")
    monkeypatch.setattr(kb, "unpack", lambda version, start: tmp_path / "src")
    monkeypatch.setattr(kb, "has_pvh_note", lambda p: True)
    monkeypatch.setattr(loopstep.kpack, "packed_kernel", lambda v, d: (v, {"vmlinux_bytes": 10, "file_bytes": 5}, "x"))
    initrd = tmp_path / "initramfs.cpio"
    initrd.write_bytes(b"070701")
    recipe = Recipe("app", "test", "app", ("/bin/app",), port=80, probe=Probe("PING\r\n", "+PONG"))
    s = loopstep.Stepper(recipe, initrd)
    monkeypatch.setattr(s, "boot_and_probe", lambda kernel: ("pass", "", 812.0))
    return s


def fake_make(obj_text: str = "CONFIG_X=y\n"):
    def make(tree: Path, obj: Path, frag: Path, jobs: int, start: float) -> None:
        (obj / ".config").write_text(obj_text)
        (obj / "vmlinux").write_bytes(b"\x7fELF kernel")

    return make


def entries(s: loopstep.Stepper) -> list[str]:
    return sorted(p.name for p in kb.BUILD.iterdir() if p.name.startswith("kstep-"))


def test_a_passing_step_is_cached_with_its_kernel(stepper: loopstep.Stepper, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "make_build", fake_make())
    r = stepper(PLATFORM)
    assert r.ok and r.boot_ms == 812.0 and not r.cached and r.config == {"CONFIG_X": "y"}
    (entry,) = entries(stepper)
    assert (kb.BUILD / entry / "vmlinux").is_file() and (kb.BUILD / entry / "config").is_file()

    def no_make(*a: object) -> None:
        raise AssertionError("a cached step must not build")

    monkeypatch.setattr(kb, "make_build", no_make)
    again = stepper(PLATFORM)
    assert again.cached and again.ok and again.kernel_bytes == r.kernel_bytes
    assert stepper.key(PLATFORM) != stepper.key(PLATFORM + "CONFIG_Y=y\n")


def test_a_kconfig_refusal_is_cached_a_failed_build_is_not(
    stepper: loopstep.Stepper, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(tree: Path, obj: Path, frag: Path, jobs: int, start: float) -> None:
        (obj / ".config").write_text("CONFIG_PNP=y\n")
        raise kb.BuildError("olddefconfig dropped fragment options (a dependency is missing):\n  CONFIG_PNP")

    monkeypatch.setattr(kb, "make_build", refuse)
    r = stepper(PLATFORM + "# CONFIG_PNP is not set\n")
    assert r.stage == "kconfig" and len(entries(stepper)) == 1

    def broken(tree: Path, obj: Path, frag: Path, jobs: int, start: float) -> None:
        raise kb.BuildError("make vmlinux failed:\nerror: implicit declaration")

    monkeypatch.setattr(kb, "make_build", broken)
    r = stepper(PLATFORM + "# CONFIG_PCI is not set\n")
    assert r.stage == "build" and not r.ok
    assert len(entries(stepper)) == 1  # only the refusal: the next run builds it again
    assert not (stepper.obj / loopstep.MARKER).exists()  # make ended by itself: its outputs are whole


def test_ctrl_c_in_a_build_caches_nothing_and_the_next_step_drops_its_objects(
    stepper: loopstep.Stepper, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = stepper.obj / "kernel" / "old.o"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"whole")
    past = time.time() - 3600
    os.utime(old, (past, past))

    def interrupted(tree: Path, obj: Path, frag: Path, jobs: int, start: float) -> None:
        (obj / "kernel" / "half.o").write_bytes(b"trunc")  # written by the killed make
        (obj / "kernel" / ".half.o.cmd").write_text("cmd")
        raise KeyboardInterrupt

    monkeypatch.setattr(kb, "make_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stepper(PLATFORM)
    assert entries(stepper) == [] and (stepper.obj / loopstep.MARKER).exists()
    assert not list(kb.BUILD.glob("kstep-*.tmp"))

    seen: list[bool] = []

    def make(tree: Path, obj: Path, frag: Path, jobs: int, start: float) -> None:
        seen.append((obj / "kernel" / "half.o").exists())
        fake_make()(tree, obj, frag, jobs, start)

    monkeypatch.setattr(kb, "make_build", make)
    assert stepper(PLATFORM).ok
    assert seen == [False] and not (stepper.obj / "kernel" / ".half.o.cmd").exists()
    assert old.read_bytes() == b"whole"  # older objects are kept: the build stays incremental


def test_a_boot_failure_is_retried_once_before_it_counts(
    stepper: loopstep.Stepper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kb, "make_build", fake_make())
    boots = iter([("boot", "no READY", 0.0), ("pass", "", 900.0)])
    monkeypatch.setattr(stepper, "boot_and_probe", lambda kernel: next(boots))
    assert stepper(PLATFORM).ok
    monkeypatch.setattr(stepper, "boot_and_probe", lambda kernel: ("probe", "got b''", 700.0))
    r = stepper(PLATFORM + "CONFIG_Z=y\n")
    assert not r.ok and r.stage == "probe"


def test_the_image_builder_takes_the_apps_config_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    platform = tmp_path / "qemu-microvm.config"
    platform.write_text(PLATFORM)
    monkeypatch.setattr(kb, "DEFAULT_FRAGMENT", platform)
    assert ik.kernel_fragment("redis-server") == platform
    assert ik.kernel_fragment(None) == platform
    own = tmp_path / "redis-server.config"
    own.write_text(PLATFORM + "# CONFIG_BLOCK is not set\n")
    assert ik.kernel_fragment("redis-server") == own
    assert ik.kernel_fragment("nginx") == platform


def test_the_seeded_kernel_is_the_ordinary_builds_cache_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kb, "BUILD", tmp_path / "build")
    monkeypatch.setattr(kb, "source_version", lambda: "6.1.0-test")
    (tmp_path / "build").mkdir()
    vm, cfg, frag = tmp_path / "vmlinux", tmp_path / "config", tmp_path / "app.config"
    vm.write_bytes(b"\x7fELF")
    cfg.write_text("CONFIG_X=y\n")
    frag.write_text(PLATFORM)
    got = loop.seed_kernel_cache(vm, cfg, frag, 12.0)
    key = kb.cache_key("6.1.0-test", frag.read_bytes(), Path(kb.__file__).read_bytes())
    assert got == kb.BUILD / f"kernel-{key}" / "vmlinux" and got.read_bytes() == b"\x7fELF"
    assert json.loads((got.parent / "build.json").read_text())["key"] == key
    assert not list(kb.BUILD.glob("*.tmp"))


def test_lightvm_image_kernel_loop_runs_the_loop_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightvm.cli import main as cli

    seen: list[list[str]] = []
    monkeypatch.setattr(loop, "main", lambda argv: seen.append(argv) or 7)
    assert cli.main(["image", "kernel-loop", "redis-server", "--max-trims", "3", "--image", "/x"]) == 7
    assert seen == [["redis-server", "--jobs", "2", "--image", "/x", "--max-trims", "3"]]


def test_a_kernel_whose_console_loses_user_space_output_fails_the_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SERIAL_8250_PNP=n booted, served and answered the probe, but `lightvm console`
    showed nothing after the kernel's own lines: the step checks lvinit's READY line."""
    import subprocess

    recipe = Recipe("app", "test", "app", ("/bin/app",), port=80, probe=Probe("PING\r\n", "+PONG"))
    s = loopstep.Stepper.__new__(loopstep.Stepper)
    s.recipe, s.initramfs = recipe, tmp_path / "initramfs.cpio"
    consoles = {"quiet": "PCI: Fatal: No config space access function found\n", "ok": "lvinit: READY app (kernel 1)\n"}
    calls: list[str] = []

    def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        cmd = argv[argv.index("--state-dir") + 2]
        calls.append(cmd)
        out = {"create": '{"boot_ms": {"ready": 900.0}}\n', "console": consoles[mode]}.get(cmd, "")
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(loopstep.subprocess, "run", run)
    monkeypatch.setattr(loopstep, "probe", lambda port, send, expect: b"+PONG\r\n")
    monkeypatch.setattr(loopstep, "CONSOLE_WAIT", 0.3)
    mode = "quiet"
    stage, detail, ready = s.boot_and_probe(tmp_path / "vmlinux")
    assert stage == "console" and "lvinit: READY" in detail and ready == 900.0
    assert "shutdown" not in calls and calls[-1] == "destroy"  # the VM goes on every path
    mode = "ok"
    assert s.boot_and_probe(tmp_path / "vmlinux")[0] == "pass"
    assert loopstep.console_ok(consoles["ok"]) and not loopstep.console_ok(consoles["quiet"])

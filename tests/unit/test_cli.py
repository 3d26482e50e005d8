"""CLI parsing and error reporting, without QEMU: bad input fails in one line and creates nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clilib import run_with

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
    """lightvm/cli/daemon.py spells the variants out (importing the pool would slow every CLI start):
    they must stay the pool's own."""
    from lightvm.daemon.pool import VARIANTS

    parser = cli.build_parser(with_network=False)
    for variant in VARIANTS:
        assert parser.parse_args(["daemon", "run", "--pool-variant", variant]).pool_variant == variant
    with pytest.raises(SystemExit):
        parser.parse_args(["daemon", "run", "--pool-variant", "spinning"])
    choices = capsys.readouterr().err.split("choose from", 1)[1]
    assert sorted(c.strip(" '\n)") for c in choices.split(",")) == sorted(VARIANTS)


# ------------------------------------------------- one printing path, two backends


class FakeBackend:
    """Answers like lightvm.cli.backend's backends (plain dicts), without QEMU or lightvmd."""

    def __init__(self, routed: bool) -> None:
        self.routed = routed
        self.boot = {"qemu_up": 10.0, "resumed": 11.0, "guest_entry": 12.5, "devices_up": 13.0, "ready": 14.25}

    def create(self, request: dict[str, Any], progress: Any) -> list[dict[str, Any]]:
        count, base = request["count"], request["name"]
        names = [base] if count == 1 else [f"{base}-{i}" for i in range(count)]
        out = []
        for i, n in enumerate(names):
            r = {"name": n, "id": "x", "accel": "tcg", "pid": 42, "app": "noop", "network": None, "boot_ms": self.boot}
            if self.routed:
                r["path"] = "pool"
            else:
                progress(r, i + 1, len(names))
            out.append(r)
        return out

    def list_vms(self) -> list[dict[str, Any]]:
        return [
            {"name": "a", "status": "running", "id": "1", "pid": 7, "accel": "tcg", "memory_mib": 16, "vcpus": 1,
             "created": 1.0, "ready_ms": 14.25, "detail": ""},
            {"name": "b", "status": "incomplete", "id": "", "pid": None, "accel": "", "memory_mib": None,
             "vcpus": None, "created": None, "ready_ms": None, "detail": "create was killed"},
        ]  # fmt: skip

    def info(self, name: str) -> dict[str, Any]:
        return {
            "name": name, "status": "running", "pid": 7, "accel": "tcg",
            "spec": {"kernel": "/k.elf", "memory": 16, "vcpus": 1, "cmdline": "", "vifs": [], "disks": []},
            "boot_ms": self.boot, "guest": {"state": "READY", "heartbeat": 3},
        }  # fmt: skip

    def destroy(self, names: list[str] | None) -> tuple[list[str], list[str]]:
        return ["a", "b"], ["no VM named 'c'"]


@pytest.mark.parametrize("argv", [("list",), ("list", "--json"), ("info", "a"), ("info", "a", "--json")])
def test_same_output_through_both_backends(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    local = run_with(monkeypatch, capsys, FakeBackend(routed=False), *argv)
    routed = run_with(monkeypatch, capsys, FakeBackend(routed=True), *argv)
    assert local == routed and local[0] == 0


def test_list_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_with(monkeypatch, capsys, FakeBackend(routed=True), "list")
    assert out.splitlines() == [
        "NAME                     STATUS          PID ACCEL    MEM VCPU     READY  DETAIL",
        "a                        running           7 tcg      16M    1    14.2ms  ",
        "b                        incomplete        - -          -    -         -  create was killed",
    ]


def test_info_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_with(monkeypatch, capsys, FakeBackend(routed=True), "info", "a")
    assert out.splitlines() == [
        "name:        a",
        "status:      running",
        "pid:         7",
        "accel:       tcg",
        "spec:        kernel /k.elf, 16 MiB, 1 vCPU, cmdline '', 0 vif(s), 0 disk(s)",
        "boot:        QEMU up 10.0 ms, vCPU resumed 11.0 ms, guest entry 12.5 ms, devices up 13.0 ms, READY 14.2 ms",
        "guest:       state READY, heartbeat 3",
    ]


def test_create_one_prints_the_breakdown_and_its_path(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = {}
    for routed in (False, True):
        code, out, _ = run_with(monkeypatch, capsys, FakeBackend(routed), "create", "x.toml", "--name", "v")
        assert code == 0
        outs[routed] = out.splitlines()
    cold, pool = outs[False], outs[True]
    assert cold[0] == pool[0] == "v: noop READY in 14.2 ms (tcg, pid 42)"
    assert cold[1:6] == pool[1:6] and cold[1].startswith("  QEMU up          10.0 ms  ")
    assert cold[6] == "  path: cold (one-shot: no lightvmd answers on this state dir)"
    assert cold[7].startswith("  (lightvm command: ") and len(cold) == 8
    assert pool[6].startswith("  path: pool (lightvmd; request -> READY reply ") and len(pool) == 7


def test_create_many(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_with(monkeypatch, capsys, FakeBackend(False), "create", "x.toml", "--name", "v", "-n", "2")
    lines = out.splitlines()
    assert lines[:2] == ["[1/2] v-0: READY in 14.2 ms", "[2/2] v-1: READY in 14.2 ms"]
    assert lines[2].startswith("created 2 VMs in ") and lines[2].endswith("; READY median 14.2 ms, max 14.2 ms")
    _, out, _ = run_with(monkeypatch, capsys, FakeBackend(True), "create", "x.toml", "--name", "v", "-n", "2")
    assert len(out.splitlines()) == 1 and out.rstrip().endswith("; path: pool 2, cold 0")


def test_create_json_one_line_per_vm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for routed in (False, True):
        argv = ("create", "x.toml", "--name", "v", "-n", "3", "--json")
        _, out, _ = run_with(monkeypatch, capsys, FakeBackend(routed), *argv)
        assert [json.loads(line)["name"] for line in out.splitlines()] == ["v-0", "v-1", "v-2"]


def test_destroy_counts_then_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_with(monkeypatch, capsys, FakeBackend(False), "destroy", "a", "b", "c")
    assert code == 1 and out == "destroyed 2 VMs\n" and err == "lightvm: error: no VM named 'c'\n"


def test_routing_rule(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """No lightvmd socket, a dead one, or LIGHTVM_NO_DAEMON=1: this process does the work, silently."""
    import argparse

    from lightvm.cli.backend import ROUTED, LocalBackend, open_backend
    from lightvm.daemon import api

    args = argparse.Namespace(state_dir=tmp_path)
    with open_backend(args) as backend:
        assert isinstance(backend, LocalBackend) and not backend.routed
    api.socket_path(tmp_path).touch()  # a socket file nobody listens on
    with open_backend(args) as backend:
        assert isinstance(backend, LocalBackend)
    monkeypatch.setenv("LIGHTVM_NO_DAEMON", "1")
    with open_backend(args) as backend:
        assert isinstance(backend, LocalBackend)
    assert "via lightvmd" not in capsys.readouterr().err
    assert set(ROUTED) == {"create", "list", "info", "destroy", "shutdown", "pause", "unpause", "restore", "migrate"}


def test_routed_commands_ask_the_backend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exactly the ROUTED commands choose between lightvmd and this process."""
    from lightvm.cli import checkpoint, vm
    from lightvm.cli.backend import ROUTED
    from lightvm.errors import LightVMError

    asked: list[str] = []

    def recorder(args: Any) -> Any:
        asked.append(args.command)
        raise LightVMError("asked")

    for module in (vm, checkpoint):
        monkeypatch.setattr(module, "open_backend", recorder)
    argvs = {
        "create": ["x.toml"], "list": [], "info": ["a"], "destroy": ["a"], "shutdown": ["a"], "pause": ["a"],
        "unpause": ["a"], "restore": ["f"], "migrate": ["a", "host"], "console": ["a"], "save": ["a", "f"],
    }  # fmt: skip
    for command, rest in argvs.items():
        code, _, _ = run(capsys, "--state-dir", str(tmp_path), command, *rest)
        assert code == 1
    assert asked == list(ROUTED)

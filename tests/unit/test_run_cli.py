"""`lightvm run`'s pure parts (lightvm/cli/run.py): the exit status of a VM whose app
ended, unique names, and which overrides --memory/--vcpus/--cmdline add."""

from __future__ import annotations

import argparse

from lightvm.cli import run


def test_the_apps_status_from_the_exit_reason() -> None:
    assert run.app_exit_status("guest error APP: app exited with status 3") == 3
    assert run.app_exit_status("guest error APP: app exited with status 0 before READY") == 0
    assert run.app_exit_status("guest error APP: app killed by signal 9") == 137
    assert run.app_exit_status("QEMU exited unexpectedly") is None
    assert run.app_exit_status("guest error PANIC: app exited with status 3") is None
    assert run.app_exit_status("") is None


def test_free_name() -> None:
    assert run.free_name("noop", set()) == "noop"
    assert run.free_name("noop", {"noop", "noop-2"}) == "noop-3"


def test_option_overrides_come_after_the_operands() -> None:
    args = argparse.Namespace(overrides=["memory=8M", "cmdline=a"], memory="16M", vcpus=None, cmdline="b c")
    assert run.overrides_of(args) == ["memory=8M", "cmdline=a", "memory=16M", "cmdline=b c"]

"""Shared fixtures: built guest images, and a `lightvm` runner with its own state dir
that destroys every VM at teardown and then checks that nothing was left behind.

Fixture chain (Firecracker's uvm -> uvm_booted idea, for the CLI):

    images     session: `make -C images` once; the build folder
    lightvm    per test: a LightVM runner bound to a fresh --state-dir; at teardown it
               destroys every VM (even when the test failed), prints the consoles of a
               failed test, and asserts: no QEMU of this state dir, no NoXS file of its
               VMs in /dev/shm, no socket, no VM folder.
    noop_vm    per test: one booted noop VM (name "noop")

Functional tests use `-accel tcg` always (`--accel tcg`): kvm on these hosts is a
nested PVM that is unusable (docs/qemu-notes.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LightVM, qemu_pids_mentioning

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
EXAMPLES = REPO / "examples"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Make each phase's report reachable from fixtures (to dump consoles on failure).
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def images() -> Path:
    """Build the guests once per session (`make -C images`) and return images/build."""
    if shutil.which("make") is None:
        pytest.fail("make is needed to build the guest images")
    proc = subprocess.run(
        ["make", "-C", str(IMAGES), "-s", "-j2"], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"make -C images failed:\n{proc.stdout}\n{proc.stderr}")
    build = IMAGES / "build"
    assert (build / "noop.elf").is_file()
    return build


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One host cache (TSC rate, accel verdict) for the whole session."""
    return tmp_path_factory.mktemp("lightvm-cache")


@pytest.fixture
def lightvm(request: pytest.FixtureRequest, tmp_path: Path, cache_dir: Path, images: Path) -> Iterator[LightVM]:
    """A `lightvm` runner on a private state dir; teardown destroys all and checks for leftovers."""
    runner = LightVM(tmp_path / "state", cache_dir)
    try:
        yield runner
    finally:
        runner.remember_ids()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(f"\nconsoles of {request.node.name}:\n{runner.consoles()}")
        if runner.vm_dirs():
            runner.run("destroy", "--all", timeout=300)
        leftovers = runner.leftovers()
        for pid in qemu_pids_mentioning(str(runner.state_dir)):  # never leave QEMU behind, even on failure
            os.kill(pid, 9)
        for vm_id in runner.seen_ids:
            Path(f"/dev/shm/lightvm-{vm_id}").unlink(missing_ok=True)
        assert not leftovers, f"leftovers after destroying every VM: {leftovers}"


@pytest.fixture
def netns(lightvm: LightVM) -> Iterator[str]:
    """A fresh network namespace in which `lightvm` makes its bridges and taps
    (LIGHTVM_NETNS, tap mode forced); teardown destroys the VMs and every network the
    test made, then the namespace. Never touches the host's own interfaces."""
    from lightvm.devices.devd import has_cap_net_admin

    if not has_cap_net_admin():
        pytest.skip("needs CAP_NET_ADMIN (missing: run as root)")
    name = f"lvtn-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    lightvm.env["LIGHTVM_NETNS"] = name
    lightvm.env["LIGHTVM_NET_MODE"] = "tap"
    try:
        yield name
    finally:
        lightvm.run("destroy", "--all")
        listed = lightvm.run("network", "list", "--json")
        for network in json.loads(listed.out) if listed.code == 0 else []:
            lightvm.run("network", "delete", network["name"], "--force")
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


@pytest.fixture
def make_lightvm(cache_dir: Path) -> Callable[[Path], LightVM]:
    """Make a runner on another state dir (tests that need two). Tests must not
    `import conftest`: with tests/root collected too, that name is ambiguous."""

    def make(state_dir: Path) -> LightVM:
        return LightVM(state_dir, cache_dir)

    return make


@pytest.fixture
def noop_vm(lightvm: LightVM) -> dict[str, Any]:
    """One booted noop VM named "noop"."""
    (vm,) = lightvm.create(EXAMPLES / "noop.toml")
    return vm

"""Shared fixtures: built guest images, and a `lightvm` runner with its own state dir
that destroys every VM at teardown and then checks that nothing was left behind.

Every test runs inside the leak guard (tests/leakguard.py, loaded here): whatever a test
leaves of this session (a QEMU or lightvmd, a NoXS file, a namespace, a link, a socket
in a state dir) fails it at teardown, and is removed.

Fixture chain (Firecracker's uvm -> uvm_booted idea, for the CLI):

    images       session: `make -C images` once; the build folder
    lightvm      per test: a LightVM runner bound to a fresh --state-dir; at teardown it
                 destroys every VM (even when the test failed), prints the consoles of a
                 failed test, kills what destroy left (QEMU, a lightvmd), and asserts: no
                 QEMU of this state dir, no NoXS file of its VMs, no socket, no VM folder.
    make_lightvm per test: more runners (other state dirs), torn down the same way
    noop_vm      per test: one booted noop VM (name "noop")
    nsname       per test: a fresh network namespace (harness.Namespace)
    netns        per test: a namespace in which `lightvm` makes its bridges and taps

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
from harness import LightVM, Namespace, teardown

pytest_plugins = ["pytester", "leakguard"]

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
EXAMPLES = REPO / "examples"
SKIPS_ENV = "LIGHTVM_TEST_SKIPS"  # scripts/test.sh: where to list what skipped


def _note_skip(nodeid: str, longrepr: object) -> None:
    """Append "NODEID<TAB>REASON" to $LIGHTVM_TEST_SKIPS (scripts/test.sh checks them
    against tests/skip-allowlist.txt)."""
    path = os.environ.get(SKIPS_ENV)
    if not path:
        return
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{nodeid}\t{' '.join(str(reason).split())}\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _note_skip(report.nodeid, report.longrepr)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module-level skip
        _note_skip(report.nodeid, report.longrepr)


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


def teardown_runner(runner: LightVM, request: pytest.FixtureRequest) -> None:
    """harness.teardown, printing the consoles of a failed test first."""
    failed = getattr(request.node, "rep_call", None)
    teardown(runner, consoles_of=request.node.name if failed is not None and failed.failed else None)


@pytest.fixture
def lightvm(request: pytest.FixtureRequest, tmp_path: Path, cache_dir: Path, images: Path) -> Iterator[LightVM]:
    """A `lightvm` runner on a private state dir; teardown destroys all and checks for leftovers."""
    runner = LightVM(tmp_path / "state", cache_dir)
    try:
        yield runner
    finally:
        teardown_runner(runner, request)


@pytest.fixture
def make_lightvm(request: pytest.FixtureRequest, cache_dir: Path) -> Iterator[Callable[[Path], LightVM]]:
    """Make a runner on another state dir (tests that need two); each is torn down like
    `lightvm`'s. Tests must not `import conftest`: with tests/root collected too, that
    name is ambiguous."""
    made: list[LightVM] = []

    def make(state_dir: Path) -> LightVM:
        made.append(LightVM(state_dir, cache_dir))
        return made[-1]

    yield make
    errors = []
    for runner in made:
        try:
            teardown_runner(runner, request)
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def noop_vm(lightvm: LightVM) -> dict[str, Any]:
    """One booted noop VM named "noop"."""
    (vm,) = lightvm.create(EXAMPLES / "noop.toml")
    return vm


@pytest.fixture
def need_net_admin() -> None:
    from lightvm.devices.devd import has_cap_net_admin

    if not has_cap_net_admin():
        pytest.skip("needs CAP_NET_ADMIN (missing: run as root)")


@pytest.fixture
def nsname(need_net_admin: None) -> Iterator[str]:
    """A fresh, empty network namespace (its loopback up); removed in finally."""
    with Namespace() as ns:
        yield ns.name


@pytest.fixture
def netns(lightvm: LightVM, need_net_admin: None) -> Iterator[str]:
    """A fresh network namespace in which `lightvm` makes its bridges and taps
    (LIGHTVM_NETNS, tap mode forced); teardown destroys the VMs and every network the
    test made, then the namespace. Never touches the host's own interfaces."""
    with Namespace("lvtn-") as ns:
        lightvm.env["LIGHTVM_NETNS"] = ns.name
        lightvm.env["LIGHTVM_NET_MODE"] = "tap"
        try:
            yield ns.name
        finally:
            try:
                lightvm.run("destroy", "--all")
            finally:
                listed = lightvm.run("network", "list", "--json")
                for network in json.loads(listed.out) if listed.code == 0 else []:
                    lightvm.run("network", "delete", network["name"], "--force")

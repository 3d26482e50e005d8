"""Where the state dir is by default, as a string: no pathlib.

A module of its own because the ``lightvm`` command's thin path (lightvm/cli/thin.py)
needs the daemon socket's location on every command and must not import
:mod:`lightvm.state` (and with it most of the toolstack's helpers) to find it;
:func:`lightvm.state.default_state_dir` is this as a Path.
"""

from __future__ import annotations

import os

STATE_ENV = "LIGHTVM_STATE_DIR"


def default_state_path() -> str:
    """``$LIGHTVM_STATE_DIR``, else /run/lightvm (root), else ``$XDG_RUNTIME_DIR/lightvm``,
    else ``/tmp/lightvm-UID``."""
    env = os.environ.get(STATE_ENV)
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/lightvm"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "lightvm")
    return f"/tmp/lightvm-{os.geteuid()}"

"""One undo stack for every multi-step setup: a VM's create, restore and shells
(lightvm/instance.py), and the host's links, leases and networks (lightvm/devices/).

Each step that makes something pushes its inverse; on failure the inverses run newest
first, every one of them even if an earlier one fails: a failed undo step is logged
and returned, never raised over the error that caused the unwind.
"""

from __future__ import annotations

from collections.abc import Callable


class UndoStack:
    """Inverse steps of a multi-step setup, run newest first on failure.

    Use it as a context manager: if the block raises, every pushed step is
    run (errors in undo steps are logged, never raised over the original
    error). Call :meth:`commit` once the resources belong to someone who will
    release them (e.g. the VM's state folder), which empties the stack.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        """Register ``step`` (undoing ``what``) to run on unwind."""
        self._steps.append((what, step))

    def commit(self) -> None:
        """Forget every step: the resources are kept."""
        self._steps.clear()

    def run_only(self, what: str) -> list[str]:
        """Run the steps registered as ``what`` now, newest first, and forget them (what
        must be closed on success too, e.g. a network context); the others stay."""
        failures: list[str] = []
        for i in range(len(self._steps) - 1, -1, -1):
            if i < len(self._steps) and self._steps[i][0] == what:
                failures += _run(*self._steps.pop(i))
        return failures

    def unwind(self) -> list[str]:
        """Run every step newest first; return one message per failed step."""
        failures: list[str] = []
        while self._steps:
            failures += _run(*self._steps.pop())
        return failures

    def __len__(self) -> int:
        return len(self._steps)

    def __enter__(self) -> UndoStack:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.unwind()


def _run(what: str, step: Callable[[], object]) -> list[str]:
    try:
        step()
    except Exception as exc:  # an undo must not hide the original failure
        # Imported here: logging costs ~10 ms to import, which the create path need not pay.
        import logging

        logging.getLogger(__name__).warning("undo %s failed: %s", what, exc)
        return [f"undo {what}: {exc}"]
    return []

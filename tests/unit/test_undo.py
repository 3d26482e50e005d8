"""The one undo stack (lightvm/undo.py): newest first, every step runs, failures reported."""

from __future__ import annotations

import logging

import pytest

from lightvm.undo import UndoStack


def test_unwind_runs_every_step_newest_first_even_after_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []
    undo = UndoStack()
    undo.push("a", lambda: ran.append("a"))
    undo.push("b", lambda: 1 / 0)
    undo.push("c", lambda: ran.append("c"))
    with caplog.at_level(logging.WARNING, logger="lightvm.undo"):
        failures = undo.unwind()
    assert ran == ["c", "a"]
    assert failures == ["undo b: division by zero"]
    assert "undo b failed" in caplog.text
    assert len(undo) == 0 and undo.unwind() == []


def test_run_only_runs_the_named_steps_and_keeps_the_others() -> None:
    ran: list[str] = []
    undo = UndoStack()
    undo.push("context", lambda: ran.append("context"))
    undo.push("tap", lambda: ran.append("tap"))
    assert undo.run_only("context") == []
    assert ran == ["context"] and len(undo) == 1
    undo.unwind()
    assert ran == ["context", "tap"]


def test_context_manager_unwinds_on_error_only_and_commit_keeps() -> None:
    ran: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), UndoStack() as undo:
        undo.push("x", lambda: ran.append("x"))
        raise RuntimeError("boom")
    assert ran == ["x"]
    with UndoStack() as undo:
        undo.push("y", lambda: ran.append("y"))
        undo.commit()
    assert ran == ["x"]

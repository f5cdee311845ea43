"""vpm.backends.engine: a write that loses a commit race with another process is run again on a fresh handle."""

from __future__ import annotations

import pytest

from vpm.backends import engine


def test_a_write_that_lost_a_commit_race_is_run_again_on_a_reopened_table(monkeypatch):
    monkeypatch.setattr(engine.time, "sleep", lambda _s: None)
    attempts, reopened = [], []

    def write():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("Commit conflict for version 3: This Update transaction is incompatible with "
                               "concurrent transaction Overwrite at version 2.")
        return "written"

    assert engine.retry_conflicts(write, lambda: reopened.append(1)) == "written"
    assert len(attempts) == 3 and len(reopened) == 2


def test_other_failures_and_a_race_lost_every_time_are_not_hidden(monkeypatch):
    monkeypatch.setattr(engine.time, "sleep", lambda _s: None)
    calls = []

    def broken():
        calls.append(1)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        engine.retry_conflicts(broken, lambda: None)
    assert len(calls) == 1

    def always_losing():
        raise RuntimeError("incompatible with concurrent transaction Overwrite")

    with pytest.raises(RuntimeError, match="concurrent transaction"):
        engine.retry_conflicts(always_losing, lambda: None)

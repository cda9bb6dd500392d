"""Training progress on a log: plain timestamped lines with the count and time left."""

from __future__ import annotations

import io

import pytest

from acqflow.plugins.common.progress import TrainingProgress


def test_a_log_gets_a_line_per_tenth_with_the_time_left() -> None:
    log = io.StringIO()
    with TrainingProgress("training x", 20, stream=log, every=3600) as progress:
        for _ in range(20):
            progress.advance()
        progress.line("epoch 1/1: loss 0.5")
    lines = log.getvalue().splitlines()
    assert "training x: 0/20 steps done, starting" in lines[0]
    steps = [line for line in lines if "steps (" in line]
    assert len(steps) == 10 and "left" in steps[0] and "20/20 steps (100 %)" in steps[-1]
    assert lines[-2].endswith("epoch 1/1: loss 0.5")
    assert "done, 20/20 steps" in lines[-1]


def test_a_resumed_run_starts_from_its_completed_steps() -> None:
    log = io.StringIO()
    with TrainingProgress("training x", 10, completed=6, stream=log, every=3600) as progress:
        progress.advance()
    assert "6/10 steps done" in log.getvalue() and "7/10 steps (70 %)" in log.getvalue()


def test_impossible_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        TrainingProgress("x", 5, completed=6)

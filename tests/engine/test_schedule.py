"""The schedule is a pure function of the step index."""

from __future__ import annotations

from asyncvid.engine.schedule import PARALLEL, REUSE, SEQUENTIAL, step_action


def test_schedule_stride_two_pairs_steps_and_skips():
    kinds = [step_action(s, 7, warmup=2, stride=2).kind for s in range(7)]
    assert kinds == [SEQUENTIAL, SEQUENTIAL, PARALLEL, REUSE, PARALLEL, REUSE, PARALLEL]
    assert [step_action(s, 7, 2, 2).t_index for s in (2, 4, 6)] == [3, 5, 6]
    assert [step_action(s, 7, 2, 2, time_shift=True).t_index for s in (2, 4, 6)] == [2, 4, 5]
    assert step_action(4, 7, 2, 2).last_round is False and step_action(6, 7, 2, 2).last_round is True
    assert [step_action(s, 4, 1, 1, time_shift=True).t_index for s in range(4)] == [0, 0, 1, 2]

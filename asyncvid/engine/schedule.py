"""What each denoising step does under AsyncDiff: a pure function of the step index.

* ``sequential``: warm-up. Stage k waits for stage k-1's output of the same step.
* ``parallel``: every stage runs at once; stage k consumes what stage k-1 produced in the previous
  round. ``t_index`` is the timestep each stage embeds.
* ``reuse``: stride 2's second step: no stage runs, the previous round's prediction is reused.

Stride 2 (stage skipping, the reference's N-device variant): one round at step s serves steps s and
s+1 and is conditioned on ``t[s+1]`` (``t[s]`` when s is the last step). ``time_shift`` moves every
post-warm-up timestep one step back (``t[s-1]`` for stride 1, ``t[s]`` instead of ``t[s+1]`` for
stride 2), as in the reference implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import AsyncVidError
from .block_cache import BlockCache
from .forecast import Forecast

SEQUENTIAL, PARALLEL, REUSE = "sequential", "parallel", "reuse"


@dataclass(frozen=True)
class AsyncOptions:
    stride: int = 1
    warmup: int = 1
    time_shift: bool = False
    speculate: bool = True  # workers compute their next call before its message arrives
    forecast: Forecast = field(default_factory=Forecast)  # stale inputs extrapolated (``engine/forecast.py``)
    cache: BlockCache | None = None  # skip the blocks of a step together (``engine/block_cache.py``)

    def validate(self, stages: int) -> None:
        if self.stride not in (1, 2):
            raise AsyncVidError(f"stride must be 1 or 2, got {self.stride}")
        if self.warmup < 0:
            raise AsyncVidError(f"warmup must be >= 0, got {self.warmup}")
        if stages > 1 and self.warmup < 1:
            raise AsyncVidError("warmup must be >= 1 with more than one stage: the first step seeds every stage's input")


@dataclass(frozen=True)
class StepAction:
    kind: str
    t_index: int
    last_round: bool  # no later round consumes this round's stage outputs


def step_action(step: int, total: int, warmup: int, stride: int = 1, time_shift: bool = False) -> StepAction:
    if not 0 <= step < total:
        raise IndexError(f"step {step} outside a {total}-step schedule")
    if step < warmup:
        return StepAction(SEQUENTIAL, step, step == total - 1)
    shift = 1 if time_shift else 0
    if stride == 1:
        return StepAction(PARALLEL, step - shift, step == total - 1)
    if (step - warmup) % stride:
        return StepAction(REUSE, step, step == total - 1)
    ahead = min(step + stride - 1, total - 1) if step + 1 < total else step
    return StepAction(PARALLEL, max(ahead - shift, 0), step + stride >= total)

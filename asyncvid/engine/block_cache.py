"""A first-block cache that lives with stages: one decision per round, taken where the first block runs.

First Block Cache (ParaAttention; diffusers' ``FirstBlockCacheConfig``) computes the first transformer
block, compares its residual with the one of the last fully computed step, and when the relative
mean absolute change is at most ``threshold`` skips every later block, adding their residual from
that step instead. With stages the blocks are spread over ranks, so the decision is measured once,
by the stage that holds the first block, and every stage either computes its blocks (and keeps
their residual, its output minus its input over the cached span) or adds the residual it kept.

* Sequential (warm-up) rounds: the decision travels *with the state* it applies to (one byte after
  the carried tensors). The stages' residuals telescope to the whole model's, so with every step
  sequential this equals the cache alone.
* Parallel rounds (two stages or more): every stage applies the decision measured in the round before, which the step
  message carries, so all stages skip in the same rounds and nobody waits for the first block (had
  each stage followed its own data's decision, a skip pattern such as skip-compute-skip would make
  some stage compute in every round, and a round is as slow as its slowest stage).

The engine knows only unit indices: ``first`` (the unit whose residual decides), ``end`` (one past
the last unit that may be skipped). Units before ``first`` and from ``end`` on always run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import AsyncVidError
from .units import Carried, Unit, run_units


@dataclass(frozen=True)
class BlockCache:
    threshold: float
    first: int
    end: int

    def validate(self, units: int) -> None:
        if not 0 <= self.first < self.end <= units:
            raise AsyncVidError(f"block cache span {self.first}..{self.end} outside the model's {units} units")
        if self.threshold < 0:
            raise AsyncVidError(f"block cache threshold must be >= 0, got {self.threshold}")


@dataclass
class CacheState:
    """One call tag's cache on one rank (emptied with the pass, as diffusers resets it per call)."""

    head_residual: torch.Tensor | None = None  # the deciding stage: first block's residual when last computed
    residual: torch.Tensor | None = None  # this stage's span: output minus input when last computed
    skipped: int = 0
    computed: int = 0
    decisions: tuple[bool, ...] = ()  # per round, the decision this stage applied (a new tuple each time)
    measured: tuple[bool, ...] = ()  # the deciding stage: per round, what its first block said
    pending: bool = False  # the deciding stage: the decision for the next parallel round

    def decide(self, residual: torch.Tensor, threshold: float) -> bool:
        """True: skip (the first block's residual moved by at most ``threshold``, relative)."""
        prev = self.head_residual
        if prev is not None:
            change = float((residual - prev).abs().mean() / prev.abs().mean())
            if change <= threshold:
                return True
        self.head_residual = residual
        return False


def run_cached(cache: BlockCache, units: list[Unit], start: int, ctx, state: Carried, st: CacheState,
               skip: bool | None) -> Carried:
    """This stage's units (global indices from ``start``) under the cache, applying ``skip`` (None on the
    stage that holds the first unit in a sequential round: it applies what it measures now). Returns
    the output with ``skipped`` set to the decision applied, for the next stage."""
    index = range(start, start + len(units))
    pre = [u for i, u in zip(index, units) if i < cache.first]
    head = [u for i, u in zip(index, units) if i == cache.first]
    span = [u for i, u in zip(index, units) if cache.first < i < cache.end]
    post = [u for i, u in zip(index, units) if i >= cache.end]
    state = run_units(pre, ctx, state)
    if head:
        before = state.h
        state = head[0].run(ctx, state)
        measured = st.decide(state.h - before, cache.threshold)
        st.measured, st.pending = st.measured + (measured,), measured
        skip = measured if skip is None else skip
    elif skip is None:
        raise AsyncVidError("a stage after the first block received no cache decision")
    st.decisions = st.decisions + (bool(skip),)
    if span:
        if state.skips:
            raise AsyncVidError("the block cache needs a span without skip connections")
        if skip and st.residual is not None:
            state = Carried(state.h + st.residual)
            st.skipped += 1
        else:
            entering = state.h
            state = run_units(span, ctx, state)
            st.residual = state.h - entering
            st.computed += 1
    out = run_units(post, ctx, state)
    return Carried(out.h, out.skips, skipped=bool(skip))

"""A first-block cache that lives with stages: one decision per round, taken where the first block runs.

First Block Cache (ParaAttention's; the pipelines layer maps a user's config onto it) computes the first transformer
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

A second rule, ``magnitude`` (MagCache, Ma et al. 2025), decides from calibrated
residual-magnitude ratios per step instead: a function of the call count alone, so every stage
takes the same decision for the same round by itself (nothing travels), and the span starts at
``first`` (that block is skipped too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AsyncVidError
from .units import Carried, Unit, run_units


FIRST_BLOCK, MAGNITUDE = "first_block", "magnitude"


@dataclass(frozen=True)
class BlockCache:
    threshold: float
    first: int
    end: int
    rule: str = FIRST_BLOCK
    # ``magnitude`` only: the ratio per step (a tensor, as the caller keeps it), consecutive skips allowed,
    # leading steps never skipped, steps per pass
    ratios: Any = None
    max_skip: int = 3
    retention_steps: int = 0
    steps: int = 0

    def validate(self, units: int) -> None:
        if not 0 <= self.first < self.end <= units:
            raise AsyncVidError(f"block cache span {self.first}..{self.end} outside the model's {units} units")
        if self.threshold < 0:
            raise AsyncVidError(f"block cache threshold must be >= 0, got {self.threshold}")


@dataclass
class CacheState:
    """One call tag's cache on one rank (emptied with the pass: a cache does not outlive a call)."""

    head_residual: torch.Tensor | None = None  # the deciding stage: first block's residual when last computed
    residual: torch.Tensor | None = None  # this stage's span: output minus input when last computed
    skipped: int = 0
    computed: int = 0
    decisions: tuple[bool, ...] = ()  # per round, the decision this stage applied (a new tuple each time)
    measured: tuple[bool, ...] = ()  # the deciding stage: per round, what its first block said
    pending: bool = False  # the deciding stage: the decision for the next parallel round
    # ``magnitude``: the accumulated ratio, error and skipped steps, and the call count
    ratio: Any = 1.0
    error: Any = 0.0
    run: int = 0
    step_index: int = 0

    def magnitude_decision(self, cache: BlockCache) -> bool:
        """MagCache's rule, in the reference arithmetic (tensor ratios): skip while the error accumulated
        from the calibrated ratios stays under the threshold, at most ``max_skip`` calls in a row."""
        skip, step = False, self.step_index
        if step >= cache.retention_steps:
            self.ratio = self.ratio * (cache.ratios[step] if step < len(cache.ratios) else 1.0)
            self.run += 1
            self.error = self.error + abs(1.0 - self.ratio)
            if self.residual is not None and self.error <= cache.threshold and self.run <= cache.max_skip:
                skip = True
            else:
                self.ratio, self.run, self.error = 1.0, 0, 0.0
        return skip

    def magnitude_advance(self, cache: BlockCache) -> None:
        """After the call: the next step; the rule starts over after its configured steps."""
        self.step_index += 1
        if self.step_index >= cache.steps:
            self.step_index, self.ratio, self.run, self.error, self.residual = 0, 1.0, 0, 0.0, None

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
    if cache.rule == MAGNITUDE:
        return _run_magnitude(cache, units, start, ctx, state, st)
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
    state = _span(span, ctx, state, st, skip)
    out = run_units(post, ctx, state)
    return Carried(out.h, out.skips, skipped=bool(skip))


def _span(span: list[Unit], ctx, state: Carried, st: CacheState, skip: bool) -> Carried:
    """Compute the span and keep its residual, or add the residual kept."""
    if not span:
        return state
    if state.skips:
        raise AsyncVidError("the block cache needs a span without skip connections")
    if skip and st.residual is not None:
        st.skipped += 1
        return Carried(state.h + st.residual)
    entering = state.h
    state = run_units(span, ctx, state)
    st.residual = state.h - entering
    st.computed += 1
    return state


def _run_magnitude(cache: BlockCache, units: list[Unit], start: int, ctx, state: Carried, st: CacheState) -> Carried:
    index = range(start, start + len(units))
    skip = st.magnitude_decision(cache)  # every stage alike: the rule reads the call count only
    st.decisions = st.decisions + (skip,)
    state = run_units([u for i, u in zip(index, units) if i < cache.first], ctx, state)
    state = _span([u for i, u in zip(index, units) if cache.first <= i < cache.end], ctx, state, st, skip)
    st.magnitude_advance(cache)
    out = run_units([u for i, u in zip(index, units) if i >= cache.end], ctx, state)
    return Carried(out.h, out.skips, skipped=skip)

"""Per-call extra inputs (``DenoiserCall.extras``, e.g. ControlNet residuals) routed to stages.

A unit names the extras it reads in ``Unit.consumes``; each call's extras go to exactly the stages
holding such a unit, and nowhere else. The asynchronous semantics are those of the timestep
embedding: a stage serving step ``s`` receives the extras the pipeline passed with its call for
step ``s``, also when, in a parallel round, the stage works on the previous round's input.
"""

from __future__ import annotations

from typing import Any

from ..errors import AsyncVidError
from .split import SplitPlan
from .units import Unit


def consumers(units: list[Unit], split: SplitPlan) -> dict[str, set[int]]:
    """Extra-input name -> the stages whose units consume it."""
    out: dict[str, set[int]] = {}
    for i, unit in enumerate(units):
        for name in unit.consumes:
            out.setdefault(name, set()).add(split.stage_of(i))
    return out


def route(extras: dict[str, Any], by_name: dict[str, set[int]]) -> dict[int, dict[str, Any]]:
    """Stage -> the extras it must receive for this call (absent values are not routed)."""
    routed: dict[int, dict[str, Any]] = {}
    for name, value in extras.items():
        if value is None:
            continue
        if name not in by_name:
            raise AsyncVidError(f"the denoiser call carries {name}, which no unit of this model consumes")
        for stage in by_name[name]:
            routed.setdefault(stage, {})[name] = value
    return routed

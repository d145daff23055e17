"""Forecasting a stage's stale input instead of reusing it (``parallelize(..., forecast=...)``).

After warm-up, stage k at a parallel round consumes what stage k-1 produced in the previous round,
a state made for an older timestep. Every receiving stage already holds the states it received
in earlier rounds, each labelled with the timestep of the round that produced it; features move
smoothly along the denoising trajectory, so the state for the current round's timestep can be
extrapolated from them (a polynomial in the timestep value, so uneven step spacing is respected)
instead of being used as is. The forecast is local to the receiving rank: not one byte more
crosses a cut; it costs the kept states (one more per cut for ``linear``, two for ``quadratic``)
and an axpy per tensor per round.

* ``none``: the stale state as is (AsyncDiff; bit-identical to asyncvid without forecasting);
* ``linear``: first-order extrapolation through the last two states;
* ``quadratic``: second-order extrapolation through the last three;
* ``damped`` (``damped:0.5`` by default): the linear step scaled by the given factor in (0, 1].

Until a stage has received enough states (the first rounds after warm-up with ``warmup=1``), it
uses the highest order it can, down to the state as is. The history restarts wherever the stale
state does (a new pass) and when the conditioning changes (``engine/follower.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import AsyncVidError
from .units import Carried

NAMES = ("none", "linear", "quadratic", "damped")


@dataclass(frozen=True)
class Forecast:
    """``order`` 0 (none), 1 or 2; ``gain`` scales the first-order step (1 = plain extrapolation)."""

    order: int = 0
    gain: float = 1.0

    @classmethod
    def parse(cls, spec: "str | Forecast | None") -> "Forecast":
        if spec is None:
            return cls()
        if isinstance(spec, Forecast):
            return spec
        name, _, arg = str(spec).strip().lower().partition(":")
        if name not in NAMES:
            raise AsyncVidError(f"unknown forecast {spec!r}: choose one of {', '.join(NAMES)} (damped:GAIN with 0 < GAIN <= 1)")
        if arg and name != "damped":
            raise AsyncVidError(f"forecast {name!r} takes no argument (only damped:GAIN does), got {spec!r}")
        if name == "damped":
            try:
                gain = float(arg) if arg else 0.5
            except ValueError:
                raise AsyncVidError(f"forecast {spec!r}: the damping gain must be a number in (0, 1]") from None
            if not 0.0 < gain <= 1.0:
                raise AsyncVidError(f"forecast {spec!r}: the damping gain must be in (0, 1], got {gain}")
            return cls(1, gain)
        return cls({"none": 0, "linear": 1, "quadratic": 2}[name])

    @property
    def name(self) -> str:
        if self.order == 1 and self.gain != 1.0:
            return f"damped:{self.gain:g}"
        return ("none", "linear", "quadratic")[self.order]

    @property
    def kept(self) -> int:
        """How many received states a stage keeps (the newest included)."""
        return self.order + 1


def weights(times: list[float], target: float, order: int, gain: float = 1.0) -> list[float]:
    """Coefficients of the kept states (newest first) whose sum extrapolates to ``target``.

    Lagrange extrapolation of degree ``min(order, len(times) - 1)`` in the timestep value; repeated
    timesteps (no spacing to scale by) fall back to a lower degree. ``gain`` scales the first-order
    step: x0 + gain * (x0 - x1) * (target - t0) / (t0 - t1)."""
    degree = min(order, len(times) - 1)
    while degree > 0 and len({times[i] for i in range(degree + 1)}) < degree + 1:
        degree -= 1
    if degree == 0:
        return [1.0]
    if degree == 1:
        t0, t1 = times[0], times[1]
        r = gain * (target - t0) / (t0 - t1)
        return [1.0 + r, -r]
    ts = times[:degree + 1]
    out = []
    for i, ti in enumerate(ts):
        w = 1.0
        for j, tj in enumerate(ts):
            if j != i:
                w *= (target - tj) / (ti - tj)
        out.append(w)
    return out


class History:
    """The states one receiving stage was given for one call tag, newest first, with their timesteps."""

    def __init__(self, forecast: Forecast):
        self.forecast = forecast
        self.points: list[tuple[float, Carried]] = []

    def clear(self) -> None:
        self.points = []

    def restart(self) -> None:
        """Keep only the newest state: it stays the stale input, but nothing older extrapolates it."""
        del self.points[1:]

    def add(self, time: float, state: Carried) -> None:
        self.points.insert(0, (time, state))
        del self.points[self.forecast.kept:]

    def predict(self, target: float) -> Carried:
        """The state forecast for timestep ``target`` (the newest state as is with ``none``)."""
        newest = self.points[0][1]
        if self.forecast.order == 0 or len(self.points) < 2:
            return newest
        w = weights([t for t, _ in self.points], target, self.forecast.order, self.forecast.gain)
        if len(w) == 1:
            return newest
        states = [s for _, s in self.points[:len(w)]]
        return Carried.from_tensors([_combine(w, parts) for parts in zip(*(s.tensors() for s in states))])


def _combine(w: list[float], tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    out = tensors[0] * w[0]
    for wi, t in zip(w[1:], tensors[1:]):
        out.add_(t, alpha=wi)
    return out

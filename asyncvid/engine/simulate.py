"""Simulated devices: each unit's arithmetic replaced by a wait of its cost.

Everything else stays real: the pipeline loop and scheduler on the driver, the step messages, the
carried tensors of the real shapes through the real transport. What a run then measures beside the
waits is the engine's own cost (hook, schedule, messages, packing, transfers), which on a GPU is
the CPU work that decides the speedup once compute per step is small.

A unit learns what it returns by running once for real per input signature (shapes and dtypes of
the carried state); afterwards it waits and returns that output again, so the first call of a
run pays real compute once and every later call only waits. Costs come from a :class:`CostTable`:
seconds per unit at a reference batch, scaled linearly with the batch a unit sees (a guidance part
of half the batch waits half as long; the ideal speedup of CFG groups assumes the same).

Waiting processes do not contend for cores, so eight simulated devices fit on a 2-core machine.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import AsyncVidError
from ..utils import read_json
from .units import Carried, Unit

_SPIN_S = 60e-6  # the last stretch of a wait is spun: sleep() wakes 20-100 us late


@dataclass(frozen=True)
class CostTable:
    """Seconds per unit (in the model's unit order) for a denoiser batch of ``batch``."""

    seconds: tuple[float, ...]
    batch: int = 2
    source: str = ""

    def __post_init__(self):
        if not self.seconds or min(self.seconds) < 0:
            raise AsyncVidError("a cost table needs one non-negative cost per unit")
        if self.batch < 1:
            raise AsyncVidError(f"a cost table's batch must be >= 1, got {self.batch}")

    @property
    def total(self) -> float:
        return sum(self.seconds)

    @classmethod
    def uniform(cls, n_units: int, step_s: float, batch: int = 2) -> "CostTable":
        """Every unit the same, ``step_s`` for the whole forward pass."""
        return cls(tuple([step_s / n_units] * n_units), batch, f"uniform, {step_s * 1e3:g} ms per forward pass")

    @classmethod
    def from_profile(cls, costs: list[float], batch: int = 2, step_s: float | None = None) -> "CostTable":
        """A measured profile, optionally scaled so that the forward pass costs ``step_s``."""
        table = cls(tuple(costs), batch, "profile")
        return table.scaled(step_s) if step_s else table

    @classmethod
    def load(cls, path: str | Path, unit_names: list[str]) -> "CostTable":
        """A JSON file ``{"units": [names], "seconds": [...], "batch": B}`` (or ``{"seconds": {name: s}}``),
        checked against the model's units: a table measured once on a real GPU, or derived from
        FLOPs and bytes for a named one, replays here."""
        data = read_json(path, "cost table")
        seconds = data.get("seconds") if isinstance(data, dict) else None
        if isinstance(seconds, dict):
            names, seconds = list(seconds), list(seconds.values())
        else:
            names = data.get("units", unit_names) if isinstance(data, dict) else None
        if not isinstance(seconds, list) or names is None:
            raise AsyncVidError(f"cost table {path}: expected {{\"units\": [...], \"seconds\": [...], \"batch\": B}}")
        if list(names) != list(unit_names):
            missing = sorted(set(unit_names) - set(names)) or sorted(set(names) - set(unit_names))
            raise AsyncVidError(f"cost table {path}: its units do not match the model's ({len(names)} vs "
                                f"{len(unit_names)} units; first difference: {missing[:1] or 'order'})")
        return cls(tuple(float(s) for s in seconds), int(data.get("batch", 2)), f"file {Path(path).name}")

    def scaled(self, step_s: float) -> "CostTable":
        factor = step_s / self.total if self.total else 0.0
        return CostTable(tuple(s * factor for s in self.seconds), self.batch,
                         f"{self.source}, scaled to {step_s * 1e3:g} ms per forward pass")

    def for_batch(self, batch: int) -> list[float]:
        """Seconds per unit at another batch (linear in the batch)."""
        return [s * batch / self.batch for s in self.seconds]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CostTable":
        return cls(tuple(data["seconds"]), int(data["batch"]), data.get("source", ""))


_slack_set = False


def wait(seconds: float) -> None:
    """Wait ``seconds`` precisely (a few microseconds late on average), without holding a core."""
    global _slack_set
    if not _slack_set:  # Linux: the kernel's default 50 us timer slack would make every wait late
        try:
            ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
        except (OSError, AttributeError):
            pass
        _slack_set = True
    deadline = time.perf_counter() + seconds
    rest = seconds - _SPIN_S
    if rest > 0:
        time.sleep(rest)
    while time.perf_counter() < deadline:
        pass


def _signature(state: Carried) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in state.tensors())


class SimulatedDevice:
    """One rank's simulated device: its units wait their table costs at the batch being computed
    (:attr:`batch`, set by whoever runs the units: the denoiser batch of the call or guidance part)."""

    def __init__(self, table: CostTable):
        self.table = table
        self.batch = table.batch
        self.waited_s = 0.0  # simulated compute so far (what a real device would have spent)

    def units(self, units: list[Unit], first: int = 0) -> list[Unit]:
        """``units`` (the model's units ``first``, ``first + 1``, ...) with their arithmetic replaced by waits."""
        if first + len(units) > len(self.table.seconds):
            raise AsyncVidError(f"the cost table has {len(self.table.seconds)} units, the model more")
        return [self._unit(u, self.table.seconds[first + i]) for i, u in enumerate(units)]

    def _unit(self, unit: Unit, seconds: float) -> Unit:
        learned: dict[tuple, Carried] = {}

        def run(ctx, state: Carried) -> Carried:
            key = _signature(state)
            out = learned.get(key)
            if out is None:  # first time at this shape: compute once for real, to know what to return
                out = learned[key] = unit.run(ctx, state)
            else:
                cost = seconds * self.batch / self.table.batch
                wait(cost)
                self.waited_s += cost
            return out

        return Unit(unit.name, unit.modules, run, unit.consumes)

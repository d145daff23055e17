"""Split plans: which contiguous run of units each stage executes.

A plan comes from explicit module names (``[["conv_in", "down_blocks.0"], ["down_blocks.1", ...]]``)
or from measured per-unit costs, cut to minimise the slowest stage. Nothing here knows a model:
it sees unit names, costs and the bytes that cross each cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PlanError


def _matches(unit: str, name: str, aliases: dict[str, str]) -> bool:
    name = aliases.get(name, name)
    return unit == name or unit.startswith(name + ".")


def ranges_from_names(unit_names: list[str], split: list[list[str]], aliases: dict[str, str] | None = None) -> list[tuple[int, int]]:
    """Turn lists of module names into contiguous ``[start, end)`` unit ranges, one per stage.

    A name selects the unit of that name or every unit inside it (``"up_blocks.3"`` selects all of its
    layers). Every unit must be selected exactly once and stages must follow execution order.
    """
    aliases = aliases or {}
    owner: dict[int, int] = {}
    for stage, names in enumerate(split):
        if not names:
            raise PlanError(f"split: stage {stage} lists no modules")
        for name in names:
            hits = [i for i, u in enumerate(unit_names) if _matches(u, name, aliases)]
            if not hits:
                raise PlanError(f"split: stage {stage} names {name!r}, which is not a unit of this model "
                                f"(units: {', '.join(unit_names)})")
            for i in hits:
                if i in owner and owner[i] != stage:
                    raise PlanError(f"split: {unit_names[i]!r} is given to stage {owner[i]} and stage {stage}")
                owner[i] = stage
    missing = [unit_names[i] for i in range(len(unit_names)) if i not in owner]
    if missing:
        raise PlanError(f"split: no stage runs {', '.join(missing)}")
    ranges = []
    for stage in range(len(split)):
        idx = sorted(i for i, s in owner.items() if s == stage)
        if idx != list(range(idx[0], idx[-1] + 1)):
            raise PlanError(f"split: stage {stage} is not contiguous in execution order ({unit_names[idx[0]]} .. {unit_names[idx[-1]]} has gaps)")
        ranges.append((idx[0], idx[-1] + 1))
    for a, b in zip(ranges, ranges[1:]):
        if b[0] != a[1]:
            raise PlanError("split: stages must follow the model's execution order")
    return ranges


def balanced_ranges(costs: list[float], n_stages: int, first_extra: float = 0.0) -> list[tuple[int, int]]:
    """Contiguous partition of ``costs`` into ``n_stages`` non-empty parts minimising the largest sum;
    ``first_extra`` is work the first stage's device does besides its units (the driver's ControlNet).

    Dynamic programming over (units used, stages used); ties prefer the earlier cut. O(n_stages * U^2).
    """
    n = len(costs)
    if n_stages < 1:
        raise PlanError("stages must be >= 1")
    if n_stages > n:
        raise PlanError(f"cannot cut {n} units into {n_stages} stages")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    prefix = [0.0] + [p + first_extra for p in prefix[1:]]  # every range starting at unit 0 carries the extra
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(n_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(n_stages + 1)]
    best[0][0] = 0.0
    for k in range(1, n_stages + 1):
        for j in range(k, n - (n_stages - k) + 1):
            for i in range(k - 1, j):
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    ranges, j = [], n
    for k in range(n_stages, 0, -1):
        i = cut[k][j]
        ranges.append((i, j))
        j = i
    return ranges[::-1]


@dataclass
class SplitPlan:
    """Stages as unit ranges, with what is known of their cost and of the traffic at each cut."""

    unit_names: list[str]
    ranges: list[tuple[int, int]]
    unit_costs: list[float] | None = None
    cut_bytes: list[int] = field(default_factory=list)  # bytes leaving stage k (k < N-1) per step
    source: str = "explicit"

    @property
    def n_stages(self) -> int:
        return len(self.ranges)

    def stage_units(self, stage: int) -> list[str]:
        a, b = self.ranges[stage]
        return self.unit_names[a:b]

    def stage_of(self, unit_index: int) -> int:
        return next(k for k, (a, b) in enumerate(self.ranges) if a <= unit_index < b)

    def stage_shares(self) -> list[float] | None:
        if not self.unit_costs:
            return None
        total = sum(self.unit_costs) or 1.0
        return [sum(self.unit_costs[a:b]) / total for a, b in self.ranges]

    def to_dict(self) -> dict:
        shares = self.stage_shares()
        return {
            "source": self.source,
            "ranges": [list(r) for r in self.ranges],
            "stages": [
                {
                    "stage": k,
                    "modules": compress_names(self.stage_units(k), self.unit_names),
                    "cost_share": None if shares is None else round(shares[k], 4),
                    "bytes_out": self.cut_bytes[k] if k < len(self.cut_bytes) else None,
                }
                for k in range(self.n_stages)
            ],
        }

    def describe(self) -> str:
        lines = [f"split plan ({self.source}), {self.n_stages} stage(s):"]
        for row in self.to_dict()["stages"]:
            share = "" if row["cost_share"] is None else f" {100 * row['cost_share']:5.1f}% of cost"
            sent = "" if row["bytes_out"] is None else f", sends {row['bytes_out'] / 2**20:.2f} MiB/step"
            lines.append(f"  stage {row['stage']}:{share}{sent}: {', '.join(row['modules'])}")
        return "\n".join(lines)


def compress_names(names: list[str], all_names: list[str]) -> list[str]:
    """Replace runs of units that make up a whole block (e.g. every unit of ``up_blocks.1``) by the block."""
    out: list[str] = []
    i = 0
    while i < len(names):
        parts = names[i].split(".")
        block = ".".join(parts[:2]) if len(parts) > 2 else None
        if block:
            members = [n for n in all_names if n.startswith(block + ".")]
            if names[i : i + len(members)] == members:
                out.append(block)
                i += len(members)
                continue
        out.append(names[i])
        i += 1
    return out

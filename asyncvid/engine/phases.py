"""Where a rank's time goes between two units: seconds per phase of its calls.

A phase is closed by :meth:`PhaseClock.mark`, which charges the time since the previous mark to
it; one ``perf_counter`` call per phase boundary, so the clock can stay on in every run. ``rounds``
counts the executed denoiser calls, so ``totals / rounds`` is the per-round cost by phase.
"""

from __future__ import annotations

import time
from collections import defaultdict


class PhaseClock:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.rounds = 0
        self._last = time.perf_counter()
        self.events: list[tuple[str, float]] | None = None  # set to a list to record (phase, end time)

    def start(self) -> None:
        """Begin timing here (time before it is charged to no phase)."""
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.totals[phase] += now - self._last
        self._last = now
        if self.events is not None:
            self.events.append((phase, now))

    def reset(self) -> None:
        events = self.events
        self.__init__()
        self.events = None if events is None else []

    def per_round_ms(self) -> dict[str, float]:
        n = max(self.rounds, 1)
        return {phase: 1e3 * s / n for phase, s in sorted(self.totals.items())}

"""The watchdog: how long a rank waits on a peer inside a call before it names that peer and stops.

Every point-to-point wait of the engine goes through :func:`watched`. While the rank is *inside a
denoising pass* (the driver in ``begin``/``drive``/``end_call``, a worker from a pass's first step
message to its last step) a wait is bounded by :meth:`Watchdog.limit`; past it the rank raises
:class:`~asyncvid.errors.RankHung` naming the peer and what it waited for. Outside a pass (a worker
waiting for the next call in ``follow``/``serve``, or for ``END_CALL`` while the driver decodes the
video) a wait has no limit (:data:`IDLE_WAIT`, not even the group's timeout): an idle server may
wait for hours, and a peer that dies meanwhile still ends it (its connection closes).

Why slow but healthy runs do not trip it:

* the limit grows with the work: ``max(floor, 20 x the slowest step this rank has seen)``, a step
  being this rank's wall time for one executed step, its waits on peers included;
* until the rank has finished one step (the first step's compilation, lazy allocations, cuDNN
  autotuning) the limit is ``5 x floor``;
* model loading and ``parallelize`` happen outside passes (the group's own timeout,
  ``ASYNCVID_TIMEOUT``, bounds their collectives), and so do the VAE decode and everything a
  pipeline does before its first or after its last denoiser call.

The floor is ``rank_timeout`` (``parallelize(..., rank_timeout=)``, ``asyncvid render
--rank-timeout``, or ``$ASYNCVID_RANK_TIMEOUT``), 60 s by default; 0 turns the watchdog off (waits
inside a pass then fall back to the group's own timeout, ``ASYNCVID_TIMEOUT``).
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import timedelta

from ..errors import AsyncVidError, RankFailure, RankHung

DEFAULT_FLOOR_S = 60.0
STEP_FACTOR = 20.0  # the limit is at least this many times the slowest step seen
FIRST_STEP_FACTOR = 5.0  # before any step finished, the limit is this many times the floor
ENV = "ASYNCVID_RANK_TIMEOUT"
#: outside a pass: no limit in effect (the transport's own default would be the group timeout, 10 min)
IDLE_WAIT = timedelta(days=30)


def floor_from(value=None) -> float:
    """The floor in seconds: ``value`` if given, else ``$ASYNCVID_RANK_TIMEOUT``, else 60 s (0: off)."""
    if value is None:
        value = os.environ.get(ENV) or DEFAULT_FLOOR_S
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise AsyncVidError(f"rank timeout must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise AsyncVidError(f"rank timeout must be >= 0 seconds (0 turns the watchdog off), got {seconds:g}")
    return seconds


class Watchdog:
    """This process's view: the floor, the slowest step seen, and whether a pass is under way."""

    def __init__(self, floor_s: float = DEFAULT_FLOOR_S):
        self.floor = floor_s
        self.slowest = 0.0
        self.steps_seen = 0
        self.active = False
        self.where = ""  # e.g. "step 12 of 400", for the message

    def configure(self, floor_s: float) -> None:
        self.floor = floor_s

    def limit(self) -> float | None:
        """Seconds a wait may last now (None: unbounded)."""
        if not self.active or not self.floor:
            return None
        if not self.steps_seen:
            return FIRST_STEP_FACTOR * self.floor
        return max(self.floor, STEP_FACTOR * self.slowest)

    def step_done(self, seconds: float) -> None:
        self.steps_seen += 1
        self.slowest = max(self.slowest, seconds)

    @contextlib.contextmanager
    def watching(self, active: bool = True, where: str | None = None):
        """Waits inside the block are bounded (``active``) or not; restores the previous state."""
        before = self.active, self.where
        self.active = active
        if where is not None:
            self.where = where
        try:
            yield
        finally:
            self.active, self.where = before

    @contextlib.contextmanager
    def step(self, where: str):
        """One executed step: bounded waits, and its duration feeds the limit (if it completes)."""
        start = time.perf_counter()
        with self.watching(True, where):
            yield
        self.step_done(time.perf_counter() - start)


def _initial_floor() -> float:
    try:
        return floor_from(None)
    except AsyncVidError:  # reported by parallelize / the CLI, which read it again
        return DEFAULT_FLOOR_S


#: the watchdog of this process (one rank per process)
WATCH = Watchdog(_initial_floor())


def watched(work, peer: int, what: str):
    """``work.wait()``, bounded by the watchdog's current limit; a transport failure becomes the
    peer's own error when it reported one (see :mod:`.peer_errors`)."""
    limit = WATCH.limit()
    start = time.monotonic()
    try:
        if limit is not None:
            return work.wait(timeout=timedelta(seconds=limit))
        if not WATCH.active:  # idle: a server may wait for its next call for hours
            return work.wait(timeout=IDLE_WAIT)
        return work.wait()  # the watchdog is off: the group's own timeout (ASYNCVID_TIMEOUT)
    except AsyncVidError:
        raise
    except Exception as exc:
        waited = time.monotonic() - start
        if limit is not None and waited >= 0.9 * limit:
            raise hung(peer, what, waited) from None
        replaced = failure_of_peer(exc, peer)
        if replaced is exc:
            raise
        raise replaced from None


def hung(peer: int, what: str, waited: float) -> RankFailure:
    """The error for a peer that did not answer: its own reported error if it has one, else RankHung."""
    from . import peer_errors
    from .env import process_state

    reported = peer_errors.find(prefer=peer, wait_s=0.0)
    if reported is not None:
        return RankFailure(f"rank {reported[0]} failed: {reported[1]}")
    me = peer_errors.own_rank()
    where = f" ({WATCH.where})" if WATCH.where else ""
    state = process_state(peer)
    return RankHung(f"rank {peer} did not answer for {waited:.0f} s while rank {me} waited for {what}{where}"
                    f"{state}; it may be hung (stopped, a wedged GPU, a stalled network). Every rank stops; "
                    f"if it is only slow, raise --rank-timeout / rank_timeout (now {WATCH.floor:g} s)")


def failure_of_peer(exc: BaseException, peer: int | None = None) -> BaseException:
    """``exc`` (a transport error) replaced by the failing peer's own error line when one was reported."""
    from .env import lost_peer
    from . import peer_errors

    if lost_peer(exc) is None:
        return exc
    reported = peer_errors.find(prefer=peer, wait_s=1.0)
    if reported is None:
        return exc
    return RankFailure(f"rank {reported[0]} failed: {reported[1]}")

"""The workers' side of the stage runtime: following the driver's step messages, and running ahead.

As soon as a parallel round's output has been sent, a worker works out its next call from the
schedule (the same pure function the driver uses) and the call tags seen so far, computes that
call's per-step context while its next input is still in flight, and then, once the input is in,
the call itself, *before* the driver's step message arrives. So the driver's own per-step work
(guidance, scheduler, callbacks) and the context overlap the workers' compute. Nothing leaves a
worker before the message has confirmed the call; when the message disagrees (other step,
timestep or call tag, new conditioning, extra inputs), the speculative result is dropped and the
call computed again, so the outcome never depends on the guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..distributed.protocol import FIELDS, Op, StepMessage
from ..distributed.transport import PendingState, StateLink, recv_message, recv_tree
from ..distributed.watchdog import WATCH
from ..errors import AsyncVidError
from .block_cache import CacheState
from .conditioning import ConditioningVersion
from .forecast import History
from .schedule import PARALLEL, REUSE, SEQUENTIAL
from .units import Carried


@dataclass
class _CallStream:
    """Everything that belongs to one call tag: its links, stale input, conditioning, last prediction."""

    links: dict[str, StateLink]
    version: ConditioningVersion = field(default_factory=ConditioningVersion)
    cond_version: int = 0
    cond: Any = None
    sample_shape: torch.Size | None = None
    prev_input: Carried | None = None  # the newest state received from the stage before (workers)
    last_eps: torch.Tensor | None = None
    history: History | None = None  # received states by timestep, for the forecast (``engine/forecast.py``)
    cache: CacheState = field(default_factory=CacheState)  # the block cache of this call tag on this rank
    prev_skip: bool | None = None  # the block cache's decision that came with ``prev_input``


@dataclass
class _Speculation:
    key: tuple
    out: Carried


class FollowerMixin:
    """:class:`~asyncvid.engine.runtime.StageRuntime`'s methods for the ranks that are not a driver."""

    @torch.no_grad()  # without it a worker would record autograd graphs and keep them alive with its states
    def follow(self) -> Op:
        """Worker: follow the driver through one pipeline call; returns ``END_CALL``, ``SHUTDOWN`` or ``UNDO``."""
        guess: _Speculation | None = None
        idle, where = True, ""  # idle: between calls or after a pass's last step, waits are unbounded
        while True:
            with WATCH.watching(not idle, where):
                message = StepMessage.decode(recv_message(self.driver_rank, FIELDS, self.device))
            self.phases.mark("wait for message")
            if message.op == Op.BEGIN:
                with WATCH.watching(True, "at the start of a pass"):
                    control = recv_tree(self.driver_rank, self.device)
                if "setup" in control:
                    self.adapter.apply_module_setup(control["setup"])
                self._new_pass(control["timesteps"])
                guess, idle, where = None, False, "before the first step"
                continue
            if message.op != Op.STEP:
                with WATCH.watching(True, "at the end of a call"):
                    self._wait_links()
                return message.op
            with WATCH.step(f"step {message.step + 1} of {self.total}"):
                guess = self._follow_step(message, guess)
            # after the pass's last computing step the driver decodes, calls back ...: unbounded
            idle, where = self.action(message.step).last_round, f"after step {message.step + 1} of {self.total}"

    def _follow_step(self, message: StepMessage, guess: _Speculation | None) -> _Speculation | None:
        stream = self._stream(message.call_tag)
        if message.cond_version != stream.cond_version:
            payload = recv_tree(self.driver_rank, self.device)
            stream.cond, stream.sample_shape = payload["cond"], torch.Size(payload["shape"])
            stream.cond_version = message.cond_version
            stream.history.restart()  # states made under the old conditioning do not extrapolate to the new
        extras = recv_tree(self.driver_rank, self.device) if message.routes_extras_to(self.stage) else None
        self.calls_with_extras += extras is not None
        self._note_tag(message)
        self.phases.mark("schedule")
        action = self.action(message.step)
        if action.kind == REUSE or action.t_index != message.t_index:
            raise AsyncVidError(f"step message for step {message.step} (t_index {message.t_index}) disagrees with "
                                f"this rank's schedule ({action}): every rank must use the same options")
        timestep = self._timestep(message.t_index, message.timestep_dtype, message.timestep)
        before = self.traffic.activation
        pending: PendingState | None = None
        if action.kind == SEQUENTIAL:
            self._received(stream, message.step, stream.links["recv_prev"].irecv().wait())
            self.phases.mark("wait for input")
            out = self._compute(stream, timestep, stream.prev_input, extras)
        else:
            if stream.prev_input is None:
                raise AsyncVidError("parallel step without a previous input: the loop must start with a warm-up step")
            key = self._key(message.step, message.call_tag, timestep, stream)
            if guess is not None and guess.key == key and not extras:
                out = guess.out
                self.speculation["used"] += 1
            else:
                self.speculation["dropped"] += guess is not None
                out = self._compute(stream, timestep, self._stale_input(stream, message.step), extras,
                                    skip=message.skips_blocks)
            if not action.last_round:
                pending = stream.links["recv_prev"].irecv()
        self._send_on(stream, action, out)
        self.phases.mark("send")
        # no speculation under the block cache: the round's decision comes with the message, and a
        # worker busy with a guess would hold up a round in which every stage skips
        ahead = self._next_work(message) if self.options.speculate and not extras and self.options.cache is None else None
        if pending is not None:
            self._received(stream, message.step, pending.wait())
            self.phases.mark("wait for input")
        self._count_step(before)
        if ahead is None or ahead[1].prev_input is None:
            return None
        key, nxt, timestep, ctx, step = ahead
        return _Speculation(key, self._compute(nxt, timestep, self._stale_input(nxt, step), ctx=ctx))

    def _received(self, stream: _CallStream, step: int, tensors: list[torch.Tensor]) -> None:
        """The stage before's output of the round at ``step`` is in: the next round's stale input. It is
        kept under the timestep of that round's *step* (the sample it was computed from), not the
        timestep the round was conditioned on (stride 2 and ``time_shift`` move that one): warm-up and
        parallel rounds then lie on one time axis."""
        if self.options.cache is not None:  # the block cache's decision travels as one byte after the state
            tensors, stream.prev_skip = tensors[:-1], bool(tensors[-1].item())
        stream.prev_input = Carried.from_tensors(tensors)
        stream.history.add(float(self.timesteps[step]), stream.prev_input)

    def _stale_input(self, stream: _CallStream, step: int) -> Carried:
        """The input of a parallel round at ``step``: the newest received state, or its forecast."""
        if stream.history.forecast.order == 0:
            return stream.prev_input
        state = stream.history.predict(float(self.timesteps[step]))
        self.phases.mark("forecast")
        return state

    def _timestep(self, t_index: int, dtype: torch.dtype, value: float | None = None) -> torch.Tensor:
        """The timestep tensor of ``t_index`` in ``dtype``: one tensor per pass, index and dtype, so that
        an adapter may keep what it computed from it (a transformer's time embeddings); ``value`` is the
        driver's exact value when a message carried it."""
        key = (t_index, dtype)
        known = self._timesteps.get(key)
        if known is not None and (value is None or known[0] == value):
            return known[1]
        if value is None:
            tensor = self.timesteps[t_index].reshape(1).to(device=self.device, dtype=dtype)
            value = float(tensor.reshape(-1)[0])
        else:
            tensor = torch.tensor([value], dtype=torch.float64, device=self.device).to(dtype)
        self._timesteps[key] = (value, tensor)
        return tensor

    def _key(self, step: int, tag: int, timestep: torch.Tensor, stream: _CallStream) -> tuple:
        return (step, tag, timestep.dtype, float(timestep.reshape(-1)[0]), stream.cond_version)

    def _note_tag(self, message: StepMessage) -> None:
        if self._tags_this_step and message.call_tag in self._tags_this_step:  # a new step began
            self._tag_pattern = self._tags_this_step
            self._tags_this_step = []
        self._tags_this_step.append(message.call_tag)

    def _next_call(self, message: StepMessage) -> tuple[int, int] | None:
        """The (step, tag) the driver will most likely ask for next, from the schedule and the tag pattern."""
        pattern = self._tag_pattern
        if message.call_tag in pattern and pattern.index(message.call_tag) + 1 < len(pattern):
            return message.step, pattern[pattern.index(message.call_tag) + 1]
        step = message.step + 1
        while step < self.total and self.action(step).kind == REUSE:
            step += 1
        return (step, pattern[0]) if step < self.total else None

    def _next_work(self, message: StepMessage):
        """The next call's key, stream, timestep and context (computed now, while the input is in flight),
        or None when the schedule says it will not be a parallel call of a known stream."""
        nxt = self._next_call(message)
        if nxt is None:
            return None
        step, tag = nxt
        action = self.action(step)
        stream = self.streams.get(tag)
        if action.kind != PARALLEL or stream is None or stream.cond is None:
            return None
        timestep = self._timestep(action.t_index, message.timestep_dtype)
        ctx = self._context(stream, timestep)
        self.phases.mark("context ahead")
        return self._key(step, tag, timestep, stream), stream, timestep, ctx, step

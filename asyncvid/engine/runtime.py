"""The stage runtime: one per rank, running that rank's stage for every denoiser call.

It works on tensors only. The driver (stage 0 of its stage group) calls :meth:`StageRuntime.begin`
once per denoising pass and :meth:`StageRuntime.drive` once per denoiser call; the other stages sit
in :meth:`StageRuntime.follow`. Only what the workers cannot know travels, point to point (see
``distributed/protocol.py``): the pass's timesteps once, one small step message per executed call,
the conditioning when its version changes, and the carried states across the cuts.

* sequential (warm-up) step: stage k receives stage k-1's output of this step, runs, sends on;
* parallel step: stage k runs on what stage k-1 produced in the *previous* round, sends its output
  on, then completes the receive of stage k-1's output of this round.

Workers run ahead: as soon as a parallel round's input is in, a worker computes its next call from
the schedule (the same pure function the driver uses), *before* the driver's step message arrives,
so the driver's own per-step work (guidance, scheduler, callbacks) overlaps the workers' compute.
Nothing leaves a worker before the message has confirmed the call; when the message disagrees
(other step, timestep or call tag, new conditioning, extra inputs), the speculative result is
dropped and the call computed again, so the outcome never depends on the guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..distributed.protocol import FIELDS, Op, StepMessage, extras_mask
from ..distributed.topology import Topology
from ..distributed.transport import (PendingState, StateLink, Traffic, recv_message, recv_tree, send_message,
                                     send_tree)
from ..distributed.watchdog import WATCH, watched
from ..errors import AsyncVidError
from .adapter import DenoiserCall, StageAdapter
from .conditioning import ConditioningVersion
from .extras import consumers, route
from .schedule import PARALLEL, REUSE, SEQUENTIAL, AsyncOptions, StepAction, step_action
from .split import SplitPlan
from .units import Carried, run_units


@dataclass
class _CallStream:
    """Everything that belongs to one call tag: its links, stale input, conditioning, last prediction."""

    links: dict[str, StateLink]
    version: ConditioningVersion = field(default_factory=ConditioningVersion)
    cond_version: int = 0
    cond: Any = None
    sample_shape: torch.Size | None = None
    prev_input: Carried | None = None
    last_eps: torch.Tensor | None = None


@dataclass
class _Speculation:
    key: tuple
    out: Carried


class StageRuntime:
    def __init__(self, adapter: StageAdapter, split: SplitPlan, topo: Topology, device: torch.device,
                 options: AsyncOptions):
        self.adapter, self.split, self.topo, self.device, self.options = adapter, split, topo, device, options
        a, b = split.ranges[topo.stage]
        all_units = adapter.units()
        self.units = all_units[a:b]
        self.extras_consumers = consumers(all_units, split)
        self.traffic = Traffic()
        self.n_stages, self.stage = topo.stages, topo.stage
        self.driver_rank = topo.stage_rank(0)
        self.worker_ranks = [topo.stage_rank(k) for k in range(1, topo.stages)]
        self.timesteps: torch.Tensor | None = None
        self.total = 0
        self.streams: dict[int, _CallStream] = {}
        self.steps_executed = 0
        self.speculation = {"used": 0, "dropped": 0}  # workers: speculative results confirmed / recomputed
        self.calls_with_extras = 0  # calls whose extra inputs this rank's stage consumed
        self._sent: list = []  # driver: step messages in flight
        self._tag_pattern: list[int] = [0]  # workers: the call tags of one step, as last seen
        self._tags_this_step: list[int] = []
        self._setup_sent: Any = None  # driver: the module setup the workers have
        self.local_setup: Any = None  # driver: a module setup its own stage computes with (a guidance part's)

    # ------------------------------------------------------------------ shared
    def _stream(self, tag: int) -> _CallStream:
        stream = self.streams.get(tag)
        if stream is None:
            n, k, rank = self.n_stages, self.stage, self.topo.stage_rank
            links = {}
            if k > 0:
                links["recv_prev"] = StateLink(rank(k - 1), self.device, self.traffic)
            if k < n - 1:
                links["send_next"] = StateLink(rank(k + 1), self.device, self.traffic)
            if n > 1 and k == n - 1:
                links["send_eps"] = StateLink(self.driver_rank, self.device, self.traffic)
            if n > 1 and k == 0:
                links["recv_eps"] = StateLink(rank(n - 1), self.device, self.traffic)
            stream = self.streams[tag] = _CallStream(links)
        return stream

    def _new_pass(self, timesteps: torch.Tensor) -> None:
        for stream in self.streams.values():
            for link in stream.links.values():
                link.reset()
            stream.prev_input, stream.last_eps = None, None
        self.timesteps, self.total = timesteps, len(timesteps)
        self._tags_this_step = []

    def action(self, step: int) -> StepAction:
        o = self.options
        return step_action(step, self.total, o.warmup, o.stride, o.time_shift)

    def _compute(self, stream: _CallStream, timestep: torch.Tensor, state: Carried, extras=None) -> Carried:
        cond = stream.cond if not extras else {**stream.cond, **extras}
        ctx = self.adapter.context(stream.sample_shape, timestep, cond)
        if self.local_setup is None:
            return run_units(self.units, ctx, state)
        with self.adapter.module_setup_applied(self.local_setup):
            return run_units(self.units, ctx, state)

    def _send_on(self, stream: _CallStream, action: StepAction, out: Carried) -> None:
        if "send_next" in stream.links and (action.kind == SEQUENTIAL or not action.last_round):
            stream.links["send_next"].isend(out.tensors())
        if "send_eps" in stream.links:
            stream.links["send_eps"].isend([self.adapter.prediction(out)])

    def _count_step(self, before: int) -> None:
        self.steps_executed += 1
        self.traffic.per_step.append(self.traffic.activation - before)

    def _wait_links(self) -> None:
        for stream in self.streams.values():
            for link in stream.links.values():
                link.wait()

    # ------------------------------------------------------------------ driver
    def _drain_sent(self) -> None:
        for (work, _), rank in zip(self._sent, self.worker_ranks):  # one message per worker, in order
            watched(work, rank, "it to take a step message")
        self._sent.clear()

    def _tell_workers(self, message: StepMessage, timestep: torch.Tensor | None = None, tree=None,
                      kind: str = "conditioning", extras: dict[int, dict] | None = None) -> None:
        self._drain_sent()
        encoded = message.encode(self.device, timestep)  # one buffer, read by every send
        for stage, rank in enumerate(self.worker_ranks, start=1):
            send_message(encoded, rank, self.traffic, self._sent)
            if tree is not None:
                send_tree(tree, rank, self.device, self.traffic, kind)
            if extras and stage in extras:
                send_tree(extras[stage], rank, self.device, self.traffic, "extras")

    def begin(self, timesteps: torch.Tensor, setup: Any = None) -> None:
        """Driver: a new denoising pass over ``timesteps`` starts (every pipeline call, every FreeInit
        pass). ``setup`` is the adapter's :meth:`~StageAdapter.module_setup`; it travels when it changed."""
        timesteps = timesteps.detach().reshape(-1)
        with WATCH.watching(True, "at the start of a pass"):
            self._new_pass(timesteps)
            control = {"timesteps": timesteps}
            if setup != self._setup_sent:
                control["setup"], self._setup_sent = setup, setup
            self._tell_workers(StepMessage(Op.BEGIN, total=len(timesteps)), tree=control, kind="control")

    @torch.no_grad()  # pipelines call the denoiser without autograd; so does every stage
    def drive(self, step: int, call: DenoiserCall, tag: int = 0) -> torch.Tensor:
        """Driver: the prediction for denoiser call ``tag`` of step ``step`` of the current pass."""
        with WATCH.step(f"step {step + 1} of {self.total}"):
            return self._drive(step, call, tag)

    def _drive(self, step: int, call: DenoiserCall, tag: int) -> torch.Tensor:
        if self.timesteps is None or not 0 <= step < self.total:
            raise AsyncVidError(f"denoiser call for step {step} outside the current pass of {self.total} steps")
        action = self.action(step)
        stream = self._stream(tag)
        if action.kind == REUSE:
            if stream.last_eps is None:
                raise AsyncVidError(f"step {step} reuses a prediction that call tag {tag} never made")
            return stream.last_eps
        timestep = call.timestep
        if action.t_index != step:
            timestep = self.timesteps[action.t_index].reshape(1).to(device=timestep.device, dtype=timestep.dtype)
        changed = stream.version.update((tuple(call.sample.shape), call.cond))
        tree = None
        if changed:
            stream.cond, stream.sample_shape = call.cond, call.sample.shape
            stream.cond_version = stream.version.version
            tree = {"cond": call.cond, "shape": tuple(call.sample.shape)}
        routed = route(call.extras, self.extras_consumers) if call.extras else {}
        message = StepMessage(Op.STEP, step, action.t_index, tag, stream.cond_version,
                              extras_mask(k for k in routed if k > 0), timestep_dtype=timestep.dtype, total=self.total)
        if self.worker_ranks:
            self._tell_workers(message, timestep, tree, extras=routed)
        before = self.traffic.activation
        self.calls_with_extras += 0 in routed
        out = self._compute(stream, timestep, self.adapter.input_state(call.sample), routed.get(0))
        self._send_on(stream, action, out)
        if "recv_eps" in stream.links:
            eps = stream.links["recv_eps"].irecv().wait()[0]
        else:
            eps = self.adapter.prediction(out)
        self._count_step(before)
        stream.last_eps = eps
        return eps

    def end_call(self) -> None:
        """Driver: the pipeline call is over (also after an interrupted loop)."""
        with WATCH.watching(True, "at the end of a call"):
            self._wait_links()
            if self.worker_ranks:
                self._tell_workers(StepMessage(Op.END_CALL))
                self._drain_sent()  # a driver that exits right after its call must not cut it off

    def release_workers(self, op: Op = Op.SHUTDOWN) -> None:
        """Driver: end the workers' :meth:`follow` loop for good (``SHUTDOWN``) or for a weight gather (``UNDO``)."""
        if self.worker_ranks:
            with WATCH.watching(True, "releasing the workers"):
                self._tell_workers(StepMessage(op))
                self._drain_sent()

    # ------------------------------------------------------------------ workers
    @torch.no_grad()  # without it a worker would record autograd graphs and keep them alive with its states
    def follow(self) -> Op:
        """Worker: follow the driver through one pipeline call; returns ``END_CALL``, ``SHUTDOWN`` or ``UNDO``."""
        guess: _Speculation | None = None
        idle, where = True, ""  # idle: between calls or after a pass's last step, waits are unbounded
        while True:
            with WATCH.watching(not idle, where):
                message = StepMessage.decode(recv_message(self.driver_rank, FIELDS, self.device))
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
        extras = recv_tree(self.driver_rank, self.device) if message.routes_extras_to(self.stage) else None
        self.calls_with_extras += extras is not None
        self._note_tag(message)
        action = self.action(message.step)
        if action.kind == REUSE or action.t_index != message.t_index:
            raise AsyncVidError(f"step message for step {message.step} (t_index {message.t_index}) disagrees with "
                                f"this rank's schedule ({action}): every rank must use the same options")
        timestep = message.timestep_tensor(self.device)
        before = self.traffic.activation
        pending: PendingState | None = None
        if action.kind == SEQUENTIAL:
            stream.prev_input = Carried.from_tensors(stream.links["recv_prev"].irecv().wait())
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
                out = self._compute(stream, timestep, stream.prev_input, extras)
            if not action.last_round:
                pending = stream.links["recv_prev"].irecv()
        self._send_on(stream, action, out)
        if pending is not None:
            stream.prev_input = Carried.from_tensors(pending.wait())
        self._count_step(before)
        if not self.options.speculate or extras:
            return None
        return self._speculate(message)

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

    def _speculate(self, message: StepMessage) -> _Speculation | None:
        nxt = self._next_call(message)
        if nxt is None:
            return None
        step, tag = nxt
        action = self.action(step)
        stream = self.streams.get(tag)
        if action.kind != PARALLEL or stream is None or stream.prev_input is None or stream.cond is None:
            return None
        timestep = self.timesteps[action.t_index].reshape(1).to(device=self.device, dtype=message.timestep_dtype)
        out = self._compute(stream, timestep, stream.prev_input)
        return _Speculation(self._key(step, tag, timestep, stream), out)

"""The stage runtime: one per rank, running that rank's stage for every denoiser call.

It works on tensors only. The driver (stage 0 of its stage group) calls :meth:`StageRuntime.begin`
once per denoising pass and :meth:`StageRuntime.drive` once per denoiser call; the other stages sit
in :meth:`StageRuntime.follow`. Only what the workers cannot know travels, point to point (see
``distributed/protocol.py``): the pass's timesteps once, one small step message per executed call,
the conditioning when its version changes, and the carried states across the cuts.

* sequential (warm-up) step: stage k receives stage k-1's output of this step, runs, sends on;
* parallel step: stage k runs on what stage k-1 produced in the *previous* round, sends its output
  on, then completes the receive of stage k-1's output of this round.

Workers run ahead of the step messages (``engine/follower.py``). Carried states travel on their own
process groups and, on gloo, are posted from a sender thread (``distributed/transport.py``), so a
transfer overlaps compute and never holds up a step message.
"""

from __future__ import annotations

from typing import Any

import torch

from ..distributed.protocol import CACHE_COMPUTE, CACHE_NONE, CACHE_SKIP, Op, StepMessage, extras_mask
from ..distributed.topology import Topology
from ..distributed.transport import StateLink, Traffic, link_tag, send_message, send_tree
from ..distributed.watchdog import WATCH, watched
from ..errors import AsyncVidError
from .adapter import DenoiserCall, StageAdapter
from .extras import consumers, route
from .phases import PhaseClock
from .schedule import REUSE, SEQUENTIAL, AsyncOptions, StepAction, step_action
from .simulate import CostTable, SimulatedDevice
from .split import SplitPlan
from .follower import FollowerMixin, _CallStream
from .forecast import History
from .block_cache import FIRST_BLOCK, CacheState, run_cached
from .units import Carried, run_units


class StageRuntime(FollowerMixin):
    def __init__(self, adapter: StageAdapter, split: SplitPlan, topo: Topology, device: torch.device,
                 options: AsyncOptions, simulate: CostTable | None = None):
        self.adapter, self.split, self.topo, self.device, self.options = adapter, split, topo, device, options
        a, b = split.ranges[topo.stage]
        self.first_unit = a
        all_units = adapter.units()
        if options.cache is not None:
            options.cache.validate(len(all_units))
        self.units = all_units[a:b]
        # simulated devices (``engine/simulate.py``): this stage's units wait their table costs instead
        self.simulated = SimulatedDevice(simulate) if simulate is not None else None
        if self.simulated is not None:
            self.units = self.simulated.units(self.units, a)
        self.phases = PhaseClock()  # seconds per phase of this rank's calls (``asyncvid bench --simulate``)
        self.extras_consumers = consumers(all_units, split)
        self.traffic = Traffic()
        self.n_stages, self.stage = topo.stages, topo.stage
        self.driver_rank = topo.stage_rank(0)
        self.worker_ranks = [topo.stage_rank(k) for k in range(1, topo.stages)]
        self.timesteps: torch.Tensor | None = None
        self._timesteps: dict[tuple, tuple[float, torch.Tensor]] = {}
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
            hop, back = link_tag(tag, "hop"), link_tag(tag, "eps")  # both ends of a link name it alike
            forward, backward = self.topo.forward_group, self.topo.back_group
            if k > 0:
                links["recv_prev"] = StateLink(rank(k - 1), self.device, self.traffic, tag=hop, group=forward)
            if k < n - 1:
                links["send_next"] = StateLink(rank(k + 1), self.device, self.traffic, tag=hop, group=forward)
            if n > 1 and k == n - 1:
                links["send_eps"] = StateLink(self.driver_rank, self.device, self.traffic, tag=back, group=backward)
            if n > 1 and k == 0:
                links["recv_eps"] = StateLink(rank(n - 1), self.device, self.traffic, tag=back, group=backward)
            stream = self.streams[tag] = _CallStream(links, history=History(self.options.forecast))
        return stream

    def _new_pass(self, timesteps: torch.Tensor) -> None:
        for stream in self.streams.values():
            for link in stream.links.values():
                link.reset()
            stream.prev_input, stream.last_eps, stream.prev_skip = None, None, None
            stream.cache = CacheState()
            stream.history.clear()
        self.timesteps, self.total = timesteps, len(timesteps)
        self._tags_this_step = []
        self._timesteps: dict[tuple, tuple[float, torch.Tensor]] = {}  # workers: (t_index, dtype) -> (value, tensor)

    def action(self, step: int) -> StepAction:
        o = self.options
        return step_action(step, self.total, o.warmup, o.stride, o.time_shift)

    def _context(self, stream: _CallStream, timestep: torch.Tensor, extras=None):
        cond = stream.cond if not extras else {**stream.cond, **extras}
        return self.adapter.context(stream.sample_shape, timestep, cond)

    def _compute(self, stream: _CallStream, timestep: torch.Tensor, state: Carried, extras=None, ctx=None,
                 skip: bool | None = None) -> Carried:
        if ctx is None:
            ctx = self._context(stream, timestep, extras)
        if self.simulated is not None:
            self.simulated.batch = stream.sample_shape[0]
        self.phases.mark("context")
        if self.local_setup is None:
            out = self._run(stream, ctx, state, skip)
        else:
            with self.adapter.module_setup_applied(self.local_setup):
                out = self._run(stream, ctx, state, skip)
        self.phases.mark("compute")
        return out

    def _run(self, stream: _CallStream, ctx, state: Carried, skip: bool | None) -> Carried:
        """``skip``: the block cache's decision to apply (None: the driver's own, or the one that came
        with the state in a sequential round)."""
        cache = self.options.cache
        if cache is None:
            return run_units(self.units, ctx, state)
        if skip is None and self.stage > 0:
            skip = stream.prev_skip
        return run_cached(cache, self.units, self.first_unit, ctx, state, stream.cache, skip)

    def cache_counts(self) -> dict:
        """Block cache: this rank's skipped and computed spans over every call tag of the last pass, and
        per call tag the decision it applied in each round."""
        return {"skipped": sum(s.cache.skipped for s in self.streams.values()),
                "computed": sum(s.cache.computed for s in self.streams.values()),
                "decisions": {tag: s.cache.decisions for tag, s in sorted(self.streams.items())},
                "measured": {tag: s.cache.measured for tag, s in sorted(self.streams.items())}}

    def _send_on(self, stream: _CallStream, action: StepAction, out: Carried) -> None:
        for name in ("send_next", "send_eps"):
            if name in stream.links:
                stream.links[name].wait()  # the previous state on this link has left (its receiver took it)
        self.phases.mark("wait for peer")
        if "send_next" in stream.links and (action.kind == SEQUENTIAL or not action.last_round):
            tensors = out.tensors()
            if self.options.cache is not None:
                tensors.append(torch.tensor([int(bool(out.skipped))], dtype=torch.uint8, device=out.h.device))
            stream.links["send_next"].isend(tensors)
        if "send_eps" in stream.links:
            stream.links["send_eps"].isend([self.adapter.prediction(out)])

    def forecast_bytes(self) -> int:
        """Bytes this rank holds for the forecast beyond the newest received states (which every
        stage keeps anyway): the price of ``forecast`` in memory."""
        return sum(t.numel() * t.element_size() for stream in self.streams.values()
                   for _, state in stream.history.points[1:] for t in state.tensors())

    def _count_step(self, before: int) -> None:
        self.steps_executed += 1
        self.phases.rounds += 1
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
        self.phases.mark("wait for peer")
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
        self.phases.start()
        timesteps = timesteps.detach().reshape(-1)
        with WATCH.watching(True, "at the start of a pass"):
            self._new_pass(timesteps)
            control = {"timesteps": timesteps}
            if setup != self._setup_sent:
                control["setup"], self._setup_sent = setup, setup
            self._tell_workers(StepMessage(Op.BEGIN, total=len(timesteps)), tree=control, kind="control")
        self.phases.mark("begin")

    @torch.no_grad()  # pipelines call the denoiser without autograd; so does every stage
    def drive(self, step: int, call: DenoiserCall, tag: int = 0) -> torch.Tensor:
        """Driver: the prediction for denoiser call ``tag`` of step ``step`` of the current pass."""
        self.phases.mark("pipeline")  # since the previous call returned: the pipeline's own work
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
        skip = None  # the block cache: a parallel round applies what the round before measured, on every stage
        cache = self.options.cache
        if cache is not None and cache.rule == FIRST_BLOCK and action.kind != SEQUENTIAL and self.n_stages > 1:
            skip = stream.cache.pending  # (one stage: nothing to align, it applies what it measures, as the cache alone)
        message = StepMessage(Op.STEP, step, action.t_index, tag, stream.cond_version,
                              extras_mask(k for k in routed if k > 0), timestep_dtype=timestep.dtype, total=self.total,
                              cache=CACHE_NONE if skip is None else CACHE_SKIP if skip else CACHE_COMPUTE)
        self.phases.mark("schedule")
        if self.worker_ranks:
            self._tell_workers(message, timestep, tree, extras=routed)
            self.phases.mark("step message")
        before = self.traffic.activation
        self.calls_with_extras += 0 in routed
        out = self._compute(stream, timestep, self.adapter.input_state(call.sample), routed.get(0), skip=skip)
        self._send_on(stream, action, out)
        self.phases.mark("send")
        if "recv_eps" in stream.links:
            eps = stream.links["recv_eps"].irecv().wait()[0]
            self.phases.mark("wait for eps")
        else:
            eps = self.adapter.prediction(out)
        self._count_step(before)
        stream.last_eps = eps
        self.phases.mark("schedule")
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

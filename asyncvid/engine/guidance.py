"""Classifier-free-guidance parallelism: several stage groups, one per part of the guidance batch.

The guidance branches of a denoiser call (unconditional and conditional halves, PAG's perturbed
branch) are independent computations, so cutting the batch between stage groups is exact. Rank 0
(:class:`GuidanceFanout`) keeps the first part for its own group and hands each other group's
driver (:class:`GuidanceBranch`, stage 0 of that group) its part; each group runs its own stage
pipeline (``StageRuntime``, with its own stale states); rank 0 joins the predictions in batch order.

What travels to a group driver, point to point, with the step protocol's messages: the pass's
timesteps and the part's module setup at ``BEGIN``; per executed call a step message, the part of
the latent, the part of the conditioning when its content changed, the part of the extras. Back
comes the part's prediction. Both directions are counted as ``guidance`` bytes.

Families whose pipelines make one call per guidance branch (``StageAdapter.guidance_in_calls``:
a conditional call, then an unconditional one, with the same latent and timestep) are routed
by call instead: call tag 0 runs on rank 0's group, call tag 1 on the other. The pipeline makes the
second call only after the first returned, so rank 0 starts it early: at the first call of a step it
sends the other group the step with that call's latent and timestep and the conditioning that
group already holds for tag 1, then computes its own call. When the second call arrives it must
match (same latent, timestep and conditioning, by content); then its prediction is what the group
computed meanwhile. The first step of a pass, before tag 1's conditioning is known, runs the two
calls one after the other.
"""

from __future__ import annotations

from typing import Any

import torch

from ..distributed.protocol import FIELDS, Op, StepMessage
from ..distributed.topology import Topology
from ..distributed.transport import StateLink, link_tag, recv_message, recv_tree, send_message, send_tree
from ..distributed.watchdog import WATCH
from ..errors import AsyncVidError
from .adapter import DenoiserCall, StageAdapter
from .conditioning import ConditioningVersion
from .runtime import StageRuntime
from .schedule import REUSE


class _Peer:
    """Rank 0's view of one other group's driver."""

    def __init__(self, rank: int, runtime: StageRuntime):
        self.rank = rank
        topo = runtime.topo
        self.sample = StateLink(rank, runtime.device, runtime.traffic, "guidance", link_tag(0, "part"), topo.forward_group)
        self.eps = StateLink(rank, runtime.device, runtime.traffic, "guidance", link_tag(0, "part eps"), topo.back_group)
        self.versions: dict[int, ConditioningVersion] = {}
        self.conds: dict[int, Any] = {}  # call tag -> the conditioning it holds (routed calls)


class GuidanceFanout:
    """Rank 0 with ``cfg`` > 1: the same ``begin`` / ``drive`` / ``end_call`` as a ``StageRuntime``,
    each call cut into guidance parts over the stage groups."""

    def __init__(self, runtime: StageRuntime, adapter: StageAdapter, topo: Topology):
        self.runtime, self.adapter, self.degree = runtime, adapter, topo.cfg_degree
        self.peers = [_Peer(rank, runtime) for rank in topo.group_drivers()]
        self.shares: list[int] = [1] * self.degree
        self.last: dict[int, torch.Tensor] = {}  # merged prediction per call tag (reused by stride)
        self._sent: list = []
        self._early: tuple | None = None  # routed calls: (step, sample, timestep) sent ahead for call tag 1
        self.started_early = 0  # routed calls: second calls computed while the first one ran

    @property
    def total(self) -> int:
        return self.runtime.total

    @property
    def steps_executed(self) -> int:
        return self.runtime.steps_executed

    def _tell(self, peer: _Peer, message: StepMessage, timestep: torch.Tensor | None = None) -> None:
        send_message(message.encode(self.runtime.device, timestep), peer.rank, self.runtime.traffic, self._sent)

    def _drain(self) -> None:
        for work, _ in self._sent:
            work.wait()
        self._sent.clear()

    def begin(self, timesteps: torch.Tensor, setup: Any = None) -> None:
        with WATCH.watching(True, "at the start of a pass"):
            self._begin(timesteps, setup)

    def _begin(self, timesteps: torch.Tensor, setup: Any) -> None:
        self._drain()
        self.shares, setups = self.adapter.guidance_layout(setup, self.degree)
        timesteps = timesteps.detach().reshape(-1)
        for peer, part_setup in zip(self.peers, setups[1:]):
            peer.conds.clear()  # routed calls: a pass starts without guessing tag 1's conditioning
            peer.sample.reset()
            peer.eps.reset()
            self._tell(peer, StepMessage(Op.BEGIN, total=len(timesteps)))
            send_tree({"timesteps": timesteps, "setup": part_setup}, peer.rank, self.runtime.device,
                      self.runtime.traffic, "control")
        self.last.clear()
        self.runtime.local_setup = setups[0] if setups[0] != setup else None
        self.runtime.begin(timesteps, setups[0])

    def drive(self, step: int, call: DenoiserCall, tag: int = 0) -> torch.Tensor:
        with WATCH.watching(True, f"step {step + 1} of {self.total}"):  # the other groups' parts too
            return self._drive(step, call, tag)

    def _drive(self, step: int, call: DenoiserCall, tag: int) -> torch.Tensor:
        if self.runtime.timesteps is not None and 0 <= step < self.total and self.runtime.action(step).kind == REUSE:
            if tag not in self.last:
                raise AsyncVidError(f"step {step} reuses a prediction that call tag {tag} never made")
            return self.last[tag]
        if self.adapter.guidance_in_calls:
            eps = self._drive_routed(step, call, tag)
            self.last[tag] = eps
            return eps
        batch = call.sample.shape[0]
        if batch % sum(self.shares):
            raise AsyncVidError(
                f"cfg={self.degree} splits the guidance batch across stage groups, but this denoiser call has "
                f"batch {batch}, not a multiple of {sum(self.shares)} branches (guidance off: guidance_scale <= 1, "
                "or a guidance-distilled model); use cfg=1")
        parts = self.adapter.split_batch(call, self.shares)
        self._drain()
        for peer, part in zip(self.peers, parts[1:]):
            self._send_call(peer, step, part, tag)
        pending = [peer.eps.irecv() for peer in self.peers]
        first = self.runtime.drive(step, parts[0], tag)
        eps = self.adapter.merge_predictions([first] + [p.wait()[0] for p in pending])
        self.last[tag] = eps
        return eps

    def _send_call(self, peer: _Peer, step: int, call: DenoiserCall, tag: int) -> None:
        """A step message and the call's latent (its conditioning when that changed) to ``peer``."""
        version = peer.versions.setdefault(tag, ConditioningVersion())
        changed = version.update((tuple(call.sample.shape), call.cond))
        peer.conds[tag] = call.cond
        self._tell(peer, StepMessage(Op.STEP, step, -1, tag, version.version, int(bool(call.extras)),
                                     timestep_dtype=call.timestep.dtype), call.timestep)
        peer.sample.isend([call.sample])
        if changed:
            send_tree(call.cond, peer.rank, self.runtime.device, self.runtime.traffic)
        if call.extras:
            send_tree(call.extras, peer.rank, self.runtime.device, self.runtime.traffic, "extras")

    def _drive_routed(self, step: int, call: DenoiserCall, tag: int) -> torch.Tensor:
        """Whole calls over two groups: tag 0 here, tag 1 on the other group, started early."""
        if self.degree != 2 or tag > 1:
            raise AsyncVidError(f"this model's pipeline makes one denoiser call per guidance branch: cfg=2 runs the "
                                f"conditional and unconditional calls side by side (got cfg={self.degree}, call "
                                f"{tag + 1} of step {step})")
        peer = self.peers[0]
        if tag == 0:
            self._early = None
            if 1 in peer.conds and not call.extras:
                # the second call of this step will have this latent and timestep: start it now
                self._drain()
                self._send_call(peer, step, DenoiserCall(call.sample, call.timestep, peer.conds[1]), 1)
                self._early = (step, call.sample, call.timestep)
                self.started_early += 1
            return self.runtime.drive(step, call, 0)
        early, self._early = self._early, None
        if early is None:
            self._drain()
            self._send_call(peer, step, call, 1)
        else:
            same_cond = not peer.versions[1].update((tuple(call.sample.shape), call.cond))
            if not (early[0] == step and same_cond and not call.extras and torch.equal(early[1], call.sample)
                    and torch.equal(early[2], call.timestep)):
                raise AsyncVidError(f"cfg=2 over separate guidance calls: the second call of step {step} differs "
                                    "from the first in its latent or timestep, or its conditioning changed within "
                                    "the pass; use cfg=1 for this pipeline")
        return peer.eps.irecv().wait()[0]

    def _release(self, op: Op) -> None:
        with WATCH.watching(True, "at the end of a call"):
            self._release_groups(op)

    def _release_groups(self, op: Op) -> None:
        if self._early is not None:  # a second call started early that the pipeline never made
            self._early = None
            self.peers[0].eps.irecv().wait()
        self._drain()
        for peer in self.peers:
            peer.sample.wait()
            self._tell(peer, StepMessage(op))
        self._drain()

    def end_call(self) -> None:
        self.runtime.end_call()
        self._release(Op.END_CALL)

    def release_workers(self, op: Op = Op.SHUTDOWN) -> None:
        self.runtime.release_workers(op)
        self._release(op)


class GuidanceBranch:
    """Stage 0 of a CFG group other than the first: runs rank 0's guidance parts through its group."""

    def __init__(self, runtime: StageRuntime, adapter: StageAdapter):
        self.runtime, self.adapter = runtime, adapter
        device, traffic = runtime.device, runtime.traffic
        topo = runtime.topo
        self.sample = StateLink(0, device, traffic, "guidance", link_tag(0, "part"), topo.forward_group)
        self.eps = StateLink(0, device, traffic, "guidance", link_tag(0, "part eps"), topo.back_group)
        self.conds: dict[int, tuple[int, Any]] = {}  # call tag -> (version, conditioning part)

    @property
    def steps_executed(self) -> int:
        return self.runtime.steps_executed

    def follow(self) -> Op:
        """Serve one pipeline call of rank 0; returns ``END_CALL``, ``SHUTDOWN`` or ``UNDO``."""
        device = self.runtime.device
        idle, where = True, ""  # as StageRuntime.follow: unbounded between calls and after a pass's last step
        while True:
            with WATCH.watching(not idle, where):
                message = StepMessage.decode(recv_message(0, FIELDS, device))
            if message.op == Op.BEGIN:
                idle, where = False, "before the first step"
                with WATCH.watching(True, "at the start of a pass"):
                    control = recv_tree(0, device)
                self.sample.reset()
                self.eps.reset()
                if control["setup"] is not None:
                    self.adapter.apply_module_setup(control["setup"])
                self.runtime.begin(control["timesteps"], control["setup"])
                continue
            if message.op != Op.STEP:
                self.eps.wait()
                if message.op == Op.END_CALL:
                    self.runtime.end_call()
                else:
                    self.runtime.release_workers(message.op)
                return message.op
            idle = self.runtime.action(message.step).last_round
            where = f"after step {message.step + 1} of {self.runtime.total}"
            with WATCH.watching(True, f"step {message.step + 1} of {self.runtime.total}"):
                sample = self.sample.irecv().wait()[0]
            version, cond = self.conds.get(message.call_tag, (None, None))
            if version != message.cond_version:
                cond = recv_tree(0, device)
                self.conds[message.call_tag] = (message.cond_version, cond)
            extras = recv_tree(0, device) if message.extras else {}
            call = DenoiserCall(sample, message.timestep_tensor(device), cond, True, extras)
            self.eps.isend([self.runtime.drive(message.step, call, message.call_tag)])

"""The stage runtime: one instance per rank, executing that rank's stage for every denoising step.

The driver (global rank 0, stage 0) runs the diffusers pipeline; its UNet forward is replaced by
:meth:`StageRuntime.driver_forward`, which tells the other stages what to do with one small control
broadcast per executed step, runs stage 0 and returns the last stage's prediction. Workers sit in
:meth:`StageRuntime.serve_call`. Only carried states cross ranks, point to point:

* sequential (warm-up) step: stage k receives stage k-1's output of this step, runs, sends on;
* parallel step: stage k posts the receive for stage k-1's output of *this* step, runs on the
  output it received in the *previous* step, sends its own output on, then completes the receive.
  Compute and transfer overlap; the last stage's output (the prediction) goes to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..distributed.topology import Topology
from ..distributed.transport import Link, Traffic, broadcast_tree
from ..errors import AsyncVidError
from ..models.base import UNetAdapter
from .plan import SplitPlan
from .schedule import PARALLEL, REUSE, SEQUENTIAL, StepAction, step_action
from .units import Carried, run_units

OP_STEP, OP_END_CALL, OP_SHUTDOWN, OP_UNDO = 1.0, 2.0, 3.0, 4.0
_DTYPES = [torch.int64, torch.int32, torch.float32, torch.float64, torch.float16, torch.bfloat16]
_KINDS = [SEQUENTIAL, PARALLEL]


@dataclass(frozen=True)
class AsyncOptions:
    stride: int = 1
    warmup: int = 1
    time_shift: bool = False

    def validate(self, stages: int) -> None:
        if self.stride not in (1, 2):
            raise AsyncVidError(f"stride must be 1 or 2, got {self.stride}")
        if self.warmup < 0:
            raise AsyncVidError(f"warmup must be >= 0, got {self.warmup}")
        if stages > 1 and self.warmup < 1:
            raise AsyncVidError("warmup must be >= 1 with more than one stage: the first step seeds every stage's input")


@dataclass
class LoopPosition:
    """Where the pipeline's denoising loop is; maintained by the pipeline wrapper."""

    step: int = 0
    timesteps: torch.Tensor | None = None
    last_called_step: int = -1


class StageRuntime:
    def __init__(self, adapter: UNetAdapter, plan: SplitPlan, topo: Topology, device: torch.device, options: AsyncOptions):
        self.adapter, self.plan, self.topo, self.device, self.options = adapter, plan, topo, device, options
        a, b = plan.ranges[topo.stage]
        self.units = adapter.units()[a:b]
        self.traffic = Traffic()
        n, k = topo.stages, topo.stage
        self.n_stages, self.stage = n, k
        self.driver_rank = topo.stage_rank(0)
        self.recv_prev = Link(topo.stage_rank(k - 1), device, self.traffic) if k > 0 else None
        self.send_next = Link(topo.stage_rank(k + 1), device, self.traffic) if k < n - 1 else None
        self.send_eps = Link(self.driver_rank, device, self.traffic) if (n > 1 and k == n - 1) else None
        self.recv_eps = Link(topo.stage_rank(n - 1), device, self.traffic) if (n > 1 and k == 0) else None
        self._links = [l for l in (self.recv_prev, self.send_next, self.send_eps, self.recv_eps) if l]
        self.prev_input: Carried | None = None
        self.cond = None
        self.sample_shape = None
        self._last_eps = None
        self._cond_ids = None
        self.steps_executed = 0

    # ------------------------------------------------------------------ shared
    def _reset_loop(self) -> None:
        for link in self._links:
            link.reset()
        self.prev_input = None
        self._last_eps = None

    def _execute(self, action: StepAction, timestep: torch.Tensor, sample: torch.Tensor | None) -> Carried | None:
        """Run this rank's stage for one step; on the driver return the prediction state."""
        n, k = self.n_stages, self.stage
        before = self.traffic.activation
        ctx = self.adapter.context(self.sample_shape, timestep, self.cond)
        pending = None
        if k == 0:
            inp = self.adapter.input_state(sample)
        elif action.kind == SEQUENTIAL:
            inp = Carried.from_tensors(self.recv_prev.irecv().wait())
            self.prev_input = inp
        else:
            if self.prev_input is None:
                raise AsyncVidError("parallel step without a previous input: the loop must start with a warm-up step")
            inp = self.prev_input
            if not action.last_round:
                pending = self.recv_prev.irecv()
        out = run_units(self.units, ctx, inp)
        if k < n - 1 and (action.kind == SEQUENTIAL or not action.last_round):
            self.send_next.isend(out.tensors())
        if self.send_eps is not None:
            self.send_eps.isend(out.tensors())
        if pending is not None:
            self.prev_input = Carried.from_tensors(pending.wait())
        self.steps_executed += 1
        self.traffic.per_step.append(self.traffic.activation - before)
        if k != 0:
            return None
        return out if n == 1 else Carried.from_tensors(self.recv_eps.irecv().wait())

    def _control(self, values: list[float] | None = None) -> list[float]:
        msg = torch.zeros(8, dtype=torch.float64, device=self.device)
        if values is not None:
            msg[: len(values)] = torch.tensor(values, dtype=torch.float64)
            self.traffic.control += msg.numel() * 8
        if self.n_stages > 1:
            dist.broadcast(msg, src=self.driver_rank, group=self.topo.stage_group)
        return msg.tolist()

    def _share_cond(self, payload):
        if self.n_stages == 1:
            return payload
        return broadcast_tree(payload, self.driver_rank, self.topo.stage_group, self.device, self.traffic)

    # ------------------------------------------------------------------ driver
    def driver_forward(self, args: tuple, kwargs: dict, loop: LoopPosition):
        call = self.adapter.split_call(args, kwargs)
        timesteps = loop.timesteps
        total = len(timesteps)
        step = loop.step
        if step >= total:  # the pipeline restarted its loop (e.g. FreeInit): a fresh denoising pass
            step = loop.step = 0
        if step == loop.last_called_step:
            raise AsyncVidError(f"the UNet was called twice in denoising step {step}; pipelines that call the "
                                "denoiser more than once per step (split CFG) are not supported")
        loop.last_called_step = step
        action = step_action(step, total, self.options.warmup, self.options.stride, self.options.time_shift)
        if step == 0:
            self._reset_loop()
            self._cond_ids = None
        if action.kind == REUSE:
            return self.adapter.output(self._last_eps, call.return_dict)
        timestep = call.timestep
        if action.t_index != step:
            timestep = timesteps[action.t_index].reshape(1).to(device=timestep.device, dtype=timestep.dtype)
        cond_ids = (tuple(call.sample.shape), call.sample.dtype, _identity(call.cond))
        changed = cond_ids != self._cond_ids
        self._control([OP_STEP, step, float(timestep.item()), _DTYPES.index(timestep.dtype),
                       _KINDS.index(action.kind), float(action.last_round), float(changed)])
        if changed:
            payload = self._share_cond({"cond": call.cond, "shape": tuple(call.sample.shape)})
            self.cond, self.sample_shape, self._cond_ids = payload["cond"], torch.Size(payload["shape"]), cond_ids
        eps = self._execute(action, timestep, call.sample).h
        self._last_eps = eps
        return self.adapter.output(eps, call.return_dict)

    def end_call(self) -> None:
        for link in self._links:
            link.wait()
        self._control([OP_END_CALL])

    def shutdown(self) -> None:
        self._control([OP_SHUTDOWN])

    def gather_weights(self) -> None:
        """Undo the weight release: every stage sends its units' tensors to the driver, which
        re-materialises them. Collective: the driver announces it, workers answer from serve_call."""
        if self.topo.is_driver:
            self._control([OP_UNDO])
        unet = self.adapter.unet
        for i, unit in enumerate(self.adapter.units()):
            owner = self.topo.stage_rank(self.plan.stage_of(i))
            if owner == self.driver_rank:
                continue
            for name in unit.modules:
                module = unet.get_submodule(name)
                if self.topo.rank == owner:
                    for tensor in module.state_dict().values():
                        dist.send(tensor.contiguous(), dst=self.driver_rank)
                elif self.topo.is_driver:
                    module.to_empty(device=self.device)
                    for tensor in module.state_dict(keep_vars=True).values():
                        dist.recv(tensor.data, src=owner)

    # ------------------------------------------------------------------ workers
    def serve_call(self) -> bool:
        """Follow the driver through one pipeline call. Returns False when told to shut down."""
        while True:
            op, step, t_value, t_dtype, kind, last, changed, _ = self._control()
            if op == OP_END_CALL:
                for link in self._links:
                    link.wait()
                return True
            if op == OP_SHUTDOWN:
                return False
            if op == OP_UNDO:
                self.gather_weights()
                return False
            if int(step) == 0:
                self._reset_loop()
            if changed:
                payload = self._share_cond(None)
                self.cond, self.sample_shape = payload["cond"], torch.Size(payload["shape"])
            dtype = _DTYPES[int(t_dtype)]
            timestep = torch.tensor([t_value], dtype=torch.float64, device=self.device).to(dtype)
            self._execute(StepAction(_KINDS[int(kind)], -1, bool(last)), timestep, None)


def _identity(tree) -> tuple:
    """Object identities of the tensors in ``tree``: a changed tensor object means re-send."""
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(tree)
    return tuple(id(x) if torch.is_tensor(x) else repr(x) for x in leaves)

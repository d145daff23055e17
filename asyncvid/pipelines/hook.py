"""The one place where diffusers meets the engine.

On the driver, the denoiser's forward is replaced by :class:`StagesHook`, a named, removable
``diffusers.hooks.ModelHook`` (``asyncvid.async_stages``). Per denoiser call it does everything
diffusers-specific, once, and hands the engine tensors:

1. the model family's adapter turns ``(args, kwargs)`` into a :class:`DenoiserCall` (latent,
   timestep, conditioning);
2. the step comes from the pipeline loop (:class:`LoopPosition`, advanced by the loop's own
   ``callback_on_step_end``); several calls in one step get call tags 0, 1, ...;
3. at the first call of a denoising pass it reads the pass's timesteps from the scheduler
   (aligned to the first timestep the loop passes, so video-to-video's shortened schedule is right);
4. ``engine.drive`` returns the prediction tensor, which the adapter wraps as the model's output.

The engine is the rank's ``StageRuntime``, or with ``cfg`` > 1 the ``GuidanceFanout`` that cuts the
call into guidance parts over the stage groups; both take the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook

from ..engine.adapter import StageAdapter
from ..engine.guidance import GuidanceFanout
from ..engine.runtime import StageRuntime
from ..errors import AsyncVidError
from ..models.module_sync import first_difference, fixed_state

HOOK_NAME = "asyncvid.async_stages"


@dataclass
class LoopPosition:
    """Where the pipeline's denoising loop is. ``step`` is set from the loop's step-end callback."""

    step: int = 0
    calls_in_step: int = 0
    in_pass: bool = False

    def restart(self) -> None:
        self.step, self.calls_in_step, self.in_pass = 0, 0, False

    def step_ended(self, index: int) -> None:
        self.step, self.calls_in_step = index + 1, 0


def pass_timesteps(scheduler, first: torch.Tensor) -> torch.Tensor:
    """The timesteps of the pass that starts with ``first``: the scheduler's list from the first
    entry equal to ``first`` (pipelines such as video-to-video skip the leading ones)."""
    timesteps = scheduler.timesteps
    if timesteps is None or len(timesteps) == 0:
        raise AsyncVidError("the scheduler has no timesteps: call the pipeline, not the denoiser directly")
    flat = timesteps.reshape(-1)
    value = first.reshape(-1)[0].to(device=flat.device, dtype=flat.dtype)
    if bool(flat[0] == value):
        return timesteps
    hits = (flat == value).nonzero()
    if len(hits) == 0:
        raise AsyncVidError(f"the denoiser was called with timestep {float(value)}, which is not among the "
                            "scheduler's timesteps; asyncvid needs the loop to walk scheduler.timesteps")
    return timesteps[int(hits[0]):]


class StagesHook(ModelHook):
    """Replaces the denoiser's forward on the driver by the distributed stage runtime."""

    def __init__(self, engine: StageRuntime | GuidanceFanout, adapter: StageAdapter, loop: LoopPosition, pipe):
        super().__init__()
        self.engine, self.adapter, self.loop, self.pipe = engine, adapter, loop, pipe
        self.state = fixed_state(adapter.model)
        self.alone = dist.get_world_size() == 1  # one stage, one group: nothing to send anywhere

    def _check_module_state(self) -> None:
        """Attention processors, IP-Adapter scales and LoRA scales travel to the workers with each pass
        (``models/module_sync.py``); a change they cannot follow would silently differ: refuse it."""
        now = fixed_state(self.adapter.model)
        if now != self.state:
            raise AsyncVidError(
                "the denoiser's modules changed after parallelize in a way the other ranks cannot follow "
                f"({first_difference(self.state, now)}): block classes, attention processors holding weights "
                "and fused LoRA weights must be set before parallelize, on every rank")

    def new_forward(self, module, *args, **kwargs):
        call = self.adapter.split_call(args, kwargs)
        loop = self.loop
        if not loop.in_pass or (loop.calls_in_step == 0 and loop.step >= self.engine.total):
            # the first call of a pipeline call, or the loop started over (FreeInit runs it several times);
            # a refused module change leaves before the pass starts, so the workers stay in step
            # (alone: no other rank to keep in step, the modules are this rank's own business)
            if not self.alone:
                self._check_module_state()
            loop.step, loop.in_pass = 0, True
            setup = None if self.alone else self.adapter.module_setup()
            self.engine.begin(pass_timesteps(self.pipe.scheduler, call.timestep), setup)
        tag = loop.calls_in_step
        loop.calls_in_step += 1
        eps = self.engine.drive(loop.step, call, tag)
        return self.adapter.wrap_output(eps, call.return_dict)


def install(model: torch.nn.Module, hook: StagesHook) -> None:
    HookRegistry.check_if_exists_or_initialize(model).register_hook(hook, HOOK_NAME)


def remove(model: torch.nn.Module) -> None:
    HookRegistry.check_if_exists_or_initialize(model).remove_hook(HOOK_NAME)

"""``asyncvid.parallelize``: turn a loaded diffusers video pipeline into an AsyncDiff pipeline.

Called on every rank with the same arguments. The returned :class:`ParallelPipeline` is called like
the diffusers pipeline: on the driver (rank 0) it returns the pipeline's output; on the other ranks
the same call serves the driver's denoising loop and returns ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook

from ..distributed.env import default_device, ensure_process_group
from ..distributed.topology import Topology
from ..engine.plan import SplitPlan, balanced_ranges, ranges_from_names
from ..engine.profile import cut_bytes, unit_costs
from ..engine.runtime import AsyncOptions, LoopPosition, StageRuntime
from ..errors import AsyncVidError
from ..models import adapter_for

HOOK_NAME = "asyncvid.async_stages"
UNIT_ALIASES = {"conv_norm_out": "conv_out", "conv_act": "conv_out"}


@dataclass
class ProfileShape:
    """The input a split is balanced for: latent frames/height/width and batch (2 with CFG)."""

    frames: int = 16
    height: int | None = None  # latent pixels; default: the UNet's sample_size
    width: int | None = None
    batch: int = 2

    @classmethod
    def parse(cls, value) -> "ProfileShape":
        if value is None:
            return cls()
        if isinstance(value, ProfileShape):
            return value
        return cls(**value)


class _StagesHook(ModelHook):
    """Replaces the UNet forward on the driver by the distributed stage runtime."""

    def __init__(self, runtime: StageRuntime, loop: LoopPosition, pipe):
        super().__init__()
        self.runtime, self.loop, self.pipe = runtime, loop, pipe

    def new_forward(self, module, *args, **kwargs):
        self.loop.timesteps = self.pipe.scheduler.timesteps  # read per call: users may swap schedulers
        return self.runtime.driver_forward(args, kwargs, self.loop)


def make_plan(adapter, split, stages: int, topo: Topology, device, shape: ProfileShape, dtype) -> SplitPlan:
    names = [u.name for u in adapter.units()]
    unet = adapter.unet
    h = shape.height or unet.config.sample_size
    w = shape.width or unet.config.sample_size
    args, kwargs = adapter.example_inputs(shape.batch, shape.frames, h, w, torch.device("cpu"), dtype)
    sizes = cut_bytes(type(adapter), unet, args, kwargs)
    if isinstance(split, str):
        if split != "auto":
            raise AsyncVidError(f"split must be 'auto' or a list of module-name lists, got {split!r}")
        costs = None
        if stages == 1:
            ranges = [(0, len(names))]
        else:
            if len(names) < stages:
                raise AsyncVidError(f"cannot cut {len(names)} units into {stages} stages")
            box = [None]
            if topo.is_driver:
                ex_args, ex_kwargs = adapter.example_inputs(shape.batch, shape.frames, h, w, device, dtype)
                box = [unit_costs(adapter, ex_args, ex_kwargs)]
            if topo.world_size > 1:
                dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
            costs = box[0]
            ranges = balanced_ranges(costs, stages)
        plan = SplitPlan(names, ranges, costs, source=f"auto, profiled at batch {shape.batch} x {shape.frames} frames x {h}x{w} latents")
    else:
        if len(split) != stages:
            raise AsyncVidError(f"split lists {len(split)} stage(s) but stages={stages}")
        plan = SplitPlan(names, ranges_from_names(names, [list(s) for s in split], UNIT_ALIASES), source="explicit")
    plan.cut_bytes = [sizes[b - 1] for _, b in plan.ranges[:-1]]
    return plan


def release_weights(pipe, adapter, plan: SplitPlan, topo: Topology, device) -> None:
    """Keep only this rank's stage (plus shared modules) of the UNet; workers drop the other components."""
    unet = adapter.unet
    keep = set(adapter.shared_modules)
    for i, unit in enumerate(adapter.units()):
        if plan.stage_of(i) == topo.stage:
            keep.update(unit.modules)
    for i, unit in enumerate(adapter.units()):
        if plan.stage_of(i) != topo.stage:
            for name in unit.modules:
                if name not in keep:
                    unet.get_submodule(name).to("meta")
    for name in keep:
        module = _get(unet, name)
        if module is not None:
            module.to(device)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and component is not unet:
            component.to(device if topo.is_driver else "meta")


def _get(root, name):
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def materialized_parameters(module: torch.nn.Module) -> int:
    """Number of parameters this process really holds (meta parameters excluded)."""
    return sum(p.numel() for p in module.parameters() if not p.is_meta)


class ParallelPipeline:
    """A diffusers pipeline whose UNet runs as AsyncDiff stages across the process group."""

    def __init__(self, pipe, runtime: StageRuntime, topo: Topology, plan: SplitPlan):
        self.pipe, self.runtime, self.topo, self.plan = pipe, runtime, topo, plan
        self.loop = LoopPosition()
        self._closed = False
        if topo.is_driver:
            registry = HookRegistry.check_if_exists_or_initialize(pipe.unet)
            registry.register_hook(_StagesHook(runtime, self.loop, pipe), HOOK_NAME)

    @property
    def is_driver(self) -> bool:
        return self.topo.is_driver

    @property
    def traffic(self):
        return self.runtime.traffic

    def __getattr__(self, name):
        return getattr(self.__dict__["pipe"], name)

    def __call__(self, *args, **kwargs):
        if self._closed:
            raise AsyncVidError("this ParallelPipeline was closed")
        if not self.is_driver:
            if not self.runtime.serve_call():
                self._closed = True
            return None
        kwargs["callback_on_step_end"] = self._track_steps(kwargs)
        self.loop.step, self.loop.last_called_step = 0, -1
        failed_in_step = False
        try:
            return self.pipe(*args, **kwargs)
        except BaseException:  # also SIGTERM/Ctrl-C: a half-done step leaves nothing to end cleanly
            failed_in_step = self.loop.last_called_step >= 0 and self.runtime.steps_executed > 0
            raise
        finally:
            if not failed_in_step:
                self.runtime.end_call()

    def _track_steps(self, kwargs):
        """Step index from the pipeline loop: the loop's own callback reports each finished step."""
        user_cb = kwargs.get("callback_on_step_end")
        tensor_inputs = getattr(user_cb, "tensor_inputs", None)
        if tensor_inputs is not None:
            kwargs["callback_on_step_end_tensor_inputs"] = tensor_inputs
        loop = self.loop

        def on_step_end(p, i, t, cb_kwargs):
            loop.step = i + 1
            return user_cb(p, i, t, cb_kwargs) if user_cb is not None else {}

        return on_step_end

    def serve(self) -> None:
        """Workers: follow the driver's calls until it closes the pipeline."""
        while not self.is_driver and not self._closed:
            self(None)

    def close(self) -> None:
        """Driver: release the workers from :meth:`serve`."""
        if self.is_driver and not self._closed:
            self.runtime.shutdown()
        self._closed = True

    def undo(self):
        """Driver: give back a plain single-process diffusers pipeline (hook removed, every stage's
        weights fetched back from their ranks); workers leave :meth:`serve`. Returns the pipeline
        on the driver and ``None`` elsewhere."""
        if not self.is_driver:
            self.serve()
            return None
        if self._closed:
            raise AsyncVidError("this ParallelPipeline was closed")
        self.runtime.gather_weights()
        HookRegistry.check_if_exists_or_initialize(self.pipe.unet).remove_hook(HOOK_NAME)
        self._closed = True
        return self.pipe

    def describe(self) -> str:
        return self.plan.describe()


def parallelize(pipe, stages: int = 2, stride: int = 1, warmup: int = 1, split="auto", time_shift: bool = False,
                profile_shape=None, release: bool = True) -> ParallelPipeline:
    """Run ``pipe``'s UNet as ``stages`` AsyncDiff stages, one per rank of the process group.

    Every rank calls this with the same arguments (the group is created from the torchrun /
    accelerate / srun environment if needed). ``split`` is ``"auto"`` (balanced from a profile of
    ``profile_shape``) or a list, per stage, of module names relative to the UNet.
    """
    options = AsyncOptions(stride=stride, warmup=warmup, time_shift=time_shift)
    options.validate(stages)
    ensure_process_group()
    topo = Topology.create(stages)
    device = default_device()
    adapter = adapter_for(pipe.unet)
    plan = make_plan(adapter, split, stages, topo, device, ProfileShape.parse(profile_shape), pipe.unet.dtype)
    return assemble(pipe, adapter, plan, topo, device, options, release)


def assemble(pipe, adapter, plan, topo, device, options: AsyncOptions, release: bool = True) -> ParallelPipeline:
    """Wire a planned pipeline: release foreign weights, build this rank's runtime, hook the driver."""
    if release:
        release_weights(pipe, adapter, plan, topo, device)
    runtime = StageRuntime(adapter, plan, topo, device, options)
    return ParallelPipeline(pipe, runtime, topo, plan)

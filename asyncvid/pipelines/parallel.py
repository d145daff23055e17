"""``asyncvid.parallelize``: turn a loaded diffusers video pipeline into an AsyncDiff pipeline.

Called on every rank with the same arguments. The returned :class:`ParallelPipeline` is called like
the diffusers pipeline: on the driver (rank 0) it returns the pipeline's output; on the other ranks
the same call serves the driver's denoising loop and returns ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..distributed import peer_errors
from ..distributed.env import default_device, ensure_process_group, note_peers
from ..distributed.protocol import Op
from ..distributed.topology import Topology
from ..distributed.watchdog import WATCH, floor_from
from ..engine.guidance import GuidanceBranch, GuidanceFanout
from ..engine.runtime import StageRuntime
from ..engine.forecast import Forecast
from ..engine.schedule import AsyncOptions
from ..engine.simulate import CostTable
from ..engine.split import SplitPlan, balanced_ranges, ranges_from_names
from ..errors import AsyncVidError
from ..models import adapter_for
from ..optional import optional
from ..planner.profile import cut_bytes, unit_costs
from . import hook
from .compat import Stacked, compile_stage, compute_dtype, denoisers_of, prepare_denoisers
from .driver_work import driver_seconds
from .experts import assemble_experts
from .placement import gather_weights, release_weights

UNIT_ALIASES = {"conv_norm_out": "conv_out", "conv_act": "conv_out", "norm_out": "proj_out"}
DEFAULT_LATENT = 64  # latent pixels when neither the caller nor the model's config gives a size


@dataclass
class ProfileShape:
    """The input a split is balanced for: latent frames/height/width and batch (2 with CFG)."""

    frames: int = 16
    height: int | None = None  # latent pixels; default: the UNet's sample_size
    width: int | None = None
    batch: int = 2

    def latent_size(self, sample_size) -> tuple[int, int]:
        """Height and width in latent pixels: given ones, else the model's ``sample_size`` (an int, a
        pair, or None as in diffusers' default SVD config, which falls back to 64)."""
        if isinstance(sample_size, (list, tuple)):
            default_h, default_w = int(sample_size[0]), int(sample_size[-1])
        else:
            default_h = default_w = int(sample_size) if sample_size else DEFAULT_LATENT
        return self.height or default_h, self.width or default_w

    @classmethod
    def parse(cls, value, cfg: int = 1) -> "ProfileShape":
        """From None (the default), a ProfileShape or a dict; with ``cfg`` groups each stage runs
        a ``cfg``-th of the default guidance batch."""
        if value is None:
            return cls(batch=max(1, cls.batch // cfg))
        if isinstance(value, ProfileShape):
            return value
        return cls(**value)


def choose_split(adapter, split, stages: int, topo: Topology, device, shape: ProfileShape, dtype,
                 driver_work=None, simulate: CostTable | None = None) -> SplitPlan:
    """The split from explicit module names, or ``"auto"``: balanced from a unit profile taken on the
    driver and shared with every rank (so all ranks cut the same way). ``driver_work(batch, frames,
    h, w, device, dtype)`` gives the seconds the driver spends per call besides its units (the
    pipeline's own step, a ControlNet) and what they are: stage 0's cost includes them."""
    names = [u.name for u in adapter.units()]
    model = adapter.model
    h, w = shape.latent_size(getattr(model.config, "sample_size", None))
    if simulate is not None and len(simulate.seconds) != len(names):
        raise AsyncVidError(f"the cost table has {len(simulate.seconds)} units, {type(model).__name__} {len(names)}")
    sizes = cut_bytes(type(adapter), model, adapter.example_call(shape.batch, shape.frames, h, w, torch.device("cpu"), dtype))
    if isinstance(split, str):
        if split != "auto":
            raise AsyncVidError(f"split must be 'auto' or a list of module-name lists, got {split!r}")
        costs, extra, what = None, 0.0, ""
        if stages == 1:
            ranges = [(0, len(names))]
        else:
            if len(names) < stages:
                raise AsyncVidError(f"cannot cut {len(names)} units into {stages} stages")
            box = [None]
            if topo.is_driver:  # optional measurements: on an error, a safe estimate (workers wait in the broadcast)
                extra = optional("the driver's own work per step", lambda: driver_work(
                    shape.batch, shape.frames, h, w, device, dtype), (0.0, ""), "the split counts none") \
                    if driver_work else (0.0, "")
                costs = simulate.for_batch(shape.batch) if simulate is not None else optional(
                    "the units' costs", lambda: unit_costs(adapter, adapter.example_call(
                        shape.batch, shape.frames, h, w, device, dtype)), lambda: parameter_costs(adapter),
                    "the split balances parameter counts")
                box = [(costs, extra)]
            if topo.world_size > 1:
                dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
            costs, (extra, what) = box[0]
            ranges = balanced_ranges(costs, stages, first_extra=extra)
        source = (f"auto, from the simulated devices' cost table ({simulate.source}) at batch {shape.batch}"
                  if simulate is not None else
                  f"auto, profiled at batch {shape.batch} x {shape.frames} frames x {h}x{w} latents")
        if costs and extra:
            source += f"; the driver's own work per call ({what}) counted on stage 0"
        plan = SplitPlan(names, ranges, costs, source=source)
    else:
        if len(split) != stages:
            raise AsyncVidError(f"split lists {len(split)} stage(s) but stages={stages}")
        plan = SplitPlan(names, ranges_from_names(names, [list(s) for s in split], UNIT_ALIASES), source="explicit")
    plan.cut_bytes = [sizes[b - 1] for _, b in plan.ranges[:-1]]
    return plan


def parameter_costs(adapter) -> list[float]:
    """A unit's parameter count as its cost: the estimate when timing the units failed."""
    model = adapter.model
    return [float(max(1, sum(p.numel() for name in unit.modules for p in model.get_submodule(name).parameters())))
            for unit in adapter.units()]


class ParallelPipeline:
    """A diffusers pipeline whose denoiser runs as AsyncDiff stages across the process group."""

    def __init__(self, pipe, adapter, runtime: StageRuntime, topo: Topology, plan: SplitPlan):
        self.pipe, self.adapter, self.runtime, self.topo, self.plan = pipe, adapter, runtime, topo, plan
        self.loop = hook.LoopPosition()
        self._closed = False
        self.stacked = Stacked()  # what parallelize took over from the pipeline (``compat.py``)
        # what this rank's calls go through: its stage runtime, or the guidance layer over the CFG groups
        self.engine = runtime
        if topo.cfg_degree > 1 and topo.is_driver:
            self.engine = GuidanceFanout(runtime, adapter, topo)
        elif topo.is_group_driver:
            self.engine = GuidanceBranch(runtime, adapter)
        if topo.is_driver:
            hook.install(adapter.model, hook.StagesHook(self.engine, adapter, self.loop, pipe))

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
            try:
                op = self.engine.follow()
            except BaseException as exc:  # the driver waits on this rank: tell it why it stops
                peer_errors.publish(exc)
                raise
            if op == Op.UNDO and self.topo.cfg_index == 0:  # the other CFG groups hold copies
                gather_weights(self.adapter, self.plan, self.topo, self.runtime.device)
            if op != Op.END_CALL:
                self._closed = True
            return None
        kwargs["callback_on_step_end"] = self._track_steps(kwargs)
        self.loop.restart()
        failed_in_step = False
        try:
            return self.pipe(*args, **kwargs)
        except BaseException as exc:  # also SIGTERM/Ctrl-C: a half-done step leaves nothing to end cleanly
            failed_in_step = self.loop.in_pass and self.runtime.steps_executed > 0
            if failed_in_step:  # the workers are left mid-call: tell them why
                peer_errors.publish(exc)
            raise
        finally:
            if not failed_in_step:
                self.engine.end_call()

    def _track_steps(self, kwargs):
        """Step index from the pipeline loop: the loop's own callback reports each finished step."""
        user_cb = kwargs.get("callback_on_step_end")
        tensor_inputs = getattr(user_cb, "tensor_inputs", None)
        if tensor_inputs is not None:
            kwargs["callback_on_step_end_tensor_inputs"] = tensor_inputs
        loop = self.loop

        def on_step_end(p, i, t, cb_kwargs):
            loop.step_ended(i)
            return user_cb(p, i, t, cb_kwargs) if user_cb is not None else {}

        return on_step_end

    def serve(self) -> None:
        """Workers: follow the driver's calls until it closes the pipeline."""
        while not self.is_driver and not self._closed:
            self(None)

    def close(self) -> None:
        """Driver: release the workers from :meth:`serve`."""
        if self.is_driver and not self._closed:
            self.engine.release_workers(Op.SHUTDOWN)
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
        self.engine.release_workers(Op.UNDO)
        gather_weights(self.adapter, self.plan, self.topo, self.runtime.device)
        hook.remove(self.adapter.model)
        self.stacked.restore(self.pipe)
        self._closed = True
        return self.pipe

    def describe(self) -> str:
        text = self.plan.describe()
        if self.topo.cfg_degree > 1:
            text += (f"\n{self.topo.cfg_degree} CFG groups of {self.topo.stages} stage(s) each (ranks "
                     f"{', '.join(f'{c * self.topo.stages}-{(c + 1) * self.topo.stages - 1}' for c in range(self.topo.cfg_degree))}"
                     "), one per part of the guidance batch")
        return text


def parallelize(pipe, stages: int = 2, stride: int = 1, warmup: int = 1, split="auto", time_shift: bool = False,
                profile_shape=None, release: bool = True, cfg: int = 1, rank_timeout: float | None = None,
                simulate: CostTable | None = None, forecast="none", compile=None) -> ParallelPipeline:
    """Run ``pipe``'s denoiser as ``stages`` AsyncDiff stages, one per rank of the process group.

    Every rank calls this with the same arguments (the group is created from the torchrun /
    accelerate / srun environment if needed). ``split`` is ``"auto"`` (balanced from a profile of
    ``profile_shape``) or a list, per stage, of module names relative to the denoiser. ``cfg`` > 1
    runs that many stage groups side by side (``stages x cfg`` ranks), each on its part of the
    guidance batch: exact, since the guidance branches are independent (``engine/guidance.py``).
    ``simulate`` (a :class:`~asyncvid.engine.simulate.CostTable`) runs every rank as a simulated
    device: each unit waits its table cost instead of computing (benchmarks of the engine's own
    cost); the auto split is then balanced on the table.

    ``forecast`` (``"none"``, ``"linear"``, ``"quadratic"``, ``"damped[:GAIN]"``): a stage's stale input
    is extrapolated along the timesteps from the states it received before, instead of used as is
    (``engine/forecast.py``; no extra traffic). ``"none"`` is AsyncDiff's recurrence.

    ``compile`` (True or torch.compile's keyword arguments): each rank compiles its own stage's blocks;
    a denoiser given compiled is unwrapped and compiled so. What else the pipeline carries (diffusers'
    caches, offloading, quantization) is taken over or refused in one line: ``pipelines/compat.py``.

    ``rank_timeout`` (seconds; default ``$ASYNCVID_RANK_TIMEOUT`` or 60, 0: off) bounds how long a rank
    waits on a peer inside a call: past ``max(rank_timeout, 20 x the slowest step seen)`` every rank
    stops with one line naming the peer (``distributed/watchdog.py``; the first step gets 5 x
    rank_timeout). Waits between calls are not bounded.
    """
    WATCH.configure(floor_from(rank_timeout))
    stacked = prepare_denoisers(pipe, compile)  # on every rank, before any collective call
    options = AsyncOptions(stride=stride, warmup=warmup, time_shift=time_shift, forecast=Forecast.parse(forecast))
    options.validate(stages)
    denoisers = denoisers_of(pipe)
    if len(denoisers) > 1 and cfg > 1:
        raise AsyncVidError("cfg > 1 is not supported with two experts (transformer and transformer_2) yet")
    ensure_process_group()
    note_peers()
    peer_errors.install_excepthook()
    topo = Topology.create(stages, cfg)
    device = default_device()
    adapters = [adapter_for(d) for d in denoisers]
    adapter = adapters[0]
    shape = ProfileShape.parse(profile_shape, cfg)
    plan = choose_split(adapter, split, stages, topo, device, shape, compute_dtype(denoisers[0]),
                        driver_work=lambda *shape: driver_seconds(pipe, adapter, *shape), simulate=simulate)
    options = stacked.options_for(options, adapter, plan, "unet" if getattr(pipe, "unet", None) is not None else "transformer")
    if len(adapters) > 1:  # both experts on the same split, one runtime each
        if simulate is not None:
            raise AsyncVidError("simulated devices are not supported with two experts (transformer and transformer_2)")
        ppipe = assemble_experts(pipe, adapters, plan, topo, device, options, release)
    else:
        ppipe = assemble(pipe, adapter, plan, topo, device, options, release, simulate)
    for each in adapters:
        compile_stage(each, plan, topo.stage, stacked.compile)
    ppipe.stacked = stacked
    return ppipe


def assemble(pipe, adapter, plan, topo, device, options: AsyncOptions, release: bool = True,
             simulate: CostTable | None = None) -> ParallelPipeline:
    """Wire a planned pipeline: release foreign weights, build this rank's runtime, hook the driver."""
    if release:
        release_weights(pipe, adapter, plan, topo, device)
    runtime = StageRuntime(adapter, plan, topo, device, options, simulate)
    return ParallelPipeline(pipe, adapter, runtime, topo, plan)

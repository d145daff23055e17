"""A model family of the tests' own, to drive the engine with tensors and nothing else.

Units are 1x1 convolutions; the first pushes its output as a skip that the last one pops, so cuts
carry skips as a UNet's do. The per-step context is a timestep-dependent scale plus the
conditioning's ``bias`` (a (C,) tensor). A toy "pipeline" loop with one or several denoiser calls
per step (call tags) runs on the engine's driver API; :func:`reference` is the same recurrence
written out in one process, independently of runtime and transport.
"""

from __future__ import annotations

import torch

from asyncvid.engine.adapter import DenoiserCall, StageAdapter
from asyncvid.engine.runtime import StageRuntime
from asyncvid.engine.schedule import AsyncOptions
from asyncvid.engine.split import SplitPlan, balanced_ranges
from asyncvid.engine.units import Carried, Unit

CHANNELS, UNITS = 4, 6
GRAD_MODES: set[bool] = set()  # whether autograd was recording while a unit ran, in this process


class ToyModel(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = torch.nn.ModuleList(torch.nn.Conv2d(CHANNELS, CHANNELS, 1) for _ in range(UNITS))


class ToyAdapter(StageAdapter):
    model_class = ToyModel

    def units(self):
        out = []
        for i, layer in enumerate(self.model.layers):
            out.append(Unit(f"layers.{i}", (f"layers.{i}",), self._unit(layer, i)))
        return out

    @staticmethod
    def _unit(layer, i):
        def run(ctx, st: Carried) -> Carried:
            GRAD_MODES.add(torch.is_grad_enabled())
            h = layer(st.h) * ctx["scale"] + ctx["bias"].view(1, -1, 1, 1)
            if i == 0:
                return Carried(torch.tanh(h), (h,))
            if i == UNITS - 1:
                return Carried(h + st.skips[-1], st.skips[:-1])
            return Carried(torch.tanh(h), st.skips)

        return run

    def context(self, sample_shape, timestep, cond):
        return {"scale": 1.0 + timestep.to(torch.float32).reshape(()) / 1000.0, "bias": cond["bias"]}


TIMESTEPS = torch.tensor([999, 800, 600, 400, 200, 100, 50, 10], dtype=torch.int64)


def cond_for(step: int, tag: int) -> dict:
    """Conditioning that is rebuilt with new values every step (same shape, fresh tensor)."""
    return {"bias": torch.full((CHANNELS,), 0.01 * (step + 1) * (1 if tag == 0 else -1))}


def initial(tag: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + tag)
    return torch.randn(2, CHANNELS, 5, 5, generator=g)


def toy_loop(denoise, steps: int, tags: int, rebuild_cond: bool) -> list[torch.Tensor]:
    """The 'pipeline': per step, one denoiser call per tag, then an Euler-like update."""
    xs = [initial(tag) for tag in range(tags)]
    fixed = [cond_for(0, tag) for tag in range(tags)]
    for step in range(steps):
        for tag in range(tags):
            cond = cond_for(step, tag) if rebuild_cond else fixed[tag]
            eps = denoise(step, tag, DenoiserCall(xs[tag], TIMESTEPS[step].reshape(1), cond))
            xs[tag] = xs[tag] - 0.1 * eps
    return xs


def run_engine(stages: int, options: dict, steps: int, tags: int, rebuild_cond: bool, split=None, simulate=None):
    """Every rank: the runtime over the process group; rank 0 returns the final latents and traffic."""
    import torch.distributed as dist

    from asyncvid.distributed.env import default_device
    from asyncvid.distributed.topology import Topology

    topo = Topology.create(stages)
    adapter = ToyAdapter(ToyModel())
    names = [u.name for u in adapter.units()]
    plan = SplitPlan(names, split or balanced_ranges([1.0] * UNITS, stages))
    runtime = StageRuntime(adapter, plan, topo, default_device(), AsyncOptions(**options), simulate)
    # no ``torch.no_grad()`` here: the runtime must not record autograd graphs on its own (the toy's
    # parameters require grad, as a loaded model's do)
    if topo.is_driver:
        runtime.begin(TIMESTEPS[:steps])
        xs = toy_loop(lambda s, tag, call: runtime.drive(s, call, tag), steps, tags, rebuild_cond)
        runtime.end_call()
        runtime.release_workers()
    else:
        while runtime.follow().name == "END_CALL":
            pass
    stats = [None] * topo.world_size
    dist.all_gather_object(stats, {"traffic": runtime.traffic.snapshot(), "executed": runtime.steps_executed,
                                   "speculation": dict(runtime.speculation), "grad_modes": sorted(GRAD_MODES),
                                   "phases": dict(runtime.phases.totals), "rounds": runtime.phases.rounds})
    return {"xs": xs, "stats": stats, "ranges": plan.ranges} if topo.is_driver else None


def reference(ranges, options: dict, steps: int, tags: int, rebuild_cond: bool) -> list[torch.Tensor]:
    """AsyncDiff's recurrence in one process, per call tag, written from the method, not the runtime."""
    from asyncvid.engine.schedule import REUSE, SEQUENTIAL, step_action

    adapter = ToyAdapter(ToyModel())
    units = adapter.units()
    prev_outputs = {}  # tag -> stage outputs of the previous round
    last_eps = {}

    def stage(k, ctx, state):
        a, b = ranges[k]
        for unit in units[a:b]:
            state = unit.run(ctx, state)
        return state

    def denoise(step, tag, call):
        action = step_action(step, steps, options.get("warmup", 1), options.get("stride", 1))
        if action.kind == REUSE:
            return last_eps[tag]
        t = TIMESTEPS[action.t_index].reshape(1)
        ctx = adapter.context(call.sample.shape, t, call.cond)
        outs = [stage(0, ctx, Carried(call.sample))]
        for k in range(1, len(ranges)):
            source = outs[k - 1] if action.kind == SEQUENTIAL else prev_outputs[tag][k - 1]
            outs.append(stage(k, ctx, source))
        prev_outputs[tag] = outs
        last_eps[tag] = outs[-1].h
        return outs[-1].h

    with torch.no_grad():
        return toy_loop(denoise, steps, tags, rebuild_cond)


def run_cases(stages: int, cases: list[dict]):
    """Several engine runs in one group of ranks (spawning ranks costs seconds; the cases share them)."""
    return [run_engine(stages, **case) for case in cases]

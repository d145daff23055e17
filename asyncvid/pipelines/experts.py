"""Pipelines with two denoising experts (Wan 2.2 A14B: ``transformer`` for the high-noise steps,
``transformer_2`` after ``boundary_ratio``), as AsyncDiff stages.

Both experts are cut the same way (they share one architecture) and every rank holds its stage of
each. Each expert has its own stage runtime, and a pipeline call is two denoising passes, one per
expert, in order: the first expert's pass over the steps before the switch, the second's over the
rest, with a fresh warm-up (its first ``warmup`` steps sequential) since the stale stage outputs of
one expert mean nothing to the other. Workers follow the first expert's pass, then the second's;
the driver ends a pass when the pipeline switches to the next expert (or at the end of the call,
also a pass the call never used), so both always agree on which runtime the next message is for.
"""

from __future__ import annotations

import sys
from dataclasses import fields

from ..distributed import peer_errors
from ..distributed.protocol import Op
from ..distributed.transport import Traffic
from ..engine.runtime import StageRuntime
from ..errors import AsyncVidError
from . import hook
from .placement import gather_weights, release_weights

EXPERTS = ("transformer", "transformer_2")


class ExpertRouter:
    """Driver: which expert's pass is open, and where its steps start in the pipeline's loop."""

    def __init__(self, runtimes: list[StageRuntime], loops: list[hook.LoopPosition]):
        self.runtimes, self.loops = runtimes, loops
        self.restart()

    def restart(self) -> None:
        self.active, self.ended, self.offset, self.steps_done = None, set(), [0] * len(self.runtimes), 0

    def activate(self, index: int) -> None:
        if index == self.active:
            return
        if index in self.ended or (self.active is not None and index < self.active):
            raise AsyncVidError("the pipeline went back to an expert it had left: asyncvid runs the experts in order")
        self.end_before(index)
        self.active, self.offset[index] = index, self.steps_done
        self.loops[index].restart()

    def end_before(self, index: int) -> None:
        """End the passes of every expert before ``index`` (used or not), in order."""
        for k in range(index):
            if k not in self.ended:
                self.runtimes[k].end_call()
                self.ended.add(k)

    def step_ended(self, i: int) -> None:
        self.steps_done = i + 1
        if self.active is not None:
            self.loops[self.active].step_ended(i - self.offset[self.active])


class ExpertHook(hook.StagesHook):
    """The stage hook of one expert: opens that expert's pass (closing the previous one) first."""

    def __init__(self, engine, adapter, loop, pipe, router: ExpertRouter, index: int):
        super().__init__(engine, adapter, loop, pipe)
        self.router, self.index = router, index

    def new_forward(self, module, *args, **kwargs):
        self.router.activate(self.index)
        return super().new_forward(module, *args, **kwargs)


class ExpertsParallelPipeline:
    """A two-expert diffusers pipeline whose experts run as AsyncDiff stages across the process group
    (the interface of :class:`~asyncvid.pipelines.parallel.ParallelPipeline`)."""

    def __init__(self, pipe, adapters, runtimes: list[StageRuntime], topo, plan):
        self.pipe, self.adapters, self.runtimes, self.topo, self.plan = pipe, adapters, runtimes, topo, plan
        self.adapter, self.runtime, self.engine = adapters[0], runtimes[0], runtimes[0]
        self.loops = [hook.LoopPosition() for _ in runtimes]
        self.router = ExpertRouter(runtimes, self.loops)
        self._closed = False
        if topo.is_driver:
            for i, (adapter, runtime) in enumerate(zip(adapters, runtimes)):
                hook.install(adapter.model, ExpertHook(runtime, adapter, self.loops[i], pipe, self.router, i))

    @property
    def is_driver(self) -> bool:
        return self.topo.is_driver

    @property
    def traffic(self) -> Traffic:
        """Both experts' traffic together (steps in the order they ran)."""
        total = Traffic()
        for runtime in self.runtimes:
            for f in fields(Traffic):
                setattr(total, f.name, getattr(total, f.name) + getattr(runtime.traffic, f.name))
        return total

    def __getattr__(self, name):
        return getattr(self.__dict__["pipe"], name)

    def __call__(self, *args, **kwargs):
        if self._closed:
            raise AsyncVidError("this ParallelPipeline was closed")
        if not self.is_driver:
            for runtime in self.runtimes:
                try:
                    op = runtime.follow()
                except BaseException as exc:  # the driver waits on this rank: tell it why it stops
                    peer_errors.publish(exc)
                    raise
                if op != Op.END_CALL:
                    if op == Op.UNDO:
                        self._gather()
                    self._closed = True
                    break
            return None
        user_cb = kwargs.get("callback_on_step_end")
        if getattr(user_cb, "tensor_inputs", None) is not None:
            kwargs["callback_on_step_end_tensor_inputs"] = user_cb.tensor_inputs

        def on_step_end(p, i, t, cb_kwargs):
            self.router.step_ended(i)
            return user_cb(p, i, t, cb_kwargs) if user_cb is not None else {}

        kwargs["callback_on_step_end"] = on_step_end
        self.router.restart()
        failed_in_step = False
        try:
            return self.pipe(*args, **kwargs)
        except BaseException:  # a half-done step leaves nothing to end cleanly
            failed_in_step = any(loop.in_pass for loop in self.loops) and any(r.steps_executed for r in self.runtimes)
            if failed_in_step:
                peer_errors.publish(sys.exc_info()[1])
            raise
        finally:
            if not failed_in_step:
                self.router.end_before(len(self.runtimes))

    def _gather(self) -> None:
        for adapter in self.adapters:
            gather_weights(adapter, self.plan, self.topo, self.runtime.device)

    def serve(self) -> None:
        while not self.is_driver and not self._closed:
            self(None)

    def close(self) -> None:
        if self.is_driver and not self._closed:
            self.runtimes[0].release_workers(Op.SHUTDOWN)
        self._closed = True

    def undo(self):
        """Driver: the plain pipeline back (hooks removed, both experts' stages fetched home)."""
        if not self.is_driver:
            self.serve()
            return None
        if self._closed:
            raise AsyncVidError("this ParallelPipeline was closed")
        self.runtimes[0].release_workers(Op.UNDO)
        self._gather()
        for adapter in self.adapters:
            hook.remove(adapter.model)
        self._closed = True
        return self.pipe

    def describe(self) -> str:
        return self.plan.describe() + "\nthe same split for both experts (transformer, transformer_2)"


def assemble_experts(pipe, adapters, plan, topo, device, options, release: bool = True) -> ExpertsParallelPipeline:
    """Wire both experts on the same split: release foreign weights, one runtime each, hook the driver."""
    names = [[u.name for u in a.units()] for a in adapters]
    if names[0] != names[1]:
        raise AsyncVidError("the two experts have different blocks: asyncvid cuts both the same way")
    if release:
        models = [a.model for a in adapters]
        for adapter in adapters:
            release_weights(pipe, adapter, plan, topo, device, also_keep=models)
    runtimes = [StageRuntime(adapter, plan, topo, device, options) for adapter in adapters]
    return ExpertsParallelPipeline(pipe, adapters, runtimes, topo, plan)

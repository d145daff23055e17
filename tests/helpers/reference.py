"""A single-process reference of AsyncDiff's recurrence, independent of the transport and runtime.

Stages are unit ranges run in order; after warm-up, stage k at step s consumes what stage k-1
produced in the previous round. Per-call extra inputs (ControlNet residuals) are those of the
current call: stage k at step s gets the residuals the pipeline passed at step s, whatever round
its input comes from. Installed as the UNet's forward of an ordinary diffusers pipeline.
"""

from __future__ import annotations

import functools

from asyncvid.models import adapter_for


class AsyncReference:
    def __init__(self, pipe, ranges, warmup: int, stride: int = 1, time_shift: bool = False):
        self.pipe, self.ranges, self.warmup, self.stride, self.time_shift = pipe, ranges, warmup, stride, time_shift
        self.adapter = adapter_for(pipe.unet)
        self.units = self.adapter.units()
        self.step = 0
        self.outputs = None  # stage outputs of the previous round
        self.eps = None

    def _stage(self, k, call, t, state):
        ctx = self.adapter.context(call.sample.shape, t, {**call.cond, **call.extras})
        a, b = self.ranges[k]
        for unit in self.units[a:b]:
            state = unit.run(ctx, state)
        return state

    def forward(self, *args, **kwargs):
        call = self.adapter.split_call(args, kwargs)
        ts = self.pipe.scheduler.timesteps
        s, total, n = self.step, len(ts), len(self.ranges)
        self.step += 1
        t_of = lambda i: ts[i].reshape(1).to(call.timestep.dtype)  # noqa: E731
        if s < self.warmup:
            state, outs = self.adapter.input_state(call.sample), []
            for k in range(n):
                state = self._stage(k, call, call.timestep, state)
                outs.append(state)
        else:
            if self.stride == 2 and (s - self.warmup) % 2 == 1:
                return self.adapter.wrap_output(self.eps, call.return_dict)
            if self.stride == 1:
                t = t_of(s - 1) if self.time_shift else call.timestep
            else:
                i = s + 1 if s + 1 < total else s
                t = t_of(i - 1 if self.time_shift else i)
            outs = [self._stage(0, call, t, self.adapter.input_state(call.sample))]
            for k in range(1, n):
                outs.append(self._stage(k, call, t, self.outputs[k - 1]))
        self.outputs = outs
        self.eps = self.adapter.prediction(outs[-1])
        return self.adapter.wrap_output(self.eps, call.return_dict)

    def install(self):
        self.pipe.unet.forward = self.forward
        return self


def memo(fn):
    """Same arguments, same frames: the tests of a module share each reference computation (a
    pipeline built and run in this process) instead of repeating it. Deterministic on one thread, so
    a cached result is the one a new computation gives; callers only read it. Arguments known only by
    their address (an image, a callback) are not cached: a new object can take a freed one's address."""
    results = {}

    @functools.wraps(fn)
    def cached(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if " at 0x" in key:
            return fn(*args, **kwargs)
        if key not in results:
            results[key] = fn(*args, **kwargs)
        return results[key]

    return cached

"""A single-process reference of AsyncDiff's recurrence for pipelines that call the denoiser several
times per step (Wan: the prompt's call, then the negative prompt's), independent of asyncvid's
transport, runtime and hook.

Each call of a step is told apart by its position in the step (0, 1, ...); the step is the index of
the call's timestep in the scheduler's list. Every position keeps its OWN stale stage outputs: after
warm-up, stage k of call c at step s consumes what stage k-1 produced for call c in the previous
round, never what another call of the same step produced. Installed as the denoiser's forward of an
ordinary diffusers pipeline; for a pipeline with two experts, one reference per expert (``model``),
each with its own warm-up from its first step. ``one_stream=True`` is the wrong recurrence a runtime that mixed the
calls up would follow (every call consumes the stage outputs of the call before it): tests show it
gives another video.

``forecast=(order, gain)``: instead of the stale state as is, stage k extrapolates the states it was
given (its warm-up inputs and every earlier round's stage k-1 output, each at the timestep of the
step of the round that made it, whatever timestep that round was conditioned on) to the current step's: Newton's divided differences through the newest
``order + 1`` of them (fewer while fewer exist, and only through distinct timesteps), the first-order
term scaled by ``gain`` when ``order`` is 1.
"""

from __future__ import annotations

import torch

from asyncvid.models import adapter_for


class TaggedAsyncReference:
    def __init__(self, pipe, ranges, warmup: int, stride: int = 1, time_shift: bool = False, one_stream: bool = False,
                 model=None, forecast: tuple[int, float] = (0, 1.0)):
        self.order, self.gain = forecast
        self.given: dict[int, dict[int, list]] = {}  # per call position, per stage k >= 1: [(timestep, state)], newest first
        self.pipe, self.ranges, self.warmup, self.stride, self.time_shift = pipe, ranges, warmup, stride, time_shift
        self.one_stream = one_stream
        if model is None:
            model = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet
        self.model = model
        self.first = None  # the step of this model's first call: an expert's warm-up starts there
        self.adapter = adapter_for(self.model)
        self.units = self.adapter.units()
        self.last_step, self.tag = None, 0
        self.outputs: dict[int, list] = {}  # per call position: stage outputs of the previous round
        self.eps: dict[int, torch.Tensor] = {}
        self.calls: list[tuple[int, int]] = []  # (step, position) of every call, in order

    def _step_of(self, timestep: torch.Tensor) -> int:
        ts = self.pipe.scheduler.timesteps
        hits = (ts == timestep.reshape(-1)[0].to(ts.dtype)).nonzero()
        assert len(hits) == 1, "the reference needs distinct timesteps"
        return int(hits[0])

    def _stage(self, k, call, t, state):
        ctx = self.adapter.context(call.sample.shape, t, {**call.cond, **call.extras})
        a, b = self.ranges[k]
        for unit in self.units[a:b]:
            state = unit.run(ctx, state)
        return state

    def forward(self, *args, **kwargs):
        call = self.adapter.split_call(args, kwargs)
        g = self._step_of(call.timestep)  # the pipeline's step
        self.first = g if self.first is None else self.first
        self.tag = self.tag + 1 if g == self.last_step else 0
        self.last_step, c = g, self.tag
        self.calls.append((g, c))
        c = 0 if self.one_stream else c
        s = g - self.first  # the step within this model's pass
        ts, n = self.pipe.scheduler.timesteps, len(self.ranges)
        t_of = lambda i: ts[i].reshape(1).to(call.timestep.dtype)  # noqa: E731
        given = self.given.setdefault(c, {k: [] for k in range(1, n)})
        if s < self.warmup:
            state, outs = self.adapter.input_state(call.sample), []
            for k in range(n):
                if k:
                    given[k].insert(0, (float(ts[g]), state))
                state = self._stage(k, call, call.timestep, state)
                outs.append(state)
        else:
            if self.stride == 2 and (s - self.warmup) % 2 == 1:
                return self.adapter.wrap_output(self.eps[c], call.return_dict)
            if self.stride == 1:
                i = g - 1 if self.time_shift else g
            else:
                i = g + 1 if g + 1 < len(ts) else g
                i = i - 1 if self.time_shift else i
            t = t_of(i)
            outs = [self._stage(0, call, t, self.adapter.input_state(call.sample))]
            for k in range(1, n):
                outs.append(self._stage(k, call, t, self._forecast(given[k], float(ts[g]))))
            for k in range(1, n):
                given[k].insert(0, (float(ts[g]), outs[k - 1]))
        self.outputs[c] = outs
        self.eps[c] = self.adapter.prediction(outs[-1])
        return self.adapter.wrap_output(self.eps[c], call.return_dict)

    def _forecast(self, given: list, target: float):
        """Newton's form of the interpolating polynomial through the newest distinct-time states."""
        points = []
        for time, state in given:
            if len(points) == self.order + 1:
                break
            if all(time != p[0] for p in points):
                points.append((time, state))
            else:
                break  # a repeated timestep ends the usable run (no spacing to scale by)
        times = [p[0] for p in points]
        table = [[x for x in p[1].tensors()] for p in points]  # divided differences, column by column
        coeffs = [table[0]]
        column = table
        for level in range(1, len(points)):
            column = [[(a - b) / (times[j] - times[j + level]) for a, b in zip(column[j], column[j + 1])]
                      for j in range(len(column) - 1)]
            coeffs.append(column[0])
        out = [x.clone() for x in coeffs[0]]
        basis = 1.0
        for level in range(1, len(points)):
            basis *= target - times[level - 1]
            scale = basis * (self.gain if len(points) == 2 else 1.0)
            out = [o + scale * d for o, d in zip(out, coeffs[level])]
        return type(given[0][1]).from_tensors(out)

    def install(self):
        self.model.forward = self.forward
        return self

"""Forecast runs (``parallelize(..., forecast=...)``) of the tiny AnimateDiff and Wan pipelines, in
spawned ranks or, for the reference recurrence, in one process (``reference_tags.py``)."""

from __future__ import annotations

import torch

import asyncvid
from asyncvid.catalog.presets import build_animatediff_pipeline
from asyncvid.catalog.wan import build_wan_pipeline, wan_call
from reference_tags import TaggedAsyncReference

STEPS = 6  # enough parallel rounds after one warm-up step for a second-order forecast at stride 2
AD_CALL = dict(prompt="a red circle moving left", num_frames=8, height=32, width=32, num_inference_steps=STEPS,
               guidance_scale=7.5, output_type="np")


def prepared(family: str):
    if family == "animatediff":
        return build_animatediff_pipeline("tiny", seed=0), dict(AD_CALL)
    pipe = build_wan_pipeline("t2v", seed=0)
    return pipe, wan_call("t2v", pipe, steps=STEPS)


def _frames(pipe, call):
    return pipe(**call, generator=torch.Generator().manual_seed(0)).frames


def sequential(family: str):
    return _frames(*prepared(family))


def reference(family: str, ranges, warmup: int, forecast=(0, 1.0), **options):
    """The reference recurrence's frames; ``options``: stride, time_shift."""
    pipe, call = prepared(family)
    TaggedAsyncReference(pipe, ranges, warmup, forecast=forecast, **options).install()
    return _frames(pipe, call)


def render(family: str, options: dict):
    """Every rank: the family's pipeline parallelized with ``options``; rank 0 returns the frames and
    every rank's traffic and forecast memory."""
    pipe, call = prepared(family)
    ppipe = asyncvid.parallelize(pipe, **options)
    out = ppipe(**call, generator=torch.Generator().manual_seed(0))
    runtime = ppipe.runtime
    stats = {"ranges": ppipe.plan.ranges, "traffic": ppipe.traffic.snapshot(),
             "forecast_bytes": runtime.forecast_bytes(), "streams": len(runtime.streams),
             "kept": [len(s.history.points) for s in runtime.streams.values()],
             "cut_bytes": ppipe.plan.cut_bytes, "speculation": dict(runtime.speculation)}
    all_stats = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(all_stats, stats)
    return {"frames": out.frames, "stats": all_stats} if ppipe.is_driver else None

"""Functions run inside spawned ranks by the distributed tests (must be importable by name)."""

from __future__ import annotations

import torch

import asyncvid
from asyncvid.models.tiny import build_animatediff_pipeline
from asyncvid.pipelines.parallel import materialized_parameters

CALL = dict(prompt="a red circle moving left", num_frames=8, height=32, width=32, num_inference_steps=4,
            guidance_scale=7.5, output_type="np")


def render(options: dict, call: dict | None = None, calls: int = 1):
    """Every rank: build the same tiny pipeline, parallelize, render; rank 0 returns frames and stats."""
    pipe = build_animatediff_pipeline("tiny", seed=0)
    ppipe = asyncvid.parallelize(pipe, **options)
    kwargs = dict(CALL, **(call or {}))
    results = []
    for _ in range(calls):
        out = ppipe(**kwargs, generator=torch.Generator().manual_seed(0))
        if out is not None:
            results.append(out.frames)
    stats = {
        "unet_params_held": materialized_parameters(ppipe.unet),
        "traffic": ppipe.traffic.snapshot(),
        "plan": ppipe.plan.to_dict(),
    }
    all_stats = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(all_stats, stats)
    if ppipe.is_driver:
        return {"frames": results, "stats": all_stats}
    return None

"""The tiny Wan pipelines run in one process (sequential, reference recurrence) or in spawned ranks
(functions named by ``_workers.run_many``)."""

from __future__ import annotations

import torch

import asyncvid
from asyncvid.catalog.wan import build_wan_pipeline, wan_call
from asyncvid.pipelines.placement import materialized_parameters
from reference import memo
from reference_tags import TaggedAsyncReference

STEPS = 3
STEPS_OF = {"experts": 4}  # two steps per expert


def prepared(kind: str):
    """The pipeline and its call (made before any weight is released: image-to-video's prompts are
    encoded by the pipeline's own text encoder)."""
    pipe = build_wan_pipeline(kind, seed=0)
    return pipe, wan_call(kind, pipe, steps=STEPS_OF.get(kind, STEPS))


def _frames(pipe, call):
    return pipe(**call, generator=torch.Generator().manual_seed(0)).frames


@memo
def sequential(kind: str):
    pipe, call = prepared(kind)
    return _frames(pipe, call)


@memo
def reference(kind: str, ranges, warmup: int, one_stream: bool = False, **options):
    """Frames of the reference recurrence, and the (step, call position) of every denoiser call;
    ``options``: stride, time_shift."""
    pipe, call = prepared(kind)
    models = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
    refs = [TaggedAsyncReference(pipe, ranges, warmup, one_stream=one_stream, model=m, **options).install()
            for m in models]
    return _frames(pipe, call), [c for ref in refs for c in ref.calls]


def render(kind: str, options: dict):
    """Every rank: the same pipeline, parallelized; rank 0 returns the frames and every rank's stats."""
    pipe, call = prepared(kind)
    ppipe = asyncvid.parallelize(pipe, **options)
    out = ppipe(**call, generator=torch.Generator().manual_seed(0))
    experts = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]
    held = [materialized_parameters(m) for m in experts]
    stats = {"ranges": ppipe.plan.ranges, "held": held[0], "held_each": held,
             "traffic": ppipe.traffic.snapshot(), "steps_executed": ppipe.runtime.steps_executed,
             "streams": sorted(ppipe.runtime.streams), "plan_cut_bytes": ppipe.plan.cut_bytes,
             "steps_each": [r.steps_executed for r in getattr(ppipe, "runtimes", [ppipe.runtime])],
             "started_early": getattr(ppipe.engine, "started_early", None)}
    all_stats = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(all_stats, stats)
    return {"frames": out.frames, "stats": all_stats} if ppipe.is_driver else None


def render_then_undo(kind: str, options: dict):
    """Every rank: one parallel call, then ``undo()``; the driver renders again with the plain
    pipeline it got back (every stage's blocks fetched home). Returns both calls' frames on rank 0."""
    pipe, call = prepared(kind)
    ppipe = asyncvid.parallelize(pipe, **options)
    out = ppipe(**call, generator=torch.Generator().manual_seed(0))
    plain = ppipe.undo()
    if plain is None:
        return None
    return {"frames": [out.frames, _frames(plain, call)], "held": materialized_parameters(plain.transformer)}


def render_stage_only(kind: str, folder: str, options: dict):
    """Every rank: ``AsyncWanPipeline.from_pretrained`` on a saved folder (each rank reads only its
    stage); the driver renders the tests' call. Rank 0 returns the frames and every rank's stats."""
    from asyncvid.pipelines.wan_loading import AsyncWanPipeline

    ppipe = AsyncWanPipeline.from_pretrained(folder, **options)
    if ppipe.is_driver:
        out = ppipe(**wan_call(kind, ppipe.pipe, steps=STEPS), generator=torch.Generator().manual_seed(0))
    else:
        ppipe()
    stats = {"ranges": ppipe.plan.ranges, "held": materialized_parameters(ppipe.pipe.transformer)}
    all_stats = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(all_stats, stats)
    return {"frames": out.frames, "stats": all_stats} if ppipe.is_driver else None

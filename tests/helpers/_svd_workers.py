"""Stable Video Diffusion: functions run inside spawned ranks (importable by name) and the shared call."""

from __future__ import annotations

import numpy as np
import torch

import asyncvid
from asyncvid.catalog.presets import build_svd_pipeline
from asyncvid.catalog.quiet import svd_pipeline_class
from asyncvid.pipelines.svd import conditioning_image
from asyncvid.utils import one_line
from _workers import cut_bytes_for_call, gather_stats, run_many  # noqa: F401 - run_many: shared groups

# max_guidance_scale > 1: classifier-free guidance, the UNet sees a batch of 2 (uncond, cond)
CALL = dict(num_frames=8, height=32, width=32, num_inference_steps=4, decode_chunk_size=8, output_type="np",
            min_guidance_scale=1.0, max_guidance_scale=2.5)


def make_image(size=(32, 32), mode="RGB", seed=0):
    """A deterministic random PIL image of ``size`` (width, height) in ``mode``."""
    import PIL.Image

    w, h = size
    rgba = (np.random.RandomState(seed).rand(h, w, 4) * 255).astype("uint8")
    return PIL.Image.fromarray(rgba, "RGBA").convert(mode)


def load_pipeline(folder=None):
    if folder is None:
        return build_svd_pipeline("tiny", seed=0)
    pipe = svd_pipeline_class().from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_pipeline(pipe, image=None, call=None):
    kwargs = dict(CALL, **(call or {}))
    image = make_image() if image is None else image
    return pipe(image=image, **kwargs, generator=torch.Generator().manual_seed(0))


def render(options: dict, call: dict | None = None, folder: str | None = None):
    """Every rank: load the same pipeline, parallelize, render; rank 0 returns frames and every rank's stats."""
    ppipe = asyncvid.parallelize(load_pipeline(folder), **options)
    out = call_pipeline(ppipe, call=call)
    kwargs = dict(CALL, **(call or {}))
    all_stats = gather_stats(ppipe, cut_bytes_for_call(ppipe, kwargs))
    return {"frames": out.frames, "stats": all_stats} if ppipe.is_driver else None


def render_images(options: dict, images: list[dict]):
    """One parallel pipeline, several calls: each ``images`` entry is ``make_image`` kwargs plus
    ``convert`` (pass it through ``conditioning_image`` first). A failing call is recorded as the
    one line the launcher would print, and the pipeline keeps serving the next calls."""
    ppipe = asyncvid.parallelize(load_pipeline(), **options)
    results = []
    for spec in images:
        spec = dict(spec)
        convert = spec.pop("convert", False)
        image = make_image(**spec)
        if convert:
            image = conditioning_image(image)
        try:
            out = call_pipeline(ppipe, image)
        except Exception as exc:  # only the driver can fail here: the workers just serve
            results.append({"error": one_line(exc)})
            continue
        if out is not None:
            results.append({"frames": out.frames})
    return {"results": results, "ranges": ppipe.plan.ranges} if ppipe.is_driver else None


def render_from_folder(folder: str, options: dict):
    """Every rank loads only its stage of the SVD UNet from a saved folder, then renders."""
    from asyncvid.pipelines.placement import materialized_parameters
    from asyncvid.pipelines.svd_loading import AsyncStableVideoDiffusionPipeline

    ppipe = AsyncStableVideoDiffusionPipeline.from_pretrained(folder, **options)
    out = call_pipeline(ppipe)
    held = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(held, materialized_parameters(ppipe.unet))
    return {"frames": out.frames, "held": held, "ranges": ppipe.plan.ranges} if ppipe.is_driver else None

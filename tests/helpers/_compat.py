"""Composition with what users stack on a pipeline (``docs/compatibility.md``): functions run in spawned
ranks (importable by name) and their one-process counterparts."""

from __future__ import annotations

import torch

import asyncvid
from _workers import CALL, tiny_pipeline
from asyncvid.catalog.wan import build_wan_pipeline, wan_call

BACKEND = "aot_eager"  # dynamo's tracing and guards without inductor's C++ build: seconds, not minutes


def graphs() -> int:
    """Graphs dynamo compiled in this process so far (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compiled(kind: str, how: str):
    torch._dynamo.reset()
    if kind == "wan":
        pipe = build_wan_pipeline("t2v", seed=0)
        call = wan_call("t2v", pipe, steps=3)
        attr = "transformer"
    else:
        pipe, call, attr = tiny_pipeline(), dict(CALL, num_inference_steps=3), "unet"
    if how == "whole":
        setattr(pipe, attr, torch.compile(getattr(pipe, attr), backend=BACKEND))
    elif how == "repeated":
        getattr(pipe, attr).compile_repeated_blocks(backend=BACKEND)
    return pipe, call


def sequential(kind: str, how: str):
    """Frames of the untouched pipeline, compiled as ``how`` (whole / repeated / none), two calls."""
    pipe, call = _compiled(kind, how)
    out = [pipe(**call, generator=torch.Generator().manual_seed(0)).frames for _ in range(2)]
    return out


def staged(kind: str, how: str, options: dict):
    """Every rank: the same compiled pipeline through parallelize; rank 0 returns both calls' frames and,
    per rank, the graphs dynamo built during the first and the second call."""
    pipe, call = _compiled(kind, how)
    ppipe = asyncvid.parallelize(pipe, **options)
    frames, counts = [], [graphs()]
    for _ in range(2):
        out = ppipe(**call, generator=torch.Generator().manual_seed(0))
        counts.append(graphs())
        if out is not None:
            frames.append(out.frames)
    everyone = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(everyone, counts)
    return {"frames": frames, "graphs": everyone} if ppipe.is_driver else None


def with_cache(config_name: str):
    """Every rank: a Wan pipeline with one of diffusers' caches on, through parallelize."""
    import diffusers

    pipe = build_wan_pipeline("t2v", seed=0)
    pipe.transformer.enable_cache(getattr(diffusers, config_name)())
    asyncvid.parallelize(pipe, stages=2, warmup=8)


CACHE_STEPS = 6
THRESHOLD = 0.2  # the tiny random Wan skips 8 of its 12 calls' blocks at this threshold
FBC, MAG = ("fbc", THRESHOLD), ("mag", 0.06)


def cache_config(cache):
    """A cache of diffusers for the tiny Wan: ``("fbc", threshold)`` or ``("mag", threshold)`` (MagCache with
    flat ratios: after the first step it skips three calls in a row, then computes one)."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig

    name, threshold = cache
    if name == "mag":
        return MagCacheConfig(threshold=threshold, num_inference_steps=CACHE_STEPS, mag_ratios=[1.0] * CACHE_STEPS)
    return FirstBlockCacheConfig(threshold=threshold)


def cached_pipeline(cache):
    pipe = build_wan_pipeline("t2v", seed=0)
    call = wan_call("t2v", pipe, steps=CACHE_STEPS)
    if cache is not None:
        pipe.transformer.enable_cache(cache_config(cache))
    return pipe, call


def cached_sequential(cache):
    """Frames of the untouched Wan pipeline with one of diffusers' caches (None: without), and how
    many of its denoiser calls ran every block."""
    pipe, call = cached_pipeline(cache)
    ran = []
    if cache is not None:
        pipe.transformer.blocks[-1].ffn.register_forward_hook(lambda *a: ran.append(1))  # not run when skipped
    frames = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    return frames, len(ran)


def cached_staged(cache, options: dict):
    """Every rank: the same cached pipeline through parallelize; rank 0 returns frames, every rank's
    cache counts (skipped, computed) and whether undo gave the cache back to diffusers."""
    pipe, call = cached_pipeline(cache)
    ppipe = asyncvid.parallelize(pipe, **options)
    out = ppipe(**call, generator=torch.Generator().manual_seed(0))
    counts = ppipe.runtime.cache_counts()
    everyone = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(everyone, counts)
    undone = ppipe.undo()
    restored = undone.transformer.is_cache_enabled if undone is not None else None
    return {"frames": out.frames, "counts": everyone, "restored": restored} if out is not None else None


def lora_changes_after_parallelize(lora_dir: str, options: dict):
    """Every rank: a LoRA pipeline through parallelize; the driver renders, fuses the LoRA (refused in
    one line at the next call), unfuses, renders, loads a second LoRA (refused), deletes it, renders."""
    from _variants import call_of, prepared
    from asyncvid.utils import one_line

    ppipe = asyncvid.parallelize(prepared("t2v", "lora", lora_dir), **options)
    if not ppipe.is_driver:
        for _ in range(5):
            ppipe(None)
        return None
    call = call_of("t2v", "lora")

    def render():
        try:
            return ppipe(**call, generator=torch.Generator().manual_seed(0)).frames
        except Exception as exc:  # noqa: BLE001 - the line is the result
            return one_line(exc)

    pipe = ppipe.pipe
    out = {"first": render()}
    pipe.fuse_lora()
    out["fused"] = render()
    pipe.unfuse_lora()
    out["unfused"] = render()
    pipe.load_lora_weights(lora_dir, adapter_name="second")
    out["loaded"] = render()
    pipe.delete_adapters("second")
    out["deleted"] = render()
    return out


def layerwise_pipeline():
    """The tiny Wan pipeline with diffusers' layerwise casting: weights stored in float8, computed in float32."""
    pipe = build_wan_pipeline("t2v", seed=0)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    return pipe, wan_call("t2v", pipe, steps=3)


def layerwise_sequential():
    pipe, call = layerwise_pipeline()
    return pipe(**call, generator=torch.Generator().manual_seed(0)).frames


def layerwise_staged(options: dict):
    """Every rank: the layerwise-cast pipeline through parallelize; rank 0 returns the frames and every
    rank's bytes of transformer weights held (float8 storage: a quarter of float32)."""
    from asyncvid.pipelines.placement import materialized_parameters

    pipe, call = layerwise_pipeline()
    ppipe = asyncvid.parallelize(pipe, **options)
    out = ppipe(**call, generator=torch.Generator().manual_seed(0))
    held = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters() if p.device.type != "meta")
    everyone = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(everyone, (held, materialized_parameters(pipe.transformer)))
    return {"frames": out.frames, "held": everyone} if out is not None else None

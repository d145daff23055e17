"""Functions run inside spawned ranks by the distributed tests (must be importable by name)."""

from __future__ import annotations

import torch

import asyncvid
from asyncvid.catalog.presets import build_animatediff_pipeline
from asyncvid.pipelines.placement import materialized_parameters
from asyncvid.planner.profile import cut_bytes

CALL = dict(prompt="a red circle moving left", num_frames=8, height=32, width=32, num_inference_steps=4,
            guidance_scale=7.5, output_type="np")


def tiny_pipeline(dtype: str | None = None):
    """The tests' tiny AnimateDiff pipeline, cast to ``dtype`` (a torch dtype name) when given."""
    pipe = build_animatediff_pipeline("tiny", seed=0)
    return pipe.to(dtype=getattr(torch, dtype)) if dtype else pipe


def render(options: dict, call: dict | None = None, calls: int = 1, dtype: str | None = None):
    """Every rank: build the same tiny pipeline, parallelize, render; rank 0 returns frames and stats."""
    pipe = tiny_pipeline(dtype)
    ppipe = asyncvid.parallelize(pipe, **options)
    kwargs = dict(CALL, **(call or {}))
    results = []
    for _ in range(calls):
        out = ppipe(**kwargs, generator=torch.Generator().manual_seed(0))
        if out is not None:
            results.append(out.frames)
    all_stats = gather_stats(ppipe, cut_bytes_for_call(ppipe, kwargs))
    if ppipe.is_driver:
        return {"frames": results, "stats": all_stats}
    return None


def gather_stats(ppipe, cut_bytes_at_call_shape) -> list[dict]:
    """Every rank's parameters held, traffic and plan, gathered on every rank."""
    stats = {
        "unet_params_held": materialized_parameters(ppipe.unet),
        "traffic": ppipe.traffic.snapshot(),
        "plan": ppipe.plan.to_dict(),
        "ranges": ppipe.plan.ranges,
        "steps_executed": ppipe.runtime.steps_executed,
        "cut_bytes_at_call_shape": cut_bytes_at_call_shape,
    }
    all_stats = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(all_stats, stats)
    return all_stats


def render_calls(options: dict, calls: list[dict]):
    """Several calls of one parallel pipeline, with different shapes."""
    pipe = build_animatediff_pipeline("tiny", seed=0)
    ppipe = asyncvid.parallelize(pipe, **options)
    frames = []
    for call in calls:
        out = ppipe(**dict(CALL, **call), generator=torch.Generator().manual_seed(0))
        if out is not None:
            frames.append(out.frames)
    return {"frames": frames, "stats": [{"ranges": ppipe.plan.ranges}]} if ppipe.is_driver else None


def cut_bytes_for_call(ppipe, kwargs):
    """The plan's per-cut bytes recomputed (on the meta device) for this call's latent shape."""
    adapter = ppipe.runtime.adapter
    h, w = kwargs["height"] // ppipe.vae_scale_factor, kwargs["width"] // ppipe.vae_scale_factor
    call = adapter.example_call(2, kwargs["num_frames"], h, w, torch.device("cpu"), ppipe.unet.dtype)
    sizes = cut_bytes(type(adapter), ppipe.unet, call)
    return [sizes[b - 1] for _, b in ppipe.plan.ranges[:-1]]


def fail_mid_call(options: dict, failing_rank: int):
    """``failing_rank`` raises inside its stage at the third step of the call."""
    pipe = build_animatediff_pipeline("tiny", seed=0)
    ppipe = asyncvid.parallelize(pipe, **options)
    if ppipe.topo.rank == failing_rank:
        unit_name = ppipe.plan.stage_units(ppipe.topo.stage)[-1]
        module = ppipe.unet.get_submodule(unit_name)
        calls = {"n": 0}
        original = module.forward

        def boom(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected failure in " + unit_name)
            return original(*args, **kwargs)

        module.forward = boom
    ppipe(**CALL, generator=torch.Generator().manual_seed(0))
    return "finished"


def just_parallelize(options: dict):
    asyncvid.parallelize(build_animatediff_pipeline("tiny", seed=0), **options)
    return "ok"


def render_from_folder(folder: str, options: dict, call: dict | None = None):
    """Every rank loads only its stage from a saved folder, then renders."""
    from asyncvid.pipelines.animatediff import AsyncAnimateDiffPipeline

    ppipe = AsyncAnimateDiffPipeline.from_pretrained(folder, **options)
    held = materialized_parameters(ppipe.unet)
    out = ppipe(**dict(CALL, **(call or {})), generator=torch.Generator().manual_seed(0))
    all_held = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(all_held, held)
    return {"frames": out.frames, "held": all_held, "ranges": ppipe.plan.ranges} if ppipe.is_driver else None


def render_then_undo(options: dict):
    """Render in parallel, undo, render again with the plain pipeline on the driver."""
    ppipe = asyncvid.parallelize(build_animatediff_pipeline("tiny", seed=0), **options)
    ppipe(**CALL, generator=torch.Generator().manual_seed(0))
    plain = ppipe.undo()
    if plain is None:
        return None
    frames = plain(**CALL, generator=torch.Generator().manual_seed(0)).frames
    return {"frames": frames, "held": materialized_parameters(plain.unet)}


class ScalePromptEmbeds:
    """A step-end callback that hands the loop a new prompt-embedding tensor with new values every
    step (same shape: a freed tensor's id is likely to come back)."""

    tensor_inputs = ["prompt_embeds"]

    def __call__(self, pipe, i, t, kwargs):
        return {"prompt_embeds": kwargs["prompt_embeds"] * 0.7 + 0.05}

    def __repr__(self):  # stateless: equal by what it does (reference.memo keys on it)
        return "ScalePromptEmbeds()"


def run_many(jobs: list[tuple[str, tuple]]):
    """Several jobs in one group of ranks, one after the other: ``[(function name, args), ...]``, a name
    being a function of this module or ``module.function``. Spawning ranks that import torch and
    diffusers costs seconds; a test module's cases share them."""
    import importlib

    results = []
    for name, args in jobs:
        module, _, func = name.rpartition(".")
        fn = getattr(importlib.import_module(module), func) if module else globals()[name]
        results.append(fn(*args))
    return results


class UsersOwnProcessor:
    """An attention processor from the user's code: other ranks cannot rebuild it by name."""

    def __call__(self, attn, hidden_states, *args, **kwargs):
        from diffusers.models.attention_processor import AttnProcessor

        return AttnProcessor()(attn, hidden_states, *args, **kwargs)


def render_after_processor_change(options: dict):
    """The driver's denoiser gets an attention processor of the user's own class after parallelize;
    the call must fail with one line, and the pipeline must serve the next call."""
    from asyncvid.utils import one_line

    ppipe = asyncvid.parallelize(tiny_pipeline(), **options)
    result = {}
    if ppipe.is_driver:
        original = ppipe.unet.attn_processors
        ppipe.unet.set_attn_processor(UsersOwnProcessor())
        try:
            ppipe(**CALL, generator=torch.Generator().manual_seed(0))
        except Exception as exc:  # noqa: BLE001 - the line is the result
            result["error"] = one_line(exc)
        ppipe.unet.set_attn_processor(original)
        result["frames"] = ppipe(**CALL, generator=torch.Generator().manual_seed(0)).frames
    else:
        ppipe(None)
        ppipe(None)
    return result if ppipe.is_driver else None

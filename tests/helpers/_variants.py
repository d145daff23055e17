"""Every diffusers pipeline of these UNets, built tiny, with the module setups users add (LoRA,
IP-Adapter): run in one process (sequential, reference recurrence) or in spawned ranks."""

from __future__ import annotations

import torch

import asyncvid
from asyncvid.catalog.variants import build_variant, variant_call
from asyncvid.pipelines.placement import materialized_parameters
from reference import AsyncReference, memo

STEPS = 3
IMAGE_EMBED_DIM = 16


def lora_file(folder: str) -> str:
    """Write a random (non-zero) LoRA of the tiny AnimateDiff UNet's attention projections, motion
    modules included, with diffusers' ``save_lora_weights``; returns the folder."""
    from diffusers import AnimateDiffPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_variant("t2v")
    torch.manual_seed(7)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    AnimateDiffPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                          safe_serialization=True)
    return folder


def ip_adapter_state(unet) -> dict:
    """A random IP-Adapter checkpoint for ``unet`` in the layout ``_load_ip_adapter_weights`` reads:
    an image projection, and key/value projections for each cross-attention (ids 1, 3, 5 ...)."""
    from diffusers.models.embeddings import ImageProjection

    torch.manual_seed(11)
    cross = unet.config.cross_attention_dim
    proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=IMAGE_EMBED_DIM, num_image_text_embeds=4)
    layers, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        for which in ("k", "v"):
            layers[f"{key_id}.to_{which}_ip.weight"] = torch.randn_like(getattr(attn, f"to_{which}").weight) * 0.2
        key_id += 2
    image_proj = {k.replace("image_embeds", "proj"): v for k, v in proj.state_dict().items()}  # checkpoint names
    return {"image_proj": image_proj, "ip_adapter": layers}


def ip_embeds() -> list[torch.Tensor]:
    """Precomputed image embeddings (negative and positive, as with guidance): no image encoder needed."""
    return [torch.randn(2, 1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(5))]


def prepared(kind: str, setup: str | None = None, lora_dir: str | None = None, dtype: str | None = None):
    """The ``kind`` pipeline with ``setup`` applied: ``lora`` (from ``lora_dir``) or ``ip-adapter``;
    cast to ``dtype`` (a torch dtype name) when given."""
    pipe = build_variant(kind)
    if dtype:
        pipe = pipe.to(dtype=getattr(torch, dtype))
    if setup == "lora":
        pipe.load_lora_weights(lora_dir, adapter_name="motion")
    elif setup == "ip-adapter":
        pipe.unet._load_ip_adapter_weights([ip_adapter_state(pipe.unet)])
    return pipe


def call_of(kind: str, setup: str | None = None, dtype: str | None = None, overrides: dict | None = None) -> dict:
    # video-to-video runs strength x steps of them: 4 x 0.8 -> 3, as many as the other kinds
    call = dict(variant_call(kind, steps=STEPS + 1 if kind.startswith("v2v") else STEPS), **(overrides or {}))
    if setup == "ip-adapter":
        call["ip_adapter_image_embeds"] = [e.to(getattr(torch, dtype or "float32")) for e in ip_embeds()]
    return call


#: what the driver changes between two calls (on a plain pipeline, the same change)
CHANGES = {
    "lora-scale": lambda pipe: pipe.set_adapters(["motion"], [0.3]),
    "lora-off": lambda pipe: pipe.disable_lora(),
    "ip-scale": lambda pipe: pipe.set_ip_adapter_scale(0.2),
}


def frames_of(pipe, kind, setup=None, changes=(None,), dtype=None, overrides=None):
    out = []
    for change in changes:
        if change:
            CHANGES[change](pipe)
        out.append(pipe(**call_of(kind, setup, dtype, overrides), generator=torch.Generator().manual_seed(0)).frames)
    return out


@memo
def sequential(kind, setup=None, lora_dir=None, changes=(None,), dtype=None, overrides=None):
    return frames_of(prepared(kind, setup, lora_dir, dtype), kind, setup, changes, dtype, overrides)


@memo
def reference(kind, ranges, warmup, setup=None, lora_dir=None, changes=(None,), dtype=None, overrides=None):
    pipe = prepared(kind, setup, lora_dir, dtype)
    AsyncReference(pipe, ranges, warmup).install()
    return frames_of(pipe, kind, setup, changes, dtype, overrides)


def render_variant(kind: str, options: dict, setup=None, lora_dir=None, changes=(None,), dtype=None, overrides=None):
    """Every rank: the same pipeline and setup, parallelized; rank 0 returns frames and every rank's stats.
    ``overrides``: call arguments on top of the kind's standard call."""
    ppipe = asyncvid.parallelize(prepared(kind, setup, lora_dir, dtype), **options)
    frames = []
    for change in changes:
        if change and ppipe.is_driver:
            CHANGES[change](ppipe.pipe)
        out = ppipe(**call_of(kind, setup, dtype, overrides), generator=torch.Generator().manual_seed(0))
        frames.append(None if out is None else out.frames)
    stats = {"ranges": ppipe.plan.ranges, "held": materialized_parameters(ppipe.unet),
             "traffic": ppipe.traffic.snapshot(), "calls_with_extras": ppipe.runtime.calls_with_extras,
             "steps_executed": ppipe.runtime.steps_executed, "shares": getattr(ppipe.engine, "shares", None)}
    all_stats = [None] * ppipe.topo.world_size
    torch.distributed.all_gather_object(all_stats, stats)
    return {"frames": frames, "stats": all_stats} if ppipe.is_driver else None



def render_without_guidance(kind: str, options: dict):
    """Every rank: ``kind`` parallelized; the driver first calls it with guidance off (one line
    expected), then with guidance on: the pipeline must still serve. Returns the line and the frames."""
    from asyncvid.utils import one_line

    ppipe = asyncvid.parallelize(prepared(kind), **options)
    result = {}
    if ppipe.is_driver:
        try:
            ppipe(**call_of(kind, overrides={"guidance_scale": 1.0}), generator=torch.Generator().manual_seed(0))
        except Exception as exc:  # noqa: BLE001 - the line is the result
            result["error"] = one_line(exc)
        result["frames"] = ppipe(**call_of(kind), generator=torch.Generator().manual_seed(0)).frames
    else:
        ppipe(None)
        ppipe(None)
    return result if ppipe.is_driver else None


def undo_after(kind: str, options: dict):
    """Every rank: ``kind`` parallelized, one call, then ``undo()``: rank 0 gets the plain pipeline
    back and calls it once more, alone. Returns both calls' frames on rank 0."""
    ppipe = asyncvid.parallelize(prepared(kind), **options)
    out = ppipe(**call_of(kind), generator=torch.Generator().manual_seed(0))
    pipe = ppipe.undo()
    if pipe is None:
        return None
    again = pipe(**call_of(kind), generator=torch.Generator().manual_seed(0))
    return {"frames": [out.frames, again.frames]}


def maxdiff(a, b) -> float:
    """Largest absolute difference of two frame arrays, in float64."""
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def run_groups(groups: dict) -> dict:
    """``{world size: {name: (function, args)}}``: each world's jobs in one group of ranks (spawning
    ranks costs seconds: a module's cases share them); ``{name: rank 0's result}``."""
    import _workers
    from asyncvid.launch import launch_local

    out = {}
    for world, group in groups.items():
        out.update(zip(group, launch_local(_workers.run_many, world, list(group.values()), timeout=1200)))
    return out

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


def fixture_pipeline():
    """diffusers' own SVD fast-test pipeline (its ``get_dummy_components``): a 32 px CLIP image encoder,
    where Stable Video Diffusion's pipeline always resizes a PIL image to 224 px for it, so only tensor
    images work; asyncvid's optional timing of the driver's step, which makes a PIL image, fails on it."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", trained_betas=None, use_karras_sigmas=True)
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], latent_channels=4)
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=1))
    pipe = svd_pipeline_class()(unet=unet, image_encoder=image_encoder, vae=vae, scheduler=scheduler,
                                feature_extractor=ImageProcessor(crop_size=32, size=32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: diffusers' dummy inputs for it (a tensor image, which skips the 224 px resize)
FIXTURE_CALL = dict(num_frames=2, height=32, width=32, num_inference_steps=2, min_guidance_scale=1.0,
                    max_guidance_scale=2.5, output_type="np")


def fixture_image():
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def call_fixture(pipe):
    return pipe(image=fixture_image(), **FIXTURE_CALL, generator=torch.Generator().manual_seed(0)).frames


def render_fixture(options: dict):
    """Every rank: the fixture through ``parallelize``; the driver returns its frames and the warnings
    asyncvid logged while planning."""
    import logging

    from asyncvid.logs import LOGGER

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        ppipe = asyncvid.parallelize(fixture_pipeline(), **options)
    finally:
        LOGGER.removeHandler(handler)
    out = ppipe(image=fixture_image(), **FIXTURE_CALL, generator=torch.Generator().manual_seed(0))
    return {"frames": out.frames, "warnings": lines, "ranges": ppipe.plan.ranges} if ppipe.is_driver else None

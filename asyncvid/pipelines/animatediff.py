"""``AsyncAnimateDiffPipeline.from_pretrained``: each rank loads only its own stage of the UNet.

Reads a diffusers AnimateDiff folder whose ``unet/`` is a ``UNetMotionModel``, or a
``UNet2DConditionModel`` next to a ``motion_adapter/`` (the layout of hub checkpoints). The split
is planned on a weightless (meta) UNet first; then each rank reads only the tensors of its stage and
of the shared time embedding (``stage_loading.py``). The driver also loads text encoder, tokenizer,
VAE and scheduler.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AsyncVidError
from .parallel import ParallelPipeline
from .placement import weight_files
from .stage_loading import load_stage_only, model_config


def _meta_motion_unet(folder: Path):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet_dir = folder / "unet"
    config = model_config(folder, "unet")
    files = weight_files(unet_dir)
    with torch.device("meta"):
        if config.get("_class_name") == "UNetMotionModel":
            return UNetMotionModel.from_config(config).to("meta"), files
        adapter_dir = folder / "motion_adapter"
        if not (adapter_dir / "config.json").exists():
            raise AsyncVidError(f"{unet_dir} holds a 2D UNet but {adapter_dir} has no motion adapter")
        unet2d = UNet2DConditionModel.from_config(config)
        adapter = MotionAdapter.from_config(json.loads((adapter_dir / "config.json").read_text()))
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    return unet.to("meta"), files + weight_files(adapter_dir)


class AsyncAnimateDiffPipeline:
    """Diffusers-style constructor for a stage-parallel AnimateDiff pipeline."""

    @classmethod
    def from_pretrained(cls, path, stages: int = 2, stride: int = 1, warmup: int = 1, split="auto",
                        time_shift: bool = False, profile_shape=None, torch_dtype=None,
                        forecast="none") -> ParallelPipeline:
        """Load the AnimateDiff folder ``path`` (``unet/`` as a ``UNetMotionModel``, or a 2D UNet plus
        ``motion_adapter/``) with each rank reading only its stage's weights; the driver (rank 0) also
        loads text encoder, tokenizer, VAE and scheduler. Call it on every rank; the options are
        :func:`parallelize`'s."""
        from diffusers import AnimateDiffPipeline, DDIMScheduler

        def driver(folder, unet):
            return AnimateDiffPipeline.from_pretrained(folder, unet=unet, motion_adapter=None, torch_dtype=torch_dtype)

        def worker(unet):
            return AnimateDiffPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=None,
                                       scheduler=DDIMScheduler())

        return load_stage_only(path, _meta_motion_unet, driver, worker, stages, stride, warmup, split, time_shift,
                               profile_shape, torch_dtype, forecast)

"""``AsyncStableVideoDiffusionPipeline.from_pretrained``: each rank loads only its own stage of the
spatio-temporal UNet from a diffusers Stable Video Diffusion folder; the driver also loads the image
encoder, VAE, feature extractor and scheduler (see ``stage_loading.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..catalog.quiet import svd_pipeline_class
from .parallel import ParallelPipeline
from .placement import weight_files
from .stage_loading import load_stage_only, model_config


def _meta_spatiotemporal_unet(folder: Path):
    from diffusers import UNetSpatioTemporalConditionModel

    config = model_config(folder, "unet")
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(config)
    return unet.to("meta"), weight_files(folder / "unet")


class AsyncStableVideoDiffusionPipeline:
    """Diffusers-style constructor for a stage-parallel Stable Video Diffusion pipeline."""

    @classmethod
    def from_pretrained(cls, path, stages: int = 2, stride: int = 1, warmup: int = 1, split="auto",
                        time_shift: bool = False, profile_shape=None, torch_dtype=None,
                        forecast="none") -> ParallelPipeline:
        """Load the Stable Video Diffusion folder ``path`` with each rank reading only its stage's
        weights; the driver (rank 0) also loads image encoder, feature extractor, VAE and scheduler. Call
        it on every rank; the options are :func:`parallelize`'s."""
        from diffusers import EulerDiscreteScheduler

        pipeline_class = svd_pipeline_class()

        def driver(folder, unet):
            return pipeline_class.from_pretrained(folder, unet=unet, torch_dtype=torch_dtype)

        def worker(unet):
            return pipeline_class(vae=None, image_encoder=None, unet=unet, scheduler=EulerDiscreteScheduler(),
                                  feature_extractor=None)

        return load_stage_only(path, _meta_spatiotemporal_unet, driver, worker, stages, stride, warmup, split,
                               time_shift, profile_shape, torch_dtype, forecast)

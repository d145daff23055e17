"""``AsyncAnimateDiffPipeline.from_pretrained``: each rank loads only its own stage of the UNet.

Reads a diffusers AnimateDiff folder whose ``unet/`` is a ``UNetMotionModel``, or a
``UNet2DConditionModel`` next to a ``motion_adapter/`` (the layout of hub checkpoints). The split
is planned on a weightless (meta) UNet first; then each rank reads only the tensors of its stage and
of the shared time embedding. The driver also loads text encoder, tokenizer, VAE and scheduler.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..distributed.env import default_device, ensure_process_group
from ..distributed.topology import Topology
from ..engine.runtime import AsyncOptions
from ..errors import AsyncVidError
from ..models import adapter_for
from .parallel import ParallelPipeline, ProfileShape, assemble, choose_split
from .placement import TensorSource, load_modules, stage_modules, weight_files


def _meta_motion_unet(folder: Path):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet_dir = folder / "unet"
    if not (unet_dir / "config.json").exists():
        raise AsyncVidError(f"not a diffusers AnimateDiff folder: {unet_dir / 'config.json'} is missing")
    config = json.loads((unet_dir / "config.json").read_text())
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
                        time_shift: bool = False, profile_shape=None, torch_dtype=None) -> ParallelPipeline:
        from diffusers import AnimateDiffPipeline

        options = AsyncOptions(stride=stride, warmup=warmup, time_shift=time_shift)
        options.validate(stages)
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise AsyncVidError(f"model folder not found: {folder}")
        ensure_process_group()
        topo = Topology.create(stages)
        device = default_device()
        unet, files = _meta_motion_unet(folder)
        adapter = adapter_for(unet)
        dtype = torch_dtype or torch.float32
        plan = choose_split(adapter, split, stages, topo, device, ProfileShape.parse(profile_shape), dtype)
        load_modules(unet, stage_modules(adapter, plan, topo.stage), TensorSource(files), device, torch_dtype)
        if topo.is_driver:
            pipe = AnimateDiffPipeline.from_pretrained(folder, unet=unet, motion_adapter=None, torch_dtype=torch_dtype)
            pipe.to(device) if device.type != "cpu" else None
        else:
            from diffusers import DDIMScheduler

            pipe = AnimateDiffPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=None,
                                       scheduler=DDIMScheduler())
        return assemble(pipe, adapter, plan, topo, device, options, release=True)

"""Stage-only loading: every rank reads only its own stage of the denoiser from a diffusers folder.

The denoiser is built on the meta device from its config; the split is planned on that weightless
model; then each rank materialises only its stage's modules and the shared ones (time embedding and
the like), reading their tensors one at a time from safetensors. The driver also loads the other
components (text or image encoder, VAE, scheduler); a worker builds an empty pipeline around its
stage. Family-specific parts (how to build the meta denoiser, which pipeline class) come from the
callers: ``animatediff.py`` and ``svd_loading.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..distributed.env import default_device, ensure_process_group
from ..distributed.topology import Topology
from ..engine.forecast import Forecast
from ..engine.schedule import AsyncOptions
from ..errors import AsyncVidError
from ..models import adapter_for
from .parallel import ParallelPipeline, ProfileShape, assemble, choose_split
from .placement import TensorSource, load_direct_tensors, load_modules, stage_modules


def model_config(folder: Path, sub: str) -> dict:
    """``folder/sub/config.json``; one line if the folder is not a diffusers pipeline folder."""
    path = folder / sub / "config.json"
    if not path.exists():
        raise AsyncVidError(f"not a diffusers pipeline folder: {path} is missing")
    return json.loads(path.read_text())


def load_stage_only(path, meta_denoiser: Callable[[Path], tuple], driver_pipeline: Callable, worker_pipeline: Callable,
                    stages: int, stride: int, warmup: int, split, time_shift: bool, profile_shape,
                    torch_dtype, forecast="none") -> ParallelPipeline:
    """``meta_denoiser(folder) -> (meta model, weight files)``; ``driver_pipeline(folder, model)`` and
    ``worker_pipeline(model)`` build the pipeline around the partly loaded model."""
    options = AsyncOptions(stride=stride, warmup=warmup, time_shift=time_shift, forecast=Forecast.parse(forecast))
    options.validate(stages)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AsyncVidError(f"model folder not found: {folder}")
    ensure_process_group()
    topo = Topology.create(stages)
    device = default_device()
    model, files = meta_denoiser(folder)
    dtype = torch_dtype or torch.float32
    model.to(dtype)  # weightless: the split is planned and the cuts sized in the pipeline's dtype
    adapter = adapter_for(model)
    plan = choose_split(adapter, split, stages, topo, device, ProfileShape.parse(profile_shape), dtype)
    source = TensorSource(files)
    load_modules(model, stage_modules(adapter, plan, topo.stage), source, device, torch_dtype)
    load_direct_tensors(model, source, device, torch_dtype)
    if topo.is_driver:
        pipe = driver_pipeline(folder, model)
        if device.type != "cpu":
            pipe.to(device)
    else:
        pipe = worker_pipeline(model)
    return assemble(pipe, adapter, plan, topo, device, options, release=True)

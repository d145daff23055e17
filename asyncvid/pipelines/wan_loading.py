"""``AsyncWanPipeline.from_pretrained``: each rank loads only its own stage of the Wan transformer
from a diffusers ``WanPipeline`` or ``WanImageToVideoPipeline`` folder; the driver also loads the
text encoder, tokenizer, VAE, scheduler (and image encoder). See ``stage_loading.py``.

The transformer is built on the meta device, except its rotary embedding, whose tables are computed
in its constructor and never stored: it is rebuilt for real (a few KiB). The head's
``scale_shift_table`` is a parameter of the model itself and is read on every rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AsyncVidError
from .parallel import ParallelPipeline
from .placement import weight_files
from .stage_loading import load_stage_only, model_config

PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")


def _meta_transformer(folder: Path):
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    config = model_config(folder, "transformer")
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config).to("meta")
    c = model.config
    model.rope = WanRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len)
    return model, weight_files(folder / "transformer")


def _pipeline_class(folder: Path):
    import diffusers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8")) \
        if (folder / "model_index.json").is_file() else {}
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise AsyncVidError(f"{folder} is not a Wan pipeline folder (model_index.json names {name!r})")
    if index.get("transformer_2") and index["transformer_2"][0] is not None:
        raise AsyncVidError(f"{folder} has two experts (transformer_2): stage-only loading takes one transformer; "
                            "load the pipeline whole and use asyncvid.parallelize")
    if name == "WanImageToVideoPipeline":
        from ..catalog.wan import image_to_video_class

        return image_to_video_class()
    return diffusers.WanPipeline


class AsyncWanPipeline:
    """Diffusers-style constructor for a stage-parallel Wan pipeline (text- or image-to-video)."""

    @classmethod
    def from_pretrained(cls, path, stages: int = 2, stride: int = 1, warmup: int = 1, split="auto",
                        time_shift: bool = False, profile_shape=None, torch_dtype=None,
                        forecast="none") -> ParallelPipeline:
        """Load the Wan folder ``path`` (text- or image-to-video, one expert) with each rank reading only
        its blocks and the shared modules; the driver (rank 0) also loads tokenizer, text encoder, VAE and
        scheduler (and the image encoder). Call it on every rank; the options are :func:`parallelize`'s."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        folder = Path(path).expanduser()
        pipeline_class = _pipeline_class(folder) if folder.is_dir() else None

        def driver(folder, transformer):
            return pipeline_class.from_pretrained(folder, transformer=transformer, torch_dtype=torch_dtype)

        def worker(transformer):
            parts = dict(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                         scheduler=FlowMatchEulerDiscreteScheduler())
            if pipeline_class.__name__ == "WanImageToVideoPipeline":
                parts.update(image_encoder=None, image_processor=None)
            return pipeline_class(**parts)

        return load_stage_only(path, _meta_transformer, driver, worker, stages, stride, warmup, split, time_shift,
                               profile_shape, torch_dtype, forecast)

"""Pipelines of catalogue models: loading a local folder, building one by name or random preset,
and the keyword arguments of a benchmark's denoising call."""

from __future__ import annotations

from pathlib import Path

from ..errors import AsyncVidError
from .folders import BASE_MODELS, SDXL_MODELS, pipeline_class_name, resolve_model
from .quiet import quiet_environment, quiet_libraries, svd_pipeline_class

#: AnimateDiff pipeline class by (ControlNet, input video)
ANIMATEDIFF_CLASSES = {(False, False): "AnimateDiffPipeline", (True, False): "AnimateDiffControlNetPipeline",
                       (False, True): "AnimateDiffVideoToVideoPipeline",
                       (True, True): "AnimateDiffVideoToVideoControlNetPipeline"}


def _in_float32(cls, model_dir: str):
    """``cls.from_pretrained`` with every component in float32: without a dtype, transformers
    components (SVD's image encoder) keep the dtype they were saved in (fp16 for the shipped models)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # newer diffusers renamed torch_dtype; older ones lack the new name
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        return cls.from_pretrained(model_dir, torch_dtype=torch.float32)


def load_pipeline(model_dir: str, adapter_dir: str | None = None, dtype: str = "float32",
                  controlnet_dir: str | None = None, video: bool = False):
    """A plain diffusers pipeline on the CPU in ``dtype`` (a torch dtype name): Stable Video Diffusion
    or AnimateDiff (a StableDiffusion(XL)Pipeline base folder needs ``adapter_dir``; for an AnimateDiff
    folder it replaces the folder's own motion adapter). SD 1.5 folders load as the AnimateDiff
    pipeline that takes ``controlnet_dir`` (a ControlNetModel folder) and/or an input ``video``;
    SDXL folders as AnimateDiffSDXLPipeline, which has neither."""
    quiet_environment()
    quiet_libraries()
    name = pipeline_class_name(model_dir)
    if name == "StableVideoDiffusionPipeline":
        pipe = _in_float32(svd_pipeline_class(), model_dir)
    elif name == "WanPipeline":
        if adapter_dir or controlnet_dir or video:
            what = "motion_adapter" if adapter_dir else "controlnet" if controlnet_dir else "video"
            raise AsyncVidError(f"{model_dir} is a WanPipeline (a video transformer): `{what}` is only for AnimateDiff")
        import diffusers

        pipe = _in_float32(diffusers.WanPipeline, model_dir)
    else:
        import warnings

        import diffusers
        import torch

        extra = {}
        if adapter_dir:
            extra["motion_adapter"] = diffusers.MotionAdapter.from_pretrained(adapter_dir)
        elif name in BASE_MODELS:
            raise AsyncVidError(f"{model_dir} is a {name}: set `motion_adapter:` to an AnimateDiff motion adapter folder")
        if name in SDXL_MODELS:
            if controlnet_dir or video:
                raise AsyncVidError(f"{model_dir} is an SDXL model: diffusers has no AnimateDiff SDXL pipeline for "
                                    f"{'ControlNet' if controlnet_dir else 'video-to-video'} jobs")
            cls = diffusers.AnimateDiffSDXLPipeline
        else:
            cls = getattr(diffusers, ANIMATEDIFF_CLASSES[bool(controlnet_dir), bool(video)])
        # components a folder stores as null (shapes-t2v has its motion modules inside the UNet): a
        # ControlNet or video-to-video class loading that folder would otherwise miss them
        for component in ("motion_adapter", "feature_extractor", "image_encoder"):
            if component not in extra and not (Path(model_dir) / component).is_dir():
                extra[component] = None
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype; older ones lack the new name
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            if controlnet_dir:
                extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet_dir, torch_dtype=torch.float32)
            # float32 compute whatever the stored dtype (the packaged model is stored in fp16)
            pipe = cls.from_pretrained(model_dir, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    if dtype != "float32":
        import torch

        pipe = pipe.to(dtype=getattr(torch, dtype))
    return pipe


def build_pipeline(model: str, preset: str = "small", layers: int | None = None):
    """``animatediff`` / ``svd``: random-weight presets built from configs; anything else: a built-in
    model name or a local diffusers folder (fp32, CPU). ``layers``: the random ``wan`` preset's block
    count instead of the preset's own (Wan 2.1 1.3B has 30, 14B 40)."""
    if layers is not None and model != "wan":
        raise AsyncVidError("--layers sets the block count of the random `wan` presets only")
    if model in ("animatediff", "svd"):
        from .presets import build_animatediff_pipeline, build_svd_pipeline

        return (build_svd_pipeline if model == "svd" else build_animatediff_pipeline)(preset, seed=0)
    if model == "wan":
        from .wan import build_wan_pipeline

        if preset == "null":
            raise AsyncVidError("--model wan: presets tiny, small and full (no null preset)")
        return build_wan_pipeline("t2v", seed=0, preset=preset, layers=layers)
    return load_pipeline(resolve_model(model))


def denoiser_of(pipe):
    """The pipeline's denoiser: its UNet, or its (first) transformer."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def is_wan(pipe) -> bool:
    """A Wan pipeline (a video transformer with one denoiser call per guidance branch)."""
    return hasattr(pipe, "transformer") and hasattr(pipe, "vae_scale_factor_spatial")


def vae_scale(pipe) -> int:
    return pipe.vae_scale_factor_spatial if is_wan(pipe) else pipe.vae_scale_factor


def latent_frames(pipe, frames: int) -> int:
    """Latent frames of a ``frames``-frame video (Wan's VAE compresses time 4x, keeping the first)."""
    if is_wan(pipe):
        return (wan_frames(pipe, frames) - 1) // pipe.vae_scale_factor_temporal + 1
    return frames


def wan_frames(pipe, frames: int) -> int:
    """The frame count a Wan pipeline renders for ``frames`` (it rounds to 4k+1)."""
    step = pipe.vae_scale_factor_temporal
    return frames if frames % step == 1 else frames // step * step + 1


def profile_shape(pipe, frames: int, latent: int, groups: int = 1) -> dict:
    """The split's profile shape for a benchmark call: the guidance batch of one call per group, or
    for Wan (one call per guidance branch) one sample over its latent frames."""
    if is_wan(pipe):
        return dict(frames=latent_frames(pipe, frames), height=latent, width=latent, batch=1)
    return dict(frames=frames, height=latent, width=latent, batch=2 // groups)


def is_svd(pipe) -> bool:
    return hasattr(pipe, "image_encoder") and not hasattr(pipe, "text_encoder")


def latent_side(pipe, cfg: dict) -> int:
    """Latent height = width of a benchmark configuration: ``cfg["latent"]`` when set (resolved
    already), else ``cfg["size"]`` pixels over the VAE's scale, else the model's own size (the
    denoiser's ``sample_size``, as its pipeline renders when not told)."""
    if cfg.get("latent"):
        return int(cfg["latent"])
    scale = vae_scale(pipe)
    if cfg.get("size"):
        if cfg["size"] % scale:
            raise AsyncVidError(f"--size {cfg['size']}: must be a multiple of the VAE's scale {scale} for this model")
        return cfg["size"] // scale
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(denoiser.config, "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    if not sample and is_wan(pipe):
        return 8  # Wan's configs name no size (its pipeline defaults to 480x832); a small bench latent
    return int(sample) if sample else 64  # diffusers' default SVD config has none; its pipeline then uses 64


def call_kwargs(pipe, frames: int, latent: int, steps: int, guidance: float = 7.5,
                prompt: str = "a red circle moving left on a black background") -> dict:
    """One denoising call at ``latent`` x ``latent`` latents, to latents (no VAE decode)."""
    size = latent * vae_scale(pipe)
    common = dict(num_frames=frames, height=size, width=size, num_inference_steps=steps, output_type="latent")
    if is_wan(pipe):  # guidance > 1: two transformer calls per step (prompt, negative prompt)
        return dict(common, num_frames=wan_frames(pipe, frames), prompt=prompt, negative_prompt="blurry",
                    guidance_scale=5.0)
    if is_svd(pipe):
        from PIL import Image

        image = Image.new("RGB", (size, size), (200, 40, 40))
        # max_guidance_scale > 1: both guidance branches in one batch-2 UNet call, like AnimateDiff's CFG
        return dict(common, image=image, min_guidance_scale=1.0, max_guidance_scale=2.5, decode_chunk_size=8)
    return dict(common, prompt=prompt, guidance_scale=guidance)

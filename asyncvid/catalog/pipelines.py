"""Pipelines of catalogue models: loading a local folder, building one by name or random preset,
and the keyword arguments of a benchmark's denoising call."""

from __future__ import annotations

from ..errors import AsyncVidError
from .folders import BASE_MODELS, SDXL_MODELS, pipeline_class_name, resolve_model
from .quiet import quiet_environment, quiet_libraries, svd_pipeline_class

#: AnimateDiff pipeline class by (ControlNet, input video)
ANIMATEDIFF_CLASSES = {(False, False): "AnimateDiffPipeline", (True, False): "AnimateDiffControlNetPipeline",
                       (False, True): "AnimateDiffVideoToVideoPipeline",
                       (True, True): "AnimateDiffVideoToVideoControlNetPipeline"}


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
        pipe = svd_pipeline_class().from_pretrained(model_dir)
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


def build_pipeline(model: str, preset: str = "small"):
    """``animatediff`` / ``svd``: random-weight presets built from configs; anything else: a built-in
    model name or a local diffusers folder (fp32, CPU)."""
    if model in ("animatediff", "svd"):
        from .presets import build_animatediff_pipeline, build_svd_pipeline

        return (build_svd_pipeline if model == "svd" else build_animatediff_pipeline)(preset, seed=0)
    return load_pipeline(resolve_model(model))


def is_svd(pipe) -> bool:
    return hasattr(pipe, "image_encoder") and not hasattr(pipe, "text_encoder")


def latent_side(pipe, cfg: dict) -> int:
    """Latent height = width of a benchmark configuration: ``cfg["latent"]`` when set (resolved
    already), else ``cfg["size"]`` pixels over the VAE's scale, else the model's own size (the
    denoiser's ``sample_size``, as its pipeline renders when not told)."""
    if cfg.get("latent"):
        return int(cfg["latent"])
    scale = pipe.vae_scale_factor
    if cfg.get("size"):
        if cfg["size"] % scale:
            raise AsyncVidError(f"--size {cfg['size']}: must be a multiple of the VAE's scale {scale} for this model")
        return cfg["size"] // scale
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(denoiser.config, "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    return int(sample) if sample else 64  # diffusers' default SVD config has none; its pipeline then uses 64


def call_kwargs(pipe, frames: int, latent: int, steps: int, guidance: float = 7.5,
                prompt: str = "a red circle moving left on a black background") -> dict:
    """One denoising call at ``latent`` x ``latent`` latents, to latents (no VAE decode)."""
    size = latent * pipe.vae_scale_factor
    common = dict(num_frames=frames, height=size, width=size, num_inference_steps=steps, output_type="latent")
    if is_svd(pipe):
        from PIL import Image

        image = Image.new("RGB", (size, size), (200, 40, 40))
        # max_guidance_scale > 1: both guidance branches in one batch-2 UNet call, like AnimateDiff's CFG
        return dict(common, image=image, min_guidance_scale=1.0, max_guidance_scale=2.5, decode_chunk_size=8)
    return dict(common, prompt=prompt, guidance_scale=guidance)

"""Random-weight AnimateDiff and Stable Video Diffusion pipelines built from configs (presets
``null``, ``tiny``, ``small``), for tests, benchmarks and the ``tiny-random`` built-ins. Nothing here
touches a model hub.

The tokenizer is byte-level (every UTF-8 byte is a token), so any prompt tokenizes without a
vocabulary download.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: latent channels (32,64) with one layer per block: the size the test suite uses.
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, heads=4)
#: four levels (64..256): a model large enough that compute dominates per-step overhead (bench).
SMALL = dict(block_out_channels=(64, 128, 256, 256), layers_per_block=1, cross_attention_dim=64, heads=4)
#: the smallest UNet the blocks allow (8 channels): per-step time is the pipeline's and the engine's own
#: overhead, not compute (``asyncvid bench --preset null`` at a 2x2 latent).
NULL = dict(block_out_channels=(8, 8), layers_per_block=1, cross_attention_dim=8, heads=2)
#: full size: Stable Diffusion 1.5's UNet (diffusers' UNet2DConditionModel defaults with SD 1.5's 768-wide
#: text features and 64-pixel latents) and AnimateDiff's motion modules (MotionAdapter defaults): 1.3 B
#: parameters with random weights, for memory and split checks without a download. Text encoder and VAE
#: stay small (the VAE downsamples by 2, not 8).
FULL_SIZE = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, heads=None)
PRESETS = {"tiny": TINY, "small": SMALL, "null": NULL, "full": FULL_SIZE}


def _byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable unicode table (what CLIP's byte-level BPE sees)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def byte_level_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols and their word-final forms."""
    from transformers import CLIPTokenizer
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(s, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _down_up_types(n_levels: int):
    down = ["CrossAttnDownBlock2D"] * (n_levels - 1) + ["DownBlock2D"]
    up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n_levels - 1)
    return down, up


def build_animatediff_pipeline(preset: str = "tiny", seed: int = 0, scheduler: str = "ddim"):
    """An ``AnimateDiffPipeline`` with random weights of the given preset size."""
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(**animatediff_components(preset, seed, scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def animatediff_components(preset: str = "tiny", seed: int = 0, scheduler: str = "ddim") -> dict:
    """The parts of a random AnimateDiff pipeline as hub checkpoints ship them: a 2D UNet plus a
    separate motion adapter (the pipeline merges them into a ``UNetMotionModel``)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        MotionAdapter,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = PRESETS[preset]
    channels = tuple(cfg["block_out_channels"])
    down, up = _down_up_types(len(channels))
    torch.manual_seed(seed)
    if preset == "full":
        unet, adapter = UNet2DConditionModel(cross_attention_dim=768, sample_size=64), MotionAdapter()
    else:
        unet = UNet2DConditionModel(
            block_out_channels=channels,
            layers_per_block=cfg["layers_per_block"],
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            cross_attention_dim=cfg["cross_attention_dim"],
            norm_num_groups=8,
            attention_head_dim=channels[0] // cfg["heads"],
        )
        adapter = MotionAdapter(
            block_out_channels=channels,
            motion_layers_per_block=cfg["layers_per_block"],
            motion_norm_num_groups=8,
            motion_num_attention_heads=cfg["heads"],
            motion_max_seq_length=32,
        )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=cfg["cross_attention_dim"],
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=1000,
        )
    )
    if scheduler == "euler":
        sched = EulerDiscreteScheduler(beta_schedule="linear", timestep_spacing="linspace", steps_offset=1)
    else:
        sched = DDIMScheduler(beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1)
    return dict(unet=unet, motion_adapter=adapter, vae=vae, text_encoder=text_encoder,
                tokenizer=byte_level_tokenizer(), scheduler=sched)


def save_animatediff_pipeline(path: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Build a random pipeline and write it as a diffusers folder (safetensors)."""
    path = Path(path)
    build_animatediff_pipeline(preset, seed).save_pretrained(path, safe_serialization=True)
    return path


#: Stable Video Diffusion presets. The SVD UNet's GroupNorms use 32 groups: channels must be multiples of 32.
SVD_PRESETS = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, heads=4),
    # SVD's GroupNorms use 32 groups: channels must be multiples of 32
    "small": dict(block_out_channels=(64, 128, 256, 256), layers_per_block=1, cross_attention_dim=64, heads=4),
    # full size: UNetSpatioTemporalConditionModel's defaults are Stable Video Diffusion's (1.5 B parameters,
    # sample_size None); random weights; image encoder and VAE stay small
    "full": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024, heads=None),
}


def build_svd_pipeline(preset: str = "tiny", seed: int = 0):
    """A ``StableVideoDiffusionPipeline`` with random weights (SpatioTemporal UNet, temporal-decoder VAE,
    CLIP vision encoder), nothing downloaded. Latents are half the pixel size (two VAE levels)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .quiet import svd_pipeline_class

    StableVideoDiffusionPipeline = svd_pipeline_class()

    try:  # the PIL backend: no torchvision needed, and no fallback warning
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    cfg = SVD_PRESETS[preset]
    channels = tuple(cfg["block_out_channels"])
    n = len(channels)
    torch.manual_seed(seed)
    if preset == "full":
        unet = UNetSpatioTemporalConditionModel()
    else:
        unet = UNetSpatioTemporalConditionModel(
            block_out_channels=channels,
            layers_per_block=cfg["layers_per_block"],
            sample_size=16,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (n - 1) + ("DownBlockSpatioTemporal",),
            up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (n - 1),
            cross_attention_dim=cfg["cross_attention_dim"],
            num_attention_heads=cfg["heads"],
            addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=96,  # 3 added time ids (fps, motion bucket, noise aug) x 32
            num_frames=8,
        )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        latent_channels=4,
        layers_per_block=1,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=cfg["cross_attention_dim"],
            projection_dim=cfg["cross_attention_dim"],
            num_hidden_layers=2,
            num_attention_heads=4 if preset != "full" else 8,
            image_size=224,
            patch_size=32,
            intermediate_size=37,
        )
    )
    feature_extractor = ImageProcessor(crop_size=224, size=224)
    scheduler = EulerDiscreteScheduler(  # as diffusers' own SVD tests
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_svd_pipeline(path: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Build a random SVD pipeline and write it as a diffusers folder (safetensors)."""
    path = Path(path)
    build_svd_pipeline(preset, seed).save_pretrained(path, safe_serialization=True)
    return path

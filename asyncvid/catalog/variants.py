"""Random-weight builds of every diffusers pipeline that drives these UNets, nothing downloaded.

``build_variant(kind, preset)`` gives the pipeline of one kind; ``variant_call(kind, pipe, ...)`` the
keyword arguments of a small call to it (conditioning frames, an input video, PAG layers ...). Tests
run every kind through ``parallelize``; ``controlnet_model`` / ``sparse_controlnet_model`` build the
ControlNets that job-file tests save to folders.
"""

from __future__ import annotations

import torch

from .presets import PRESETS, animatediff_components, build_svd_pipeline, byte_level_tokenizer

KINDS = ("t2v", "sdxl", "controlnet", "sparsectrl", "v2v", "v2v-controlnet", "pag", "svd")


def _down_types(n: int, motion: bool) -> tuple[str, ...]:
    cross, plain = ("CrossAttnDownBlockMotion", "DownBlockMotion") if motion else ("CrossAttnDownBlock2D", "DownBlock2D")
    return (cross,) * (n - 1) + (plain,)


def _wake(net, seed: int):
    """ControlNets start with zero output convolutions (their residuals are exactly zero until trained):
    give them small random weights, so that a random ControlNet changes the video."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return net


def controlnet_model(preset: str = "tiny", seed: int = 0):
    """A ``ControlNetModel`` matching the preset's UNet (residual count and channels), for a VAE of
    two levels (conditioning images at twice the latent size), its output convolutions non-zero."""
    from diffusers import ControlNetModel

    cfg = PRESETS[preset]
    channels = tuple(cfg["block_out_channels"])
    torch.manual_seed(seed + 1)
    return _wake(ControlNetModel(
        block_out_channels=channels, layers_per_block=cfg["layers_per_block"], in_channels=4,
        down_block_types=_down_types(len(channels), motion=False), cross_attention_dim=cfg["cross_attention_dim"],
        conditioning_embedding_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=channels[0] // cfg["heads"],
    ), seed + 1)


def sparse_controlnet_model(preset: str = "tiny", seed: int = 0):
    """A ``SparseControlNetModel`` (SparseCtrl, RGB conditioning) matching the preset's UNet."""
    from diffusers import SparseControlNetModel

    cfg = PRESETS[preset]
    channels = tuple(cfg["block_out_channels"])
    torch.manual_seed(seed + 2)
    return _wake(SparseControlNetModel(
        block_out_channels=channels, layers_per_block=cfg["layers_per_block"], in_channels=4, conditioning_channels=3,
        down_block_types=_down_types(len(channels), motion=True), cross_attention_dim=cfg["cross_attention_dim"],
        conditioning_embedding_out_channels=(16, 32), norm_num_groups=8, motion_num_attention_heads=cfg["heads"],
        attention_head_dim=channels[0] // cfg["heads"], motion_max_seq_length=32, use_simplified_condition_embedding=False,
    ), seed + 2)


def _sdxl_pipeline(preset: str, seed: int):
    """AnimateDiff SDXL: two text encoders (16 + 16 = the UNet's 32 cross-attention features), the
    pooled projection (32) and 6 size/crop ids of 8 features as the added conditioning (32 + 48 = 80)."""
    from diffusers import AnimateDiffSDXLPipeline, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    parts = animatediff_components(preset, seed)
    cfg = PRESETS[preset]
    channels = tuple(cfg["block_out_channels"])
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=channels, layers_per_block=cfg["layers_per_block"], sample_size=16, in_channels=4,
        out_channels=4, down_block_types=_down_types(len(channels), motion=False),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=channels[0] // cfg["heads"],
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
    )
    motion = MotionAdapter(block_out_channels=channels, motion_layers_per_block=cfg["layers_per_block"],
                           motion_norm_num_groups=8, motion_num_attention_heads=cfg["heads"], motion_max_seq_length=32,
                           use_motion_mid_block=False)
    text = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=16, intermediate_size=37, num_attention_heads=2,
                          num_hidden_layers=2, pad_token_id=1, vocab_size=1000, projection_dim=32)
    return AnimateDiffSDXLPipeline(
        vae=parts["vae"], text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=byte_level_tokenizer(), tokenizer_2=byte_level_tokenizer(), unet=unet, motion_adapter=motion,
        scheduler=parts["scheduler"],
    )


def build_variant(kind: str, preset: str = "tiny", seed: int = 0):
    """The random-weight pipeline of ``kind`` (one of :data:`KINDS`) on the CPU in float32."""
    import diffusers

    if kind not in KINDS:
        raise ValueError(f"unknown pipeline kind {kind!r} (kinds: {', '.join(KINDS)})")
    if kind == "svd":
        return build_svd_pipeline(preset, seed)
    if kind == "sdxl":
        pipe = _sdxl_pipeline(preset, seed)
    else:
        parts = animatediff_components(preset, seed)
        cls = {"t2v": "AnimateDiffPipeline", "controlnet": "AnimateDiffControlNetPipeline",
               "sparsectrl": "AnimateDiffSparseControlNetPipeline", "v2v": "AnimateDiffVideoToVideoPipeline",
               "v2v-controlnet": "AnimateDiffVideoToVideoControlNetPipeline", "pag": "AnimateDiffPAGPipeline"}[kind]
        if kind in ("controlnet", "v2v-controlnet"):
            parts["controlnet"] = controlnet_model(preset, seed)
        elif kind == "sparsectrl":
            parts["controlnet"] = sparse_controlnet_model(preset, seed)
        if kind == "pag":
            parts["pag_applied_layers"] = ["up_blocks.1"]  # on the second stage of the tests' two-stage split
        pipe = getattr(diffusers, cls)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(count: int, size: int, seed: int) -> list:
    """``count`` RGB frames of ``size`` pixels: a bright square moving right on a dark ground."""
    from PIL import Image, ImageDraw

    frames = []
    for i in range(count):
        image = Image.new("RGB", (size, size), (20 + 3 * seed, 20, 40))
        x = (i * size // max(count, 1)) % size
        ImageDraw.Draw(image).rectangle([x, size // 4, x + size // 4, size // 2], fill=(230, 200, 60))
        frames.append(image)
    return frames


def variant_call(kind: str, frames: int = 4, size: int = 32, steps: int = 3) -> dict:
    """Keyword arguments of a small call to a ``kind`` pipeline (no generator)."""
    common = dict(num_frames=frames, height=size, width=size, num_inference_steps=steps, output_type="np")
    if kind == "svd":
        return dict(common, image=_frames(1, size, 0)[0], min_guidance_scale=1.0, max_guidance_scale=2.5,
                    decode_chunk_size=frames)
    call = dict(common, prompt="a yellow square moving right", guidance_scale=7.5)
    if kind in ("controlnet", "v2v-controlnet"):
        call["conditioning_frames"] = _frames(frames, size, 1)
    if kind == "sparsectrl":
        call.update(conditioning_frames=_frames(2, size, 1), controlnet_frame_indices=[0, frames - 1])
    if kind.startswith("v2v"):
        call["video"] = _frames(frames, size, 2)
        call["strength"] = 0.8
        for key in ("num_frames", "height", "width"):
            call.pop(key)
    if kind == "pag":
        call["pag_scale"] = 2.0
    return call

"""Tiny random-weight Wan pipelines (text-to-video, Wan 2.1 image-to-video, Wan 2.2 TI2V and A14B's two
experts), built from configs.

Nothing is downloaded: the transformer, the Wan VAE, the UMT5 text encoder and (image-to-video) the
CLIP vision encoder get random weights; the tokenizer is the byte-level one of ``presets.py``. The
sizes are the smallest the classes accept, so a 3-step call takes a fraction of a second per rank:

* ``WanTransformer3DModel``: 4 blocks of width 24 (2 heads of 12), patch (1, 2, 2);
* ``AutoencoderKLWan``: 4 latent channels, base width 8, one resnet per level, 4x temporal and 8x
  spatial compression (``num_frames`` must be 4k+1, height and width multiples of 16);
* ``UMT5EncoderModel``: 2 layers of width 16; text sequences are 512 tokens (Wan's image-conditioned
  attention takes the last 512 tokens of its context as text).

Bigger sizes for benchmarks and the planner (``preset``, text-to-video only): ``small`` (8 blocks of
width 256, 16 latent channels) and ``full``, the transformer of Wan 2.1 T2V 1.3B (30 blocks of width
1536, 12 heads, FFN 8960, 4096-wide text features, 16 latent channels: 1.4 B parameters) with a
one-layer text encoder of the right width and the tiny VAE widened to 16 latent channels: the
denoiser is real-size, the rest only as big as its inputs need.
"""

from __future__ import annotations

import torch

from .presets import byte_level_tokenizer

KINDS = ("t2v", "i2v", "ti2v", "experts")
BOUNDARY = 0.7  # experts: 4 steps (t = 1000, 858, 602, 9) split 2 + 2 between the experts
LATENT_CHANNELS = 4
TEXT_DIM = 16
IMAGE_DIM = 8
TEXT_LEN = 512  # Wan's attention processor splits the image tokens off as "all but the last 512"


#: transformer / text encoder / VAE sizes per preset (``tiny``: the tests' pipelines)
PRESETS = {
    "tiny": dict(heads=2, head_dim=12, ffn=32, layers=4, text_dim=TEXT_DIM, freq_dim=32, latent=LATENT_CHANNELS,
                 text_layers=2),
    "small": dict(heads=4, head_dim=64, ffn=1024, layers=8, text_dim=64, freq_dim=64, latent=16, text_layers=1),
    "full": dict(heads=12, head_dim=128, ffn=8960, layers=30, text_dim=4096, freq_dim=256, latent=16, text_layers=1),
}


def _text_encoder(preset: str = "tiny"):
    from transformers import UMT5Config, UMT5EncoderModel

    size = PRESETS[preset]
    config = UMT5Config(vocab_size=600, d_model=size["text_dim"], d_kv=8, d_ff=32, num_layers=size["text_layers"],
                        num_heads=2,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    return UMT5EncoderModel(config).eval()


def _vae(channels: int = LATENT_CHANNELS):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * channels,
                            latents_std=[1.0] * channels)


def _transformer(kind: str, layers: int | None, preset: str = "tiny"):
    from diffusers import WanTransformer3DModel

    size = PRESETS[preset]
    image = kind == "i2v"  # ti2v (Wan 2.2 TI2V) conditions on the image through the latent only
    # image-to-video (Wan 2.1 style): the latent, a 4-channel first-frame mask and the encoded condition video
    latent = size["latent"]
    in_channels = 2 * latent + 4 if image else latent
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=size["heads"], attention_head_dim=size["head_dim"],
        in_channels=in_channels, out_channels=latent, text_dim=size["text_dim"], freq_dim=size["freq_dim"],
        ffn_dim=size["ffn"], num_layers=layers or size["layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32 if preset == "tiny" else 1024,
        image_dim=IMAGE_DIM if image else None, added_kv_proj_dim=24 if image else None)


def _image_encoder():
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel

    # the PIL backend by name: the default class needs torchvision and warns when it falls back to this one
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    config = CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=4, projection_dim=IMAGE_DIM)
    processor = processor_class(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return CLIPVisionModel(config).eval(), processor


def image_to_video_class():
    """``WanImageToVideoPipeline``; its module imports ``transformers.CLIPImageProcessor``, which
    without torchvision warns that it falls back to the PIL backend: the fallback is fine, the warning noise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        from diffusers import WanImageToVideoPipeline
    finally:
        hf_logging.set_verbosity(level)
    return WanImageToVideoPipeline


def build_wan_pipeline(kind: str = "t2v", seed: int = 0, layers: int | None = None, preset: str = "tiny"):
    """A ``WanPipeline`` (``t2v``) or a ``WanImageToVideoPipeline`` with random weights: ``i2v`` as Wan
    2.1 (CLIP image tokens, the condition video concatenated to the latent), ``ti2v`` as Wan 2.2 TI2V
    (``expand_timesteps``: the image is the first latent frame, one timestep per token); ``experts``
    a ``WanPipeline`` with two experts as Wan 2.2 A14B (``transformer_2`` below ``boundary_ratio``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    if kind not in KINDS:
        raise ValueError(f"unknown Wan pipeline kind {kind!r} (known: {', '.join(KINDS)})")
    if preset not in PRESETS or (preset != "tiny" and kind != "t2v"):
        raise ValueError(f"Wan preset {preset!r}: tiny (every kind), small or full (t2v)")
    torch.manual_seed(seed)
    parts = dict(transformer=_transformer(kind, layers, preset), vae=_vae(PRESETS[preset]["latent"]),
                 text_encoder=_text_encoder(preset),
                 tokenizer=byte_level_tokenizer(model_max_length=TEXT_LEN),
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    if kind == "i2v":
        parts["image_encoder"], parts["image_processor"] = _image_encoder()
        pipe = image_to_video_class()(**parts)
    elif kind == "ti2v":  # the first latent frame is the image's; its tokens get timestep 0 (per-token timesteps)
        pipe = image_to_video_class()(**parts, expand_timesteps=True)
    elif kind == "experts":  # Wan 2.2 A14B: transformer for t >= 700, transformer_2 (other weights) below
        pipe = WanPipeline(**parts, transformer_2=_transformer("t2v", layers), boundary_ratio=BOUNDARY)
    else:
        pipe = WanPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def condition_image(size: int = 32):
    """A fixed RGB test image (a gradient with a square), for image-to-video calls."""
    from PIL import Image

    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    rgb = torch.stack([x * 255 // size, y * 255 // size, torch.full_like(x, 96)], dim=-1)
    rgb[size // 4: size // 2, size // 4: size // 2] = torch.tensor([250, 40, 40])
    return Image.fromarray(rgb.to(torch.uint8).numpy())


def encode_text(pipe, prompt: str, length: int = TEXT_LEN) -> torch.Tensor:
    """``prompt``'s text embedding as Wan's pipelines compute it (tokens padded to ``length``, the
    encoder's output past the prompt's tokens zeroed), without their text cleaning: diffusers'
    image-to-video pipeline cleans prompts with ``ftfy``, an optional dependency, unguarded."""
    tokens = pipe.tokenizer([prompt], padding="max_length", max_length=length, truncation=True,
                            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        out = pipe.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    keep = int(tokens.attention_mask.sum())
    out[:, keep:] = 0
    return out.to(pipe.transformer.dtype)


def wan_call(kind: str = "t2v", pipe=None, steps: int = 3, frames: int = 9, size: int = 32) -> dict:
    """Keyword arguments of a small call: 9 frames (3 latent frames), 32x32 pixels (4x4 latents, 2x2
    patches), guidance 5.0 so each step calls the transformer twice (prompt, then negative prompt).
    Image-to-video gets a fixed image and the prompts as embeddings from ``pipe``'s text encoder
    (see :func:`encode_text`)."""
    prompt, negative = "a red square drifting right", "blurry"
    call = dict(num_frames=frames, height=size, width=size, num_inference_steps=steps, guidance_scale=5.0,
                max_sequence_length=TEXT_LEN, output_type="np")
    if kind in ("i2v", "ti2v"):
        if pipe is None:
            raise ValueError("an image-to-video call needs the pipeline to encode its prompts")
        call.update(image=condition_image(size), prompt_embeds=encode_text(pipe, prompt),
                    negative_prompt_embeds=encode_text(pipe, negative))
    else:
        call.update(prompt=prompt, negative_prompt=negative)
    return call

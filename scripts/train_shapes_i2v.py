"""Train ``shapes-i2v``: a small Stable Video Diffusion-format image-to-video model of the shapes world.

The conditioning image is the first frame of a world clip; the model continues it (same shape,
colour and background) in the direction its ``motion_bucket_id`` asks for: one quarter of the 0-255
range per direction (``asyncvid.eval.world.MOTION_BUCKETS``: left 0-63, right 64-127, up 128-191,
down 192-255). Built from configs, trained on CPU, exported as a standard
``StableVideoDiffusionPipeline`` folder (fp16 safetensors) that stock diffusers loads offline:

* VAE: ``AutoencoderKLTemporalDecoder`` (32/64/128, 32x32 frames -> 8x8x4 latents), trained first;
* image encoder: ``CLIPVisionModelWithProjection`` (width 64, 2 layers, 224 px input in 7x7
  patches, as the pipeline resizes every image to 224), trained jointly with the UNet;
* ``UNetSpatioTemporalConditionModel`` (``--unet-widths``, 8 frames, native size 32 px);
* scheduler: SVD's ``EulerDiscreteScheduler`` (Karras sigmas 0.002-700, v-prediction, continuous
  timesteps 0.25 log sigma).

Objective as SVD's (EDM): sigma log-normal (mean 1.0, std 1.6), the UNet sees the noisy latent
scaled by 1/sqrt(sigma^2+1) next to the (unscaled) latent of the noise-augmented first frame and
predicts v = (noise - sigma x0) / sqrt(sigma^2+1); added time ids (fps - 1 drawn from 3-29: the
world's motion does not depend on it, so any job's fps works; the direction's bucket drawn in its
range; the augmentation strength); 10 % of samples drop image and latent conditioning together
(the pipeline's guidance uses zeros for both). EMA 0.998. After ``--detail-from`` minutes, half of
every batch draws sigma from EDM's own log-normal (-1.2, 1.2): SVD's distribution leaves few samples
at the low noise levels where edges are drawn. Checkpoints every three minutes into ``--work``; a
rerun resumes (only time spent training counts; a larger ``--unet-minutes`` lays the cosine over
the new length). Seeded. The export is written beside ``--export`` and renamed over it.

The shipped model took two runs on the 2-core development machine (one process, 2 threads):

1. the defaults (2026-12-03): VAE 35 min, UNet 32/64/128 (5.2 M parameters) 82 min, 6,947 steps;
   held-out shape plateaued at 77 % (48 clips): circles and squares blurred into each other, even
   in the first frame, which only has to repeat the conditioning image;
2. ``--from-model <run 1's export> --unet-widths 64,128,128 --detail-from 20 --unet-step-seconds
   1.05`` (2026-12-05): run 1's VAE as it is and its image encoder as the start, a UNet twice as
   wide at the 8x8 level (10.2 M parameters, ~1.1 s per step of 16 clips) from scratch,
   ``--unet-minutes 75`` and then resumed with ``--unet-minutes 95``. Held-out shape (24 clips)
   71 / 83 / 87.5 / 87.5 / 92 % at 15 / 30 / 45 / 60 / 90 minutes (5,132 steps); on the 48 clips at
   the end 92 % (colour, direction, moving 100 %). The export's ``training.json`` keeps both runs.

Tried on 2026-12-04 without reaching 90 %: ``--latent-scale 2`` (a VAE that downsamples by 2, 16x16
latents, ``--batch 8``): 46 % after 58 UNet minutes, no faster than 8x8 latents.

    python scripts/train_shapes_i2v.py --work runs/shapes-i2v --export runs/shapes-i2v-small
    python scripts/train_shapes_i2v.py --work runs/shapes-i2v-wide --export asyncvid/assets/shapes-i2v \
        --from-model runs/shapes-i2v-small --unet-widths 64,128,128 --detail-from 20 \
        --unet-step-seconds 1.05 --unet-minutes 95
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from train_shapes_t2v import _save, cosine_lr, optimizer_step, replace_folder, start_log, to_pixels

from asyncvid.eval import world
from asyncvid.eval.adherence import evaluate_i2v_pipeline

FRAMES, SIZE, FPS_IDS, MAX_AUG = 8, 32, (3, 29), 0.1  # fps ids: the pipeline passes fps - 1
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


VAE_WIDTHS = {4: [32, 64, 128], 2: [32, 64]}  # by how much the VAE downsamples: its blocks' widths


def vae_scale(vae) -> int:
    """By how much ``vae`` downsamples (each block after the first halves the size)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_vae(scale: int = 4):
    from diffusers import AutoencoderKLTemporalDecoder

    widths = VAE_WIDTHS[scale]
    return AutoencoderKLTemporalDecoder(block_out_channels=widths, in_channels=3, out_channels=3,
                                        down_block_types=["DownEncoderBlock2D"] * len(widths), latent_channels=4,
                                        layers_per_block=1, sample_size=SIZE)


def build_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=64, projection_dim=64, intermediate_size=128,
                                                          num_hidden_layers=2, num_attention_heads=4, image_size=224,
                                                          patch_size=32))


def build_unet(scale: int = 4, widths=(32, 64, 128)):
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(
        block_out_channels=tuple(widths), layers_per_block=1, sample_size=SIZE // scale, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2,
        cross_attention_dim=64, num_attention_heads=(2, 4, 8), addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=96, num_frames=FRAMES)


def feature_extractor():
    try:  # the PIL backend: no torchvision needed
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor
    return ImageProcessor(crop_size=224, size=224)


def sample_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
                                  sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
                                  timestep_type="continuous", use_karras_sigmas=True)


def clip_input(first: torch.Tensor) -> torch.Tensor:
    """As the pipeline prepares the image encoder's input: [-1, 1] frames resized to 224 with
    antialiasing, back to [0, 1], normalised with CLIP's mean and std."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    image = (_resize_with_antialiasing(first, (224, 224)) + 1) / 2
    return (image - CLIP_MEAN) / CLIP_STD


def train_vae(work: Path, minutes: float, log, scale: int = 4, step_seconds: float = 0.8):
    vae = build_vae(scale)
    ckpt = work / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    state = {"step": 0, "elapsed": 0.0}
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    train, _ = world.held_out_split()
    rng = np.random.default_rng(1000 + state["step"])
    budget, planned = minutes * 60, max(1, int(minutes * 60 / step_seconds))
    tick, last_save = time.time(), time.time()
    while state["elapsed"] < budget:
        clips, prompts = world.batch(8, rng, train, frames=FRAMES, size=SIZE)
        x = to_pixels(clips)  # (B*F, 3, H, W)
        bgs = torch.tensor([world.BACKGROUNDS[world.parse_prompt(p).background] for p in prompts]).float() * 2 - 1
        bgs = bgs.repeat_interleave(FRAMES, 0)
        weight = 1 + 4 * ((x - bgs[:, :, None, None]).abs().amax(1, keepdim=True) > 0.1).float()
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample(), num_frames=FRAMES).sample
        loss = (weight * (recon - x) ** 2).mean() + 1e-6 * post.kl().mean()
        optimizer_step(opt, loss, vae.parameters(), cosine_lr(state["step"], planned, 1e-3, 50))
        state["step"] += 1
        now = time.time()
        state["elapsed"] += min(now - tick, 10.0)
        tick = now
        if state["step"] % 25 == 0:
            log(f"vae step {state['step']} loss {loss.item():.4f} ({state['elapsed']:.0f} s)")
        if now - last_save > 180:
            _save(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "state": state})
            last_save = now
    _save(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "state": state})
    with torch.no_grad():
        clips, _ = world.batch(64, np.random.default_rng(7), train, frames=FRAMES, size=SIZE)
        latents = vae.encode(to_pixels(clips)).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    log(f"vae done: {state['step']} steps, scaling_factor {vae.config.scaling_factor:.4f}")
    return vae.requires_grad_(False).eval()


def batch_loss(vae, image_encoder, unet, rng, combos, low_noise: bool, batch: int = 16) -> torch.Tensor:
    """SVD's (EDM) v-loss on one batch of world clips from ``combos``; ``low_noise``: half the batch
    at EDM's own log-normal (-1.2, 1.2)."""
    clips, prompts = world.batch(batch, rng, combos, frames=FRAMES, size=SIZE)
    b, sf = len(prompts), vae.config.scaling_factor
    x = to_pixels(clips)
    first = x.view(b, FRAMES, 3, SIZE, SIZE)[:, 0]
    aug = torch.rand(b) * MAX_AUG
    buckets = torch.tensor([rng.integers(lo, hi + 1) for lo, hi in
                            (world.MOTION_BUCKETS[world.parse_prompt(p).direction] for p in prompts)]).float()
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode()
        lat = lat.view(b, FRAMES, *lat.shape[1:]) * sf
        image_lat = vae.encode(first + aug.view(b, 1, 1, 1) * torch.randn_like(first)).latent_dist.mode()
    emb = image_encoder(clip_input(first)).image_embeds[:, None]
    keep = (torch.rand(b) >= 0.1).float()  # 10 %: no image conditioning (the pipeline's guidance uses zeros)
    emb, image_lat = emb * keep.view(b, 1, 1), image_lat * keep.view(b, 1, 1, 1)
    sigma = torch.exp(1.0 + 1.6 * torch.randn(b)).clamp(0.002, 700.0)
    if low_noise:
        sigma[: b // 2] = torch.exp(-1.2 + 1.2 * torch.randn(b // 2)).clamp(0.002, 700.0)
    s = sigma.view(b, 1, 1, 1, 1)
    noise = torch.randn_like(lat)
    scaled = (lat + s * noise) / (s ** 2 + 1).sqrt()
    inputs = torch.cat([scaled, image_lat[:, None].expand(-1, FRAMES, -1, -1, -1)], dim=2)
    fps_ids = torch.from_numpy(rng.integers(FPS_IDS[0], FPS_IDS[1] + 1, b)).float()  # any job fps is seen
    added = torch.stack([fps_ids, buckets, aug], dim=1)
    pred = unet(inputs, 0.25 * sigma.log(), encoder_hidden_states=emb, added_time_ids=added).sample
    return F.mse_loss(pred, (noise - s * lat) / (s ** 2 + 1).sqrt())


def make_pipeline(vae, image_encoder, unet):
    from asyncvid.catalog.quiet import svd_pipeline_class

    pipe = svd_pipeline_class()(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=sample_scheduler(),
                                feature_extractor=feature_extractor())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_unet(work: Path, vae, minutes: float, log, detail_from_minutes: float, eval_every_s: float = 900,
               step_seconds: float = 0.7, batch: int = 16, widths=(32, 64, 128), encoder_from: Path | None = None):
    torch.manual_seed(0)
    image_encoder, unet = build_image_encoder(), build_unet(vae_scale(vae), widths)
    if encoder_from is not None:  # start from another model's trained image encoder
        from transformers import CLIPVisionModelWithProjection

        image_encoder.load_state_dict(CLIPVisionModelWithProjection.from_pretrained(encoder_from).state_dict())
    params = list(unet.parameters()) + list(image_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.99), weight_decay=0.01)
    ema_unet, ema_enc = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(image_encoder).requires_grad_(False)
    state = {"step": 0, "elapsed": 0.0, "evals": []}
    ckpt = work / "unet.pt"
    parts = dict(unet=unet, enc=image_encoder, ema_unet=ema_unet, ema_enc=ema_enc, opt=opt)
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        for key, part in parts.items():
            part.load_state_dict(saved[key])
        state = saved["state"]
    train, held_out = world.held_out_split()
    rng = np.random.default_rng(2000 + state["step"])
    torch.manual_seed(3000 + state["step"])
    budget, planned = minutes * 60, max(1, int(minutes * 60 / step_seconds))
    detail_from_s = detail_from_minutes * 60
    last_save, last_eval, tick = time.time(), time.time(), time.time()

    def checkpoint():
        _save(ckpt, {**{key: part.state_dict() for key, part in parts.items()}, "state": state})

    while state["elapsed"] < budget:
        low_noise = state["elapsed"] >= detail_from_s  # half the batch at EDM's own (lower) noise levels: edges
        if low_noise and "detail_from_step" not in state:
            state["detail_from_step"] = state["step"]
            log(f"from step {state['step']}: half of every batch at low noise (log-normal -1.2, 1.2)")
        loss = batch_loss(vae, image_encoder, unet, rng, train, low_noise, batch)
        optimizer_step(opt, loss, params, cosine_lr(state["step"], planned, 4e-4, 200))
        state["step"] += 1
        decay = min(0.998, (1 + state["step"]) / (10 + state["step"]))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_enc, image_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.mul_(decay).add_(pl.detach(), alpha=1 - decay)
        now = time.time()
        state["elapsed"] += min(now - tick, 10.0)  # only time spent training counts
        tick = now
        if state["step"] % 50 == 0:
            log(f"unet step {state['step']} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({state['elapsed']:.0f} s)")
        if now - last_save > 180:
            checkpoint()
            last_save = now
        if now - last_eval > eval_every_s:
            scores = evaluate_i2v_pipeline(make_pipeline(vae, ema_enc, ema_unet), held_out, (0,), 20, FRAMES, SIZE)
            state["evals"].append({"step": state["step"], "elapsed_s": round(state["elapsed"]), **scores})
            log(f"eval at step {state['step']}: {scores}")
            last_eval = tick = time.time()
    checkpoint()
    return make_pipeline(vae, ema_enc, ema_unet), state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/shapes-i2v", help="checkpoints and logs (resumable)")
    ap.add_argument("--export", default="asyncvid/assets/shapes-i2v", help="where the pipeline folder goes")
    ap.add_argument("--vae-minutes", type=float, default=35)
    ap.add_argument("--unet-minutes", type=float, default=82)
    ap.add_argument("--detail-from", type=float, default=48,
                    help="UNet minutes after which half of every batch is drawn at low noise levels")
    ap.add_argument("--latent-scale", type=int, choices=sorted(VAE_WIDTHS), default=4,
                    help="how much the VAE downsamples (4: 8x8 latents, 2: 16x16)")
    ap.add_argument("--vae-step-seconds", type=float, default=0.8, help="expected; sets the cosine schedule's length")
    ap.add_argument("--unet-step-seconds", type=float, default=0.7, help="expected; sets the cosine schedule's length")
    ap.add_argument("--batch", type=int, default=16, help="UNet batch (clips)")
    ap.add_argument("--eval-minutes", type=float, default=15, help="held-out adherence (24 clips) this often")
    ap.add_argument("--unet-widths", default="32,64,128", help="the UNet's block_out_channels")
    ap.add_argument("--from-model", help="an SVD folder whose VAE is used as it is (no VAE training) and whose "
                                         "image encoder the UNet's training starts from")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = start_log(work)

    if args.from_model:  # its VAE as it is, its image encoder as the starting point
        from diffusers import AutoencoderKLTemporalDecoder

        vae = AutoencoderKLTemporalDecoder.from_pretrained(Path(args.from_model) / "vae").requires_grad_(False).eval()
        log(f"VAE from {args.from_model} (scaling_factor {vae.config.scaling_factor:.4f})")
    else:
        vae = train_vae(work, args.vae_minutes, log, args.latent_scale, args.vae_step_seconds)
    pipe, state = train_unet(work, vae, args.unet_minutes, log, args.detail_from, args.eval_minutes * 60,
                             args.unet_step_seconds, args.batch, [int(w) for w in args.unet_widths.split(",")],
                             Path(args.from_model) / "image_encoder" if args.from_model else None)
    _, held_out = world.held_out_split()
    final = evaluate_i2v_pipeline(pipe, held_out, (0, 1), 25, FRAMES, SIZE)
    log(f"final held-out adherence (48 samples, 25 steps): {final}")
    replace_folder(pipe, Path(args.export), {"latent_scale": vae_scale(vae), "unet_widths": args.unet_widths,
                                             "from_model": Path(args.from_model).name if args.from_model else None,
                                             "steps": state["step"],
                                             "unet_seconds": round(state["elapsed"]), "evals": state["evals"],
                                             "final": final}, keep_existing=False)
    log(f"exported to {args.export}")


if __name__ == "__main__":
    main()

"""Teach a shipped shapes model's VAE decoder to draw the model's own latents as the world draws shapes.

A decoder trained on its encoder's latents (``finetune_vae_decoder.py``) reconstructs ground truth
sharply, yet the UNet's latents are not the encoder's: shapes-t2v's triangles decode as three-armed
stars and shapes-i2v's squares with rounded corners, while their VAEs' own reconstructions score
100 %. This trains the decoder alone (the latent space, and so the UNet, stay exactly as they are)
on latents the pipeline itself samples for *training* prompts, 25 steps at the eval's settings. Each
sample's target is the world's own drawing of its prompt's shape, colour and background where the
sample put it (``asyncvid.eval.world.redraw``: the centroid per frame, one half-size per clip, read
from the sample as the shipped decoder draws it). Half of every batch is such pairs, the other half
clean ground-truth clips through the encoder, so reconstruction stays sharp. Held-out prompts are
never sampled, so ``asyncvid eval`` still measures how the model does on combinations it never saw.

Time on the 2-core development machine: sampling ``--clips`` (default 288: about 3 minutes), then
``--minutes`` of training (default 12), the settings of the shipped shapes-t2v decoder (2026-12-04:
held-out shape 65 -> 100 %). On shapes-i2v (384 clips, 15 minutes) it changed nothing (77 %): its
UNet's latents do not keep circles and squares apart, and a decoder cannot restore what is not there. Checkpoints every three minutes into ``--work`` (the samples
too); a rerun resumes (only time spent training counts). Seeded. The export replaces ``MODEL/vae``.

    python scripts/finetune_decoder_on_samples.py asyncvid/assets/shapes-t2v --work runs/t2v-dec
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from finetune_vae_decoder import FRAMES, SIZE, decode, export_vae, quality, train_decoder
from train_shapes_t2v import _save, start_log, to_pixels

from asyncvid.eval import world


def load_pipeline(folder: Path):
    """(pipeline, is_i2v) for a shapes-t2v (AnimateDiff) or shapes-i2v (SVD) folder, in float32."""
    from diffusers import AnimateDiffPipeline

    from asyncvid.catalog.quiet import svd_pipeline_class

    i2v = "StableVideoDiffusion" in json.loads((folder / "model_index.json").read_text())["_class_name"]
    cls = svd_pipeline_class() if i2v else AnimateDiffPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe, i2v


def sample_latents(pipe, i2v: bool, combos, seed: int) -> torch.Tensor:
    """(len(combos)*FRAMES, 4, h, w) unscaled latents the pipeline samples for ``combos``, 25 steps at
    the eval's settings (CFG 5 for text-to-video; SVD's 1 -> 3 ramp, the combination's first frame
    and direction bucket for image-to-video)."""
    from PIL import Image

    with torch.no_grad():
        if not i2v:
            out = pipe(prompt=[world.prompt_for(*c) for c in combos], num_frames=FRAMES, height=SIZE, width=SIZE,
                       num_inference_steps=25, guidance_scale=5.0, output_type="latent",
                       generator=torch.Generator().manual_seed(seed)).frames
            lat = out.permute(0, 2, 1, 3, 4)  # (B, C, F, h, w) -> (B, F, C, h, w)
        else:
            rng = np.random.default_rng(20_000 + seed)
            parts = {}
            for direction in sorted({c.direction for c in combos}):
                picked = [i for i, c in enumerate(combos) if c.direction == direction]
                images = [Image.fromarray((world.make_clip(combos[i], FRAMES, SIZE, rng)[0] * 255).round()
                                          .astype(np.uint8)) for i in picked]
                got = pipe(image=images, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=25,
                           motion_bucket_id=world.motion_bucket(direction), output_type="latent",
                           generator=torch.Generator().manual_seed(seed)).frames
                parts.update(zip(picked, got))
            lat = torch.stack([parts[i] for i in range(len(combos))])
    return lat.flatten(0, 1) / pipe.vae.config.scaling_factor


def build_pairs(pipe, i2v: bool, clips: int, log) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents (N*F, 4, h, w), targets (N*F, 3, H, W) in [-1, 1]) from ``clips`` training samples."""
    train, _ = world.held_out_split()
    rng = np.random.default_rng(11)
    latents, targets = [], []
    for seed in range(0, clips, 24):
        combos = [train[i] for i in rng.choice(len(train), size=min(24, clips - seed), replace=False)]
        lat = sample_latents(pipe, i2v, combos, seed)
        with torch.no_grad():
            pixels = ((decode(pipe.vae, i2v, lat).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        for i, combo in enumerate(combos):
            target = world.redraw(pixels[i * FRAMES:(i + 1) * FRAMES], combo)
            if target is not None:
                latents.append(lat[i * FRAMES:(i + 1) * FRAMES])
                targets.append(torch.from_numpy(target).permute(0, 3, 1, 2) * 2 - 1)
        log(f"sampled {seed + len(combos)} / {clips} clips ({len(latents)} kept)")
    return torch.cat(latents), torch.cat(targets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a shapes-t2v or shapes-i2v pipeline folder (its vae/ is replaced)")
    ap.add_argument("--work", default="runs/decoder-samples", help="samples, checkpoints and logs (resumable)")
    ap.add_argument("--clips", type=int, default=288, help="training samples drawn from the pipeline")
    ap.add_argument("--minutes", type=float, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder, work = Path(args.model), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = start_log(work)
    pipe, i2v = load_pipeline(folder)
    vae = pipe.vae
    pairs_file = work / "pairs.pt"
    if pairs_file.exists():
        pairs = torch.load(pairs_file, weights_only=True)
    else:
        pairs = dict(zip(("latents", "targets"), build_pairs(pipe, i2v, args.clips, log)))
        _save(pairs_file, pairs)
    n_clips = len(pairs["latents"]) // FRAMES
    before = quality(vae.eval(), i2v)
    log(f"{n_clips} sampled clips; reconstruction before: {before}")
    train, _ = world.held_out_split()

    def batch(rng):
        """4 sampled clips with their redrawn targets, 4 ground-truth clips through the encoder."""
        picked = rng.choice(n_clips, size=4, replace=False)
        frames = torch.cat([torch.arange(i * FRAMES, (i + 1) * FRAMES) for i in picked])
        clips, _ = world.batch(4, rng, train, frames=FRAMES, size=SIZE)
        x = to_pixels(clips)
        with torch.no_grad():
            clean = vae.encode(x).latent_dist.mode()
        target = torch.cat([pairs["targets"][frames], x])
        bg = target.flatten(2).median(dim=2).values[:, :, None, None]  # every frame's background
        weight = 1 + 4 * ((target - bg).abs().amax(1, keepdim=True) > 0.1).float()
        return torch.cat([pairs["latents"][frames], clean]), target, weight

    state = train_decoder(vae, i2v, work, args.minutes, 2e-4, 9000, batch, log)
    after = quality(vae.eval(), i2v)
    log(f"after {state['step']} steps: reconstruction {after}")
    export_vae(vae, folder, "decoder_on_samples", {"clips": n_clips, "steps": state["step"],
                                                   "seconds": round(state["elapsed"]),
                                                   "reconstruction_before": before, "reconstruction_after": after},
               log)


if __name__ == "__main__":
    main()

"""Sharpen a shipped shapes model's VAE decoder without touching its latent space.

The shape score of a shapes model can never beat its VAE's: a decoder that rounds a square's
corners makes every square read as a circle. Training only the decoder (the encoder, and so every
latent the UNet learned, stays exactly as it is) keeps the UNet valid and sharpens every video it
makes. Works on ``shapes-t2v`` (``AutoencoderKL``, frames decoded one by one) and ``shapes-i2v``
(``AutoencoderKLTemporalDecoder``, 8 frames decoded together): the same weighted MSE as the
trainers (shape pixels x5), on training combinations only, cosine learning rate from 3e-4.

Time on the 2-core development machine: ``--minutes`` (default 20); checkpoints every three minutes
into ``--work``; a rerun resumes (only time spent training counts). Seeded. Before and after, it
prints the PSNR and the adherence scores (shape included) of the decoder's reconstructions of 48
held-out clips; the export replaces ``MODEL/vae`` (written beside it, then renamed).

    python scripts/finetune_vae_decoder.py asyncvid/assets/shapes-i2v --work runs/i2v-decoder
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from train_shapes_t2v import _save, cosine_lr, optimizer_step, start_log, strip_local_paths, to_pixels

from asyncvid.eval import world
from asyncvid.eval.adherence import score_many

FRAMES, SIZE = 8, 32


def load_vae(folder: Path):
    from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

    name = json.loads((folder / "vae" / "config.json").read_text())["_class_name"]
    cls = AutoencoderKLTemporalDecoder if name == "AutoencoderKLTemporalDecoder" else AutoencoderKL
    return cls.from_pretrained(folder / "vae", torch_dtype=torch.float32), cls is AutoencoderKLTemporalDecoder


def decode(vae, temporal: bool, latents: torch.Tensor) -> torch.Tensor:
    """A temporal decoder takes whole clips (``FRAMES`` at a time); a 2D one frame by frame."""
    return vae.decode(latents, num_frames=FRAMES).sample if temporal else vae.decode(latents).sample


def quality(vae, temporal: bool) -> dict:
    """PSNR and adherence of the reconstructions of 48 held-out clips (2 per combination)."""
    _, held = world.held_out_split()
    rng = np.random.default_rng(5)
    clips = np.stack([world.make_clip(c, FRAMES, SIZE, rng) for c in held * 2])
    with torch.no_grad():
        x = to_pixels(clips)
        chunks = [x[i:i + 64] for i in range(0, len(x), 64)]
        rec = torch.cat([decode(vae, temporal, vae.encode(chunk).latent_dist.mode()) for chunk in chunks])
    rec = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy().reshape(clips.shape)
    scores = score_many(list(rec), [world.prompt_for(*c) for c in held * 2])
    psnr = float(10 * np.log10(1.0 / ((rec - clips) ** 2).mean()))
    return {"psnr_db": round(psnr, 2), **{k: scores[k] for k in ("colour", "direction", "shape", "moving")}}


def train_decoder(vae, temporal: bool, work: Path, minutes: float, peak_lr: float, seed: int, batch, log) -> dict:
    """Train ``vae.decoder`` alone (the encoder, and so the latent space, stay as they are) for
    ``minutes`` of training time, resuming from ``work/decoder.pt``; ``batch(rng)`` gives (latents,
    target frames in [-1, 1], per-pixel loss weight). Returns the state: steps and seconds."""
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.0)
    state = {"step": 0, "elapsed": 0.0}
    ckpt = work / "decoder.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        vae.decoder.load_state_dict(saved["decoder"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    rng = np.random.default_rng(seed + state["step"])
    budget, planned = minutes * 60, max(1, int(minutes * 60 / 0.6))
    tick, last_save = time.time(), time.time()

    def checkpoint():
        _save(ckpt, {"decoder": vae.decoder.state_dict(), "opt": opt.state_dict(), "state": state})

    while state["elapsed"] < budget:
        latents, target, weight = batch(rng)
        loss = (weight * (decode(vae, temporal, latents) - target) ** 2).mean()
        optimizer_step(opt, loss, params, cosine_lr(state["step"], planned, peak_lr, 20))
        state["step"] += 1
        now = time.time()
        state["elapsed"] += min(now - tick, 10.0)  # only time spent training counts
        tick = now
        if state["step"] % 25 == 0:
            log(f"step {state['step']} loss {loss.item():.4f} ({state['elapsed']:.0f} s)")
        if now - last_save > 180:
            checkpoint()
            last_save = now
    checkpoint()
    return state


def export_vae(vae, folder: Path, key: str, record: dict, log) -> None:
    """Replace ``folder/vae`` with ``vae`` (fp16 safetensors, written beside it, then renamed) and
    add ``record`` to ``folder/training.json`` under ``key``."""
    tmp = folder / ".vae.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    strip_local_paths(tmp)
    shutil.rmtree(folder / "vae")
    tmp.rename(folder / "vae")
    record_file = folder / "training.json"
    records = json.loads(record_file.read_text()) if record_file.is_file() else {}
    records[key] = record
    record_file.write_text(json.dumps(records, indent=2))
    log(f"exported {folder / 'vae'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a shapes pipeline folder (its vae/ is replaced)")
    ap.add_argument("--work", default="runs/vae-decoder", help="checkpoints and logs (resumable)")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder, work = Path(args.model), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = start_log(work)
    vae, temporal = load_vae(folder)
    before = quality(vae.eval(), temporal)
    log(f"before: {before}")
    train, _ = world.held_out_split()

    def batch(rng):
        clips, prompts = world.batch(8, rng, train, frames=FRAMES, size=SIZE)
        x = to_pixels(clips)
        bgs = torch.tensor([world.BACKGROUNDS[world.parse_prompt(p).background] for p in prompts]).float() * 2 - 1
        weight = 1 + 4 * ((x - bgs.repeat_interleave(FRAMES, 0)[:, :, None, None]).abs().amax(1, keepdim=True) > 0.1)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mode()
        return latents, x, weight.float()

    state = train_decoder(vae, temporal, work, args.minutes, 3e-4, 7000, batch, log)
    after = quality(vae.eval(), temporal)
    log(f"after {state['step']} steps: {after}")
    export_vae(vae, folder, "decoder_finetune", {"steps": state["step"], "seconds": round(state["elapsed"]),
                                                 "before": before, "after": after}, log)


if __name__ == "__main__":
    main()

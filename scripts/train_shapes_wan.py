"""Train ``shapes-wan``: a small Wan-format text-to-video model of the procedural shapes world.

The DiT counterpart of ``shapes-t2v``, so that the fidelity cost of asynchronous transformer stages is
measured on a model whose neighbouring steps mean something. Built from configs, trained from
scratch on CPU, exported as a standard ``WanPipeline`` folder (fp16 safetensors) that stock
diffusers loads offline:

* tokenizer: the word-level CLIP BPE of ``train_shapes_t2v.py`` (every world word one token);
* text encoder: ``UMT5EncoderModel`` (width 64, 2 layers), trained jointly with linear attribute
  probes that keep the direction words apart (see ``AttributeProbes`` there);
* VAE: ``AutoencoderKLWan`` (causal 3D convolutions, 8 latent channels, 4x spatial and 4x temporal
  compression: 9 frames of 32x32 -> 3 x 8 x 8 latents), trained first, its per-channel latent mean
  and std written to its config as Wan's pipelines expect;
* ``WanTransformer3DModel``: 6 blocks of width 128 (4 heads), patch (1, 1, 1): 192 tokens a clip;
* scheduler: ``UniPCMultistepScheduler`` on flow sigmas (shift 3), as Wan 2.1 ships.

Objective: flow matching (the transformer predicts noise - clean latent at sigma = t / 1000, sigmas
drawn uniformly and shifted by 3 like the sampler's), 10 % empty prompts for guidance, EMA 0.998,
batches of direction contrasts (one shape, colour and background in all four directions). Text is
encoded as ``WanPipeline`` does: the encoder's states for the prompt's tokens, zeros to 512 tokens.

Time on the 2-core development machine (one process, 2 threads, nothing else running): VAE
``--vae-minutes`` (default 10), transformer ``--dit-minutes`` (default 75). Checkpoints every three
minutes into ``--work``; a rerun resumes (the minutes are totals; only time spent training counts).
Seeded.

    python scripts/train_shapes_wan.py --work runs/shapes-wan --export asyncvid/assets/shapes-wan
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from train_shapes_t2v import (AttributeProbes, _save, contrast_batch, cosine_lr, optimizer_step, start_log,
                              word_tokenizer)

from asyncvid.eval import world
from asyncvid.eval.adherence import evaluate_pipeline

FRAMES, SIZE, TEXT_LEN, PROMPT_TOKENS, SHIFT = 9, 32, 512, 16, 3.0
LATENT = 8


def build_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=24, z_dim=LATENT, dim_mult=[1, 2, 2], num_res_blocks=1,
                            temperal_downsample=[True, True], scale_factor_spatial=4, scale_factor_temporal=4,
                            latents_mean=[0.0] * LATENT, latents_std=[1.0] * LATENT)


def build_text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                       relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                       pad_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
                                       decoder_start_token_id=vocab_size - 1, dropout_rate=0.0))


def build_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 1, 1), num_attention_heads=4, attention_head_dim=32, in_channels=LATENT,
                                 out_channels=LATENT, text_dim=64, freq_dim=64, ffn_dim=384, num_layers=6,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def sample_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT,
                                   num_train_timesteps=1000)


def to_video(clips: np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) in [0, 1] -> (B, 3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(clips).float().permute(0, 4, 1, 2, 3) * 2 - 1


def encode_text(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """As ``WanPipeline`` encodes: the states of the prompt's tokens, zeros up to 512 tokens (the
    encoder runs on the first 16 positions only: with the mask its outputs there are the same)."""
    tokens = tokenizer(prompts, padding="max_length", max_length=PROMPT_TOKENS, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    states = text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    states = states * tokens.attention_mask[..., None].to(states.dtype)
    return F.pad(states, (0, 0, 0, TEXT_LEN - PROMPT_TOKENS))


def train_vae(work: Path, minutes: float, log):
    vae = build_vae()
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
    budget, planned = minutes * 60, max(1, int(minutes * 60 / 1.0))
    tick, last_save = time.time(), time.time()
    while state["elapsed"] < budget:
        clips, prompts = world.batch(8, rng, train, frames=FRAMES, size=SIZE)
        x = to_video(clips)
        bgs = torch.tensor([world.BACKGROUNDS[world.parse_prompt(p).background] for p in prompts]).float() * 2 - 1
        weight = 1 + 4 * ((x - bgs[:, :, None, None, None]).abs().amax(1, keepdim=True) > 0.1).float()
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
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
        clips, _ = world.batch(48, np.random.default_rng(7), train, frames=FRAMES, size=SIZE)
        latents = vae.encode(to_video(clips)).latent_dist.mode()
    mean, std = latents.mean(dim=(0, 2, 3, 4)), latents.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=[round(float(v), 5) for v in mean],
                           latents_std=[round(float(v), 5) for v in std])
    log(f"vae done: {state['step']} steps; latent std per channel {[round(float(v), 3) for v in std]}")
    return vae.requires_grad_(False).eval()


def make_pipeline(vae, text_encoder, tokenizer, transformer):
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=sample_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_dit(work: Path, vae, minutes: float, log, eval_every_s: float = 900):
    tokenizer = word_tokenizer(TEXT_LEN)
    torch.manual_seed(0)
    text_encoder = build_text_encoder(len(tokenizer))
    transformer = build_transformer()
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.99), weight_decay=0.01)
    probes = AttributeProbes(text_encoder.config.d_model)
    probe_opt = torch.optim.AdamW(probes.parameters(), lr=1e-3)
    ema_dit, ema_te = copy.deepcopy(transformer).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    state = {"step": 0, "elapsed": 0.0, "evals": []}
    ckpt = work / "dit.pt"
    parts = dict(dit=transformer, te=text_encoder, ema_dit=ema_dit, ema_te=ema_te, opt=opt, probes=probes,
                 probe_opt=probe_opt)
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        for key, part in parts.items():
            part.load_state_dict(saved[key])
        state = saved["state"]
    mean = torch.tensor(vae.config.latents_mean).view(1, LATENT, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, LATENT, 1, 1, 1)
    train, held_out = world.held_out_split()
    rng = np.random.default_rng(2000 + state["step"])
    torch.manual_seed(3000 + state["step"])
    budget, planned = minutes * 60, max(1, int(minutes * 60 / 0.6))
    last_save, last_eval, tick = time.time(), time.time(), time.time()

    def checkpoint():
        _save(ckpt, {**{key: part.state_dict() for key, part in parts.items()}, "state": state})

    while state["elapsed"] < budget:
        clips, prompts = contrast_batch(rng, train, groups=4, frames=FRAMES)
        prompts = ["" if rng.random() < 0.1 else p for p in prompts]
        with torch.no_grad():
            lat = (vae.encode(to_video(clips)).latent_dist.mode() - mean) / std
        b = lat.shape[0]
        noise = torch.randn_like(lat)
        u = torch.rand(b)
        sigma = SHIFT * u / (1 + (SHIFT - 1) * u)
        s = sigma.view(b, 1, 1, 1, 1)
        noisy = (1 - s) * lat + s * noise
        text = encode_text(tokenizer, text_encoder, prompts)
        pred = transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text,
                           return_dict=False)[0]
        loss = F.mse_loss(pred, noise - lat) + 0.05 * probes.loss(text[:, :PROMPT_TOKENS], prompts)
        probe_opt.zero_grad()
        optimizer_step(opt, loss, params, cosine_lr(state["step"], planned, 4e-4, 200))
        probe_opt.step()
        state["step"] += 1
        decay = min(0.998, (1 + state["step"]) / (10 + state["step"]))
        with torch.no_grad():
            for ema, live in ((ema_dit, transformer), (ema_te, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.mul_(decay).add_(pl.detach(), alpha=1 - decay)
        now = time.time()
        state["elapsed"] += min(now - tick, 10.0)  # only time spent training counts
        tick = now
        if state["step"] % 50 == 0:
            log(f"dit step {state['step']} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({state['elapsed']:.0f} s)")
        if now - last_save > 180:
            checkpoint()
            last_save = now
        if now - last_eval > eval_every_s:
            scores = evaluate_pipeline(make_pipeline(vae, ema_te, tokenizer, ema_dit), held_out, (0,), 20, 5.0,
                                       FRAMES, SIZE)
            state["evals"].append({"step": state["step"], "elapsed_s": round(state["elapsed"]), **scores})
            log(f"eval at step {state['step']}: {scores}")
            last_eval = tick = time.time()
    checkpoint()
    return make_pipeline(vae, ema_te, tokenizer, ema_dit), state


def export(pipe, out: Path) -> None:
    """fp16 safetensors; ``model_index.json`` also names the size trained at (a private key that
    diffusers skips: Wan's configs name no size, so asyncvid jobs would otherwise render 480x832)."""
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    index = json.loads((out / "model_index.json").read_text())
    index["_asyncvid_size"] = [SIZE, SIZE]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/shapes-wan", help="checkpoints and logs (resumable)")
    ap.add_argument("--export", default="asyncvid/assets/shapes-wan", help="where the pipeline folder goes")
    ap.add_argument("--vae-minutes", type=float, default=10)
    ap.add_argument("--dit-minutes", type=float, default=75)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = start_log(work)

    vae = train_vae(work, args.vae_minutes, log)
    pipe, state = train_dit(work, vae, args.dit_minutes, log)
    _, held_out = world.held_out_split()
    final = evaluate_pipeline(pipe, held_out, (0, 1), 25, 5.0, FRAMES, SIZE)
    log(f"final held-out adherence (48 samples, 25 steps, CFG 5): {final}")
    out = Path(args.export)
    export(pipe, out)
    (out / "training.json").write_text(json.dumps({"steps": state["step"], "dit_seconds": round(state["elapsed"]),
                                                   "evals": state["evals"], "final": final}, indent=2))
    log(f"exported to {out}")


if __name__ == "__main__":
    main()

"""Train asyncvid's embedded default text-to-video model, ``shapes-t2v``, on the procedural shapes world.

Everything is built from configs and trained from scratch on CPU: a word-level CLIP tokenizer, a
small AutoencoderKL (32x32 frames -> 8x8x4 latents), a CLIP text encoder (hidden 64, 2 layers) and
a UNetMotionModel (32/64/128 channels) trained jointly with it; the result is a standard
``AnimateDiffPipeline`` folder (fp16 safetensors) that stock diffusers loads offline.

Recipe: v-prediction on a scaled_linear schedule rescaled to zero terminal SNR, 10% empty prompts
(for CFG), EMA 0.998, and batches built as *direction contrasts* (the same shape, colour and
background moving in all four directions), so that the only thing that tells the four clips apart
is the direction word. Stage 1 (``--unet-minutes``) weights the loss min-SNR-5; that weight all but
vanishes at high noise, which is where a clip's layout, and so its direction, is decided. Stage 2
(``--stage2-minutes``) continues with the plain v-loss and half of every batch at t >= T/2.

Time on the 2-core development machine (one process, 2 threads, nothing else running): VAE phase
``--vae-minutes`` (default 9), UNet stage 1 ``--unet-minutes`` (default 33), stage 2
``--stage2-minutes`` (default 90). Every phase checkpoints every few minutes into ``--work`` and
resumes from there when run again (the minutes are totals, so a rerun continues until they are
used up; in the UNet stages only time spent training counts, so a run paused with SIGSTOP keeps
its budget). Seeded.

    python scripts/train_shapes_t2v.py --work runs/shapes --export asyncvid/assets/shapes-t2v
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asyncvid.eval import world
from asyncvid.eval.adherence import evaluate_pipeline

FRAMES, SIZE, MAX_TOKENS = 8, 32, 16


# ----------------------------------------------------------------------------- components
def word_tokenizer(max_length: int = MAX_TOKENS):
    """Byte-level CLIP BPE whose merges spell every world word as one token."""
    from transformers import CLIPTokenizer

    from asyncvid.catalog.presets import _byte_symbols

    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(s, len(vocab))
    merges: list[tuple[str, str]] = []
    words = sorted({w for ws in world.VOCABULARY.values() for w in ws} | {"a", "moving", "on", "background"})
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    # The loop above lets an earlier word's merge pre-empt a later word's (("r", "i") from "right" splits
    # "triangle"). Fix-up merges rank after all others, so they join what remains without changing any
    # other word or any token id (every prefix is already in the vocabulary).
    ranks = {pair: i for i, pair in enumerate(merges)}
    for word in words:
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in ranks:
                ranks[(left, right)] = len(merges)
                merges.append((left, right))
            left = left + right
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    for word in words:
        if len(tokenizer.tokenize(word)) != 1:
            raise AssertionError(f"tokenizer splits {word!r} into {tokenizer.tokenize(word)}")
    return tokenizer


def _bpe(pieces: list[str], ranks: dict) -> list[str]:
    """CLIP's BPE: repeatedly join the adjacent pair with the lowest merge rank."""
    while len(pieces) > 1:
        rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(pieces, pieces[1:])))
        if rank == math.inf:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64, 128], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                         latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=SIZE)


def build_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                        vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS,
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                        pad_token_id=vocab_size - 1))


def build_unet():
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet2d = UNet2DConditionModel(
        block_out_channels=(32, 64, 128), layers_per_block=1, sample_size=SIZE // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, norm_num_groups=8, attention_head_dim=8)
    adapter = MotionAdapter(block_out_channels=(32, 64, 128), motion_layers_per_block=1, motion_norm_num_groups=8,
                            motion_num_attention_heads=4, motion_max_seq_length=32, use_motion_mid_block=True)
    return UNetMotionModel.from_unet2d(unet2d, adapter)


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False)


def sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False,
                         timestep_spacing="trailing", set_alpha_to_one=True)


# ----------------------------------------------------------------------------- data
def contrast_batch(rng: np.random.Generator, combos, groups: int, frames: int = FRAMES):
    """``groups`` x 4 clips: each group is one shape/colour/background in all four directions."""
    keys = sorted({(c.shape, c.colour, c.background) for c in combos})
    allowed = set(combos)
    clips, prompts = [], []
    for _ in range(groups):
        shape, colour, bg = keys[rng.integers(len(keys))]
        for direction in world.VOCABULARY["direction"]:
            combo = world.Combo(shape, colour, direction, bg)
            if combo not in allowed:  # held-out combination: replace by a random training one
                combo = combos[rng.integers(len(combos))]
            clips.append(world.make_clip(combo, frames, SIZE, rng))
            prompts.append(world.prompt_for(*combo))
    return np.stack(clips), prompts


def to_pixels(clips: np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) in [0, 1] -> (B*F, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(clips).float().flatten(0, 1).permute(0, 3, 1, 2)
    return x * 2 - 1


# ----------------------------------------------------------------------------- phases
def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(work: Path, minutes: float, log):
    vae = build_vae()
    ckpt = work / "vae.pt"
    state = {"step": 0, "elapsed": 0.0}
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        vae.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
    rng = np.random.default_rng(1000 + state["step"])
    train, _ = world.held_out_split()
    budget = minutes * 60
    planned = max(1, int(budget / 0.45))
    start, last_save = time.time() - state["elapsed"], time.time()
    while time.time() - start < budget:
        clips, prompts = world.batch(32, rng, train, frames=2, size=SIZE)  # 64 frames of 32 clips
        x = to_pixels(clips)
        prompts = [p for p in prompts for _ in range(2)]
        bgs = torch.tensor([world.BACKGROUNDS[world.parse_prompt(p).background] for p in prompts]).float() * 2 - 1
        weight = 1 + 4 * ((x - bgs[:, :, None, None]).abs().amax(1, keepdim=True) > 0.1).float()  # shape pixels x5
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = (weight * (recon - x) ** 2).mean() + 1e-6 * post.kl().mean()
        for group in opt.param_groups:
            group["lr"] = cosine_lr(state["step"], planned, 1e-3, 50)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        if state["step"] % 50 == 0:
            log(f"vae step {state['step']} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
        if time.time() - last_save > 180:
            state["elapsed"] = time.time() - start
            _save(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "state": state})
            last_save = time.time()
    state["elapsed"] = time.time() - start
    _save(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "state": state})
    with torch.no_grad():
        clips, _ = world.batch(64, np.random.default_rng(7), train, frames=8, size=SIZE)
        latents = vae.encode(to_pixels(clips)).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    log(f"vae done: {state['step']} steps, scaling_factor {vae.config.scaling_factor:.4f}")
    return vae


def start_log(work: Path):
    """A ``log(msg)`` that prints a time-stamped line and appends it to ``work/train.log``."""
    logfile = open(work / "train.log", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    return log


def optimizer_step(opt, loss: torch.Tensor, params, lr: float) -> None:
    """One step of ``opt`` on ``loss`` at learning rate ``lr``, gradients clipped to norm 1."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def strip_local_paths(folder: Path) -> None:
    """Drop the ``_name_or_path`` that ``from_pretrained`` records (a path on this machine) from every
    config a ``save_pretrained`` wrote under ``folder``."""
    for config in folder.rglob("config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def replace_folder(pipe, out: Path, records: dict, keep_existing: bool = True) -> None:
    """Save ``pipe`` (fp16 safetensors, local paths stripped) as ``out``: written beside it, then renamed
    over it. ``records`` go into ``training.json``; with ``keep_existing`` they join the old folder's
    records, and its files the pipeline does not write (eval.json) are kept."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    strip_local_paths(tmp)
    old_file = out / "training.json"
    old = json.loads(old_file.read_text()) if keep_existing and old_file.is_file() else {}
    (tmp / "training.json").write_text(json.dumps({**old, **records}, indent=2))
    if out.exists():
        for extra in out.iterdir() if keep_existing else ():
            if extra.is_file() and not (tmp / extra.name).exists():
                shutil.copy2(extra, tmp / extra.name)
        shutil.rmtree(out)
    tmp.rename(out)


def _save(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class AttributeProbes(torch.nn.Module):
    """Linear read-outs of every prompt attribute from the mean text-encoder state (training only).

    Trained jointly, the text encoder let the direction words collapse onto each other (their
    outputs differed by ~2% of their norm, against ~150% for colour words), so the UNet had nothing
    to follow: nothing rewarded keeping them apart before the UNet could use them. These probes do.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(v)) for k, v in world.VOCABULARY.items()})

    def loss(self, text: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        keep = [i for i, p in enumerate(prompts) if p]
        pooled = text[keep].mean(dim=1)
        parsed = [world.parse_prompt(prompts[i]) for i in keep]
        total = text.new_zeros(())
        for key, head in self.heads.items():
            target = torch.tensor([world.VOCABULARY[key].index(getattr(c, key)) for c in parsed])
            total = total + F.cross_entropy(head(pooled), target)
        return total


def encode_prompts(tokenizer, text_encoder, prompts):
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def make_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=None, scheduler=sample_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(pipe, combos, seeds=(0,), steps=20, guidance=4.0) -> dict:
    return evaluate_pipeline(pipe, combos, seeds, steps, guidance, FRAMES, SIZE)


def train_unet(work: Path, vae, minutes: float, log, stage2_minutes: float = 0.0, stage3_minutes: float = 0.0,
               eval_every_s: float = 600):
    import copy

    tokenizer = word_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    torch.manual_seed(0)
    unet = build_unet()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.99), weight_decay=0.01)
    probes = AttributeProbes(text_encoder.config.hidden_size)
    probe_opt = torch.optim.AdamW(probes.parameters(), lr=1e-3)
    ema_unet, ema_te = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    state = {"step": 0, "elapsed": 0.0, "evals": []}
    ckpt = work / "unet.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        unet.load_state_dict(saved["unet"])
        text_encoder.load_state_dict(saved["te"])
        ema_unet.load_state_dict(saved["ema_unet"])
        ema_te.load_state_dict(saved["ema_te"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        if "probes" in saved:
            probes.load_state_dict(saved["probes"])
            probe_opt.load_state_dict(saved["probe_opt"])
    vae.requires_grad_(False)
    sched = train_scheduler()
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    train, held_out = world.held_out_split()
    rng = np.random.default_rng(2000 + state["step"])
    torch.manual_seed(3000 + state["step"])
    stage1, stage3_at = minutes * 60, (minutes + stage2_minutes) * 60
    budget = (minutes + stage2_minutes + stage3_minutes) * 60
    planned, planned2 = max(1, int(stage1 / 0.5)), max(1, int((budget - stage1) / 0.85))
    last_save, last_eval, tick = time.time(), time.time(), time.time()
    sf = vae.config.scaling_factor

    def checkpoint():
        _save(ckpt, {"unet": unet.state_dict(), "te": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
                     "ema_te": ema_te.state_dict(), "opt": opt.state_dict(), "state": state,
                     "probes": probes.state_dict(), "probe_opt": probe_opt.state_dict()})

    while state["elapsed"] < budget:
        stage2 = state["elapsed"] >= stage1
        if stage2 and "stage2_from_step" not in state:
            state["stage2_from_step"] = state["step"]
            log(f"stage 2 from step {state['step']}: plain v-loss, half the batch at high noise")
        stage3 = state["elapsed"] >= stage3_at
        if stage3 and "stage3_from_step" not in state:
            state["stage3_from_step"] = state["step"]
            log(f"stage 3 from step {state['step']}: + attribute probes on the text encoder")
        clips, prompts = contrast_batch(rng, train, groups=4)
        prompts = ["" if rng.random() < 0.1 else p for p in prompts]
        with torch.no_grad():
            lat = vae.encode(to_pixels(clips)).latent_dist.mode() * sf
        b = clips.shape[0]
        lat = lat.reshape(b, FRAMES, 4, SIZE // 4, SIZE // 4).permute(0, 2, 1, 3, 4)
        noise = torch.randn_like(lat)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,))
        if stage2:  # the direction is decided at high noise: sample half the batch there
            t[: b // 2] = torch.randint(sched.config.num_train_timesteps // 2, sched.config.num_train_timesteps, (b // 2,))
        noisy = sched.add_noise(lat, noise, t)
        target = sched.get_velocity(lat, noise, t)
        text = encode_prompts(tokenizer, text_encoder, prompts)
        ehs = text.repeat_interleave(FRAMES, 0)
        pred = unet(noisy, t, encoder_hidden_states=ehs).sample
        # Stage 1: min-SNR-5. It nearly zeroes the high-noise steps, where the layout (and so the
        # direction) is chosen, hence stage 2's plain v-loss.
        weight = torch.ones(b) if stage2 else (torch.clamp(snr[t], max=5.0) / (snr[t] + 1)).float()
        loss = (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3, 4))).mean()
        if stage3:
            loss = loss + 0.05 * probes.loss(text, prompts)
        for group in opt.param_groups:
            group["lr"] = (cosine_lr(state["step"] - state["stage2_from_step"], planned2, 3e-4, 50) if stage2
                           else cosine_lr(state["step"], planned, 6e-4, 200))
        opt.zero_grad()
        probe_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if stage3:
            probe_opt.step()
        state["step"] += 1
        decay = min(0.998, (1 + state["step"]) / (10 + state["step"]))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_te, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.mul_(decay).add_(pl.detach(), alpha=1 - decay)
        # Only time spent training counts, so a run paused with SIGSTOP keeps its budget.
        now = time.time()
        state["elapsed"] += min(now - tick, 10.0)
        tick = now
        if state["step"] % 50 == 0:
            log(f"unet step {state['step']} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({state['elapsed']:.0f} s)")
        if time.time() - last_save > 180:
            checkpoint()
            last_save = time.time()
        if time.time() - last_eval > eval_every_s:
            scores = evaluate(make_pipeline(vae, ema_te, tokenizer, ema_unet), held_out)
            state["evals"].append({"step": state["step"], "elapsed_s": round(state["elapsed"]), **scores})
            log(f"eval at step {state['step']}: {scores}")
            last_eval = tick = time.time()
    checkpoint()
    return make_pipeline(vae, ema_te, tokenizer, ema_unet), state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/shapes", help="checkpoints and logs (resumable)")
    ap.add_argument("--export", default="asyncvid/assets/shapes-t2v", help="where the pipeline folder goes")
    ap.add_argument("--vae-minutes", type=float, default=9)
    ap.add_argument("--unet-minutes", type=float, default=33)
    ap.add_argument("--stage2-minutes", type=float, default=24.69)
    ap.add_argument("--stage3-minutes", type=float, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = start_log(work)

    vae = train_vae(work, args.vae_minutes, log)
    pipe, state = train_unet(work, vae, args.unet_minutes, log, args.stage2_minutes, args.stage3_minutes)
    _, held_out = world.held_out_split()
    final = evaluate(pipe, held_out, seeds=(0, 1), steps=25, guidance=5.0)
    log(f"final held-out adherence (48 samples, 25 steps, CFG 5): {final}")
    out = Path(args.export)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    (out / "training.json").write_text(json.dumps({"steps": state["step"], "unet_seconds": round(state["elapsed"]),
                                                   "evals": state["evals"], "final": final}, indent=2))
    log(f"exported to {out}")


if __name__ == "__main__":
    main()

"""Prompt adherence of shapes-world clips, judged from pixels only.

The scorer needs nothing but the frames and the prompt, so it scores ground truth, VAE
reconstructions and generated samples alike. The prompt supplies the background colour; the
scorer finds the shape's colour and direction of motion and compares them with the prompt's.

* **Foreground**: pixels more than ``FG_THRESHOLD`` = 0.43 (RGB Euclidean, [0,1] scale) from the
  prompt's background. Every palette colour is at least 0.866 from either background (any
  RGB-cube corner to mid-gray; on black the least is 1.0), so 0.43 is about half of the smallest
  gap. A pixel thus counts as shape once it is at least half-way from the background to
  the shape colour. That keeps half-covered anti-aliased edges, and it tolerates a background
  tint or shape-colour error of up to about 0.43 before the mask goes wrong.
* **Colour**: the majority vote over all foreground pixels of all frames of the nearest palette
  colour. "Nearest" is measured to the segment from the background to each palette colour rather
  than to the colour itself, so a partly covered or blurred edge pixel (a mix of shape and
  background) votes for the colour it is a mix of. Plain nearest-corner voting on black sends
  such pixels of yellow, cyan, magenta and white to a primary colour.
* **Direction**: the per-frame centroid of the foreground, weighted by each pixel's distance from
  the background. A least-squares line is fitted to it over time, and its slope is taken over the
  whole clip. The larger axis component gives the direction and its sign gives which way. Less
  than ``MIN_MOTION_PX`` = 2 px of travel at size 32 (scaled with the frame size) counts as
  "static", which never matches a prompt. Ground truth travels 12.6-16.8 px.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..video import to_float
from .world import BACKGROUNDS, COLOURS, parse_prompt

FG_THRESHOLD = 0.43
MIN_MOTION_PX = 2.0  # at size 32

_NAMES = tuple(COLOURS)
_PALETTE = np.asarray([COLOURS[c] for c in _NAMES], np.float32)  # (K, 3)


def foreground(frames: np.ndarray, background: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask, distance): the (F,H,W) foreground mask and every pixel's distance from the background
    colour, for float frames in [0, 1]."""
    bg = np.asarray(BACKGROUNDS[background], np.float32)
    dist = np.linalg.norm(frames - bg, axis=-1)
    return dist > FG_THRESHOLD, dist


def _colour_votes(pixels: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """For each pixel (N,3), the index of the palette colour whose background-to-colour segment
    passes closest to it."""
    rel = pixels - bg  # (N, 3)
    axis = _PALETTE - bg  # (K, 3)
    t = np.clip(rel @ axis.T / np.sum(axis * axis, axis=1), 0.0, 1.0)  # (N, K)
    miss = rel[:, None, :] - t[..., None] * axis[None]  # (N, K, 3)
    return np.argmin(np.sum(miss * miss, axis=-1), axis=1)


def _direction(mask: np.ndarray, dist: np.ndarray) -> str:
    frames, height, width = mask.shape
    w = np.where(mask, dist, 0.0)
    mass = w.sum(axis=(1, 2))
    seen = mass > 0
    if seen.sum() < 2:
        return "static"
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    cx = (w.sum(axis=1) @ xs)[seen] / mass[seen]
    cy = (w.sum(axis=2) @ ys)[seen] / mass[seen]
    t = np.arange(frames, dtype=np.float64)[seen]
    t = t - t.mean()
    # Least-squares slope (px/frame) times the clip's length = fitted travel over the clip.
    travel_x = (t @ cx) / (t @ t) * (frames - 1)
    travel_y = (t @ cy) / (t @ t) * (frames - 1)
    min_motion = MIN_MOTION_PX * (height + width) / 64.0
    if max(abs(travel_x), abs(travel_y)) < min_motion:
        return "static"
    if abs(travel_x) >= abs(travel_y):
        return "right" if travel_x > 0 else "left"
    return "down" if travel_y > 0 else "up"


def score_clip(frames, prompt: str) -> dict:
    """Score one clip (F,H,W,3), float in [0, 1] or uint8, against its shapes-world prompt.

    Returns dict(colour_ok, direction_ok, colour, direction). ``colour`` is "none" when no
    pixel is foreground, and ``direction`` is "static" when the shape does not move enough.
    Raises ValueError for a prompt outside the world's vocabulary.
    """
    want = parse_prompt(prompt)
    frames = to_float(frames)
    mask, dist = foreground(frames, want.background)
    if mask.any():
        bg = np.asarray(BACKGROUNDS[want.background], np.float32)
        votes = np.bincount(_colour_votes(frames[mask], bg), minlength=len(_NAMES))
        colour = _NAMES[int(np.argmax(votes))]
    else:
        colour = "none"
    direction = _direction(mask, dist)
    return {
        "colour_ok": colour == want.colour,
        "direction_ok": direction == want.direction,
        "colour": colour,
        "direction": direction,
    }


def score_many(clips: Sequence, prompts: Sequence[str]) -> dict:
    """Score clips against their prompts. Returns dict(colour, direction, n, per_clip): the
    fractions of clips with the right colour and with the right direction (NaN when n is 0),
    the number of clips, and each clip's :func:`score_clip` result."""
    if len(clips) != len(prompts):
        raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts")
    per_clip = [score_clip(clip, prompt) for clip, prompt in zip(clips, prompts)]
    n = len(per_clip)

    def fraction(key):
        return sum(r[key] for r in per_clip) / n if n else float("nan")

    return {
        "colour": fraction("colour_ok"),
        "direction": fraction("direction_ok"),
        "n": n,
        "per_clip": per_clip,
    }


def evaluate_pipeline(pipe, combos, seeds=(0,), steps: int = 25, guidance: float = 5.0, frames: int = 8,
                      size: int = 32) -> dict:
    """Render every combination's prompt with ``pipe`` (one batched call per seed) and score the clips."""
    import torch

    from .world import prompt_for

    prompts = [prompt_for(*c) for c in combos]
    clips, all_prompts = [], []
    with torch.no_grad():
        for seed in seeds:
            out = pipe(prompt=prompts, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                       guidance_scale=guidance, output_type="np", generator=torch.Generator().manual_seed(seed))
            clips += list(out.frames)
            all_prompts += prompts
    result = score_many(clips, all_prompts)
    return {"colour": result["colour"], "direction": result["direction"], "n": result["n"],
            "steps": steps, "guidance": guidance, "seeds": list(seeds)}

"""Predicted speed of an AsyncDiff configuration from a unit profile: what ``asyncvid plan`` prints
and what ``asyncvid bench`` shows beside each measured speedup.

Model (per denoising step, one device per stage, each as fast as the profiling device):

* sequential step  = sum of unit costs + ``overhead`` (scheduler, CFG mixing: the pipeline's
  work outside the UNet, done once per step by the driver);
* parallel round   = max over stages of the stage's time + one control-message latency. A stage's
  time is its compute (the driver's stage also does the per-step overhead for each of the
  ``stride`` steps the round serves) plus, on links that do not overlap compute (CPU ranks: the
  copies run on the rank's own core), its incoming and outgoing transfer (latency + bytes /
  bandwidth each). On links that do (GPUs: a stage receives the next input while it computes the
  current one), only the part of the slowest transfer that outlasts the receiving stage's compute;
* per step         = round / stride; a video = ``warmup`` sequential steps + the rounds that
  serve the remaining steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import AsyncVidError
from ..engine.split import balanced_ranges
from .links import LINKS, LinkModel


@dataclass
class Prediction:
    stages: int
    stride: int
    warmup: int
    steps: int
    ranges: list[tuple[int, int]]
    stage_s: list[float]  # compute per stage per round (the driver's includes the per-step overhead)
    cut_bytes: list[int]  # bytes leaving stage k per round (k < N-1), then eps back to the driver
    exposed_comm_s: float
    sequential_step_s: float
    round_s: float
    per_step_s: float
    speedup_per_step: float
    sequential_video_s: float
    video_s: float
    speedup_per_video: float

    def to_dict(self) -> dict:
        return asdict(self)


def predict(costs: list[float], bytes_after_unit: list[int], stages: int, stride: int = 1, warmup: int = 1,
            steps: int = 25, overhead_s: float = 0.0, link: LinkModel = LINKS["loopback"], eps_bytes: int = 0,
            ranges: list[tuple[int, int]] | None = None) -> Prediction:
    """Predict one configuration. ``bytes_after_unit[i]`` is the carried state's size after unit i;
    ``eps_bytes`` what the last stage returns to the driver."""
    if stages < 1 or stride < 1 or warmup < 0 or steps < 1:
        raise AsyncVidError("stages, stride and steps must be >= 1 and warmup >= 0")
    if len(costs) < stages:
        raise AsyncVidError(f"cannot cut {len(costs)} units into {stages} stages")
    ranges = ranges or balanced_ranges(costs, stages)
    compute = [sum(costs[a:b]) for a, b in ranges]
    sequential = sum(costs) + overhead_s
    if stages == 1 and stride == 1:
        stage_s, cuts, exposed, round_s = [sequential], [], 0.0, sequential
    else:
        cuts = [bytes_after_unit[b - 1] for _, b in ranges[:-1]] + ([eps_bytes] if stages > 1 else [])
        stage_s = [compute[0] + overhead_s * stride] + compute[1:]
        send = [c / link.bytes_per_s + link.latency_s for c in cuts]  # stage k sends cut k
        if stages == 1:
            exposed, round_s = 0.0, stage_s[0]
        elif link.overlaps_compute:
            receivers = compute[1:] + compute[:1]  # cut k feeds stage k+1; the last feeds the driver
            exposed = max(max(0.0, t - r) for t, r in zip(send, receivers))
            round_s = max(stage_s) + exposed + link.latency_s
        else:  # stage k receives cut k-1 (the driver: the eps) and sends cut k, on its own core
            busy = [s + send[k] + send[k - 1] for k, s in enumerate(stage_s)]
            exposed = max(busy) - max(stage_s)
            round_s = max(busy) + link.latency_s
    per_step = round_s / stride
    warm = min(warmup, steps)
    video = warm * sequential + math.ceil((steps - warm) / stride) * round_s
    return Prediction(stages, stride, warmup, steps, [tuple(r) for r in ranges], stage_s, cuts, exposed, sequential,
                      round_s, per_step, sequential / per_step, steps * sequential, video, steps * sequential / video)

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
  serve the remaining steps;
* with ``cfg`` stage groups, each group's stages run on its part of the guidance batch; the
  round is the slower of rank 0's group (pipeline work, sending the parts) and the others
  (receiving a part and returning its prediction).
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
    cfg: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def _round(stage_s: list[float], cuts: list[int], link: LinkModel) -> tuple[float, float]:
    """One parallel round of one stage group: (round time, communication not hidden by compute).

    Besides the slowest stage, AsyncDiff's dependency cycle bounds a round: the driver's step s needs
    the last stage's output of step s-1, which needs stage N-2's of step s-2, ... so N rounds hold
    every stage's work and every hop's transfer once, one after the other."""
    if len(stage_s) == 1:
        return stage_s[0], 0.0
    send = [c / link.bytes_per_s + link.latency_s for c in cuts]  # stage k sends cut k
    chain = (sum(stage_s) + sum(send)) / len(stage_s)
    compute = stage_s
    if link.overlaps_compute:
        receivers = compute[1:] + compute[:1]  # cut k feeds stage k+1; the last feeds the driver
        exposed = max(max(0.0, t - r) for t, r in zip(send, receivers))
        round_s = max(stage_s) + exposed + link.latency_s
    else:
        busy = [s + send[k] + send[k - 1] for k, s in enumerate(stage_s)]  # receive cut k-1, send cut k
        round_s, exposed = max(busy) + link.latency_s, max(busy) - max(stage_s)
    return max(round_s, chain), exposed + max(0.0, chain - round_s)


def predict(costs: list[float], bytes_after_unit: list[int], stages: int, stride: int = 1, warmup: int = 1,
            steps: int = 25, overhead_s: float = 0.0, link: LinkModel = LINKS["loopback"], eps_bytes: int = 0,
            ranges: list[tuple[int, int]] | None = None, cfg: int = 1, part_costs: list[float] | None = None,
            guidance_bytes: int = 0, slowdown: float = 1.0, engine_s: float | list[float] = 0.0) -> Prediction:
    """Predict one configuration. ``bytes_after_unit[i]`` is the carried state's size after unit i;
    ``eps_bytes`` what the last stage returns to the driver (both for the whole guidance batch).

    With ``cfg`` > 1 stage groups, each group runs its units on a ``cfg``-th of the batch
    (``part_costs``: the units' costs at that batch, measured; default: ``costs / cfg``); rank 0
    also sends each other group its part of the latent and receives its prediction
    (``guidance_bytes`` per group and call, both directions together), and only rank 0 does the
    pipeline's own per-step work.

    ``slowdown``: how much slower a unit computes while the other ranks compute too (CPU ranks on
    one host share its memory system; measured by ``asyncvid bench``; 1 for separate devices). It
    applies to the rounds where every rank works at once, not to sequential warm-up steps.

    ``engine_s``: asyncvid's own work per round on each rank of a group (one number for all, or one
    per stage): step messages, packing, posting; measured by the phase clock of ``asyncvid bench
    --simulate``; 0 where nothing was measured."""
    if stages < 1 or stride < 1 or warmup < 0 or steps < 1 or cfg < 1:
        raise AsyncVidError("stages, stride, cfg and steps must be >= 1 and warmup >= 0")
    if len(costs) < stages:
        raise AsyncVidError(f"cannot cut {len(costs)} units into {stages} stages")
    group_costs = costs if cfg == 1 else (part_costs or [c / cfg for c in costs])
    ranges = ranges or balanced_ranges(group_costs, stages)
    shared = slowdown if stages * cfg > 1 else 1.0
    engine = list(engine_s) if isinstance(engine_s, (list, tuple)) else [engine_s] * stages
    compute = [shared * sum(group_costs[a:b]) + e for (a, b), e in zip(ranges, engine)]
    sequential = sum(costs) + overhead_s
    warm_step = sequential  # a warm-up step runs the stages one after the other
    if stages == 1 and stride == 1 and cfg == 1:
        stage_s, cuts, exposed, round_s = [sequential], [], 0.0, sequential
    else:
        cuts = [bytes_after_unit[b - 1] // cfg for _, b in ranges[:-1]] + ([eps_bytes // cfg] if stages > 1 else [])
        stage_s = [compute[0] + overhead_s * stride] + compute[1:]
        round_s, exposed = _round(stage_s, cuts, link)
        # a warm-up step: the stages one after the other, every hop in between
        hops = sum(engine) + sum(c / link.bytes_per_s + link.latency_s for c in cuts) if stages > 1 else 0.0
        warm_step = sequential + hops
        if cfg > 1:
            hop = guidance_bytes / link.bytes_per_s + 2 * link.latency_s  # a part out, its prediction back
            others, _ = _round(compute, cuts, link)  # the other groups: no pipeline work, the hop on top
            sends = 0.0 if link.overlaps_compute else (cfg - 1) * guidance_bytes / 2 / link.bytes_per_s
            round_s = max(round_s + sends, others + hop)
            warm_step = max(shared * sum(group_costs) + overhead_s + sends, shared * sum(group_costs) + hop) + hops
    per_step = round_s / stride
    warm = min(warmup, steps)
    video = warm * warm_step + math.ceil((steps - warm) / stride) * round_s
    return Prediction(stages, stride, warmup, steps, [tuple(r) for r in ranges], stage_s, cuts, exposed, sequential,
                      round_s, per_step, sequential / per_step, steps * sequential, video, steps * sequential / video,
                      cfg)

"""``asyncvid plan``: profile a pipeline's UNet units on this device and predict N-device speed.

A profile holds, for one latent shape: every unit's cost (seconds, on this device and thread
count), the bytes of the carried state after every unit (exact, from a meta-device walk), the eps
bytes sent back to the driver, and the pipeline's per-step work outside the UNet (``overhead_s``:
one timed pipeline call, minus the summed unit costs). It is saved as JSON and read back by
``--profile``, so a cluster's speed can be predicted from a profile taken on one of its GPUs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..catalog.pipelines import call_kwargs, denoiser_of, is_svd, is_wan, latent_frames
from ..errors import AsyncVidError
from ..utils import atomic_write
from .clock import now, timed_call
from .links import LINKS, LinkModel
from .predict import Prediction, predict

PROFILE_VERSION = 1


def pipeline_example_call(pipe, adapter, batch: int, frames: int, latent: int):
    """A representative denoiser call of ``pipe`` for a ``frames``-frame video (its latent frames,
    text length, device and dtype). Wan's pipelines make one call per guidance branch: a batch of 2
    stands for a step's two calls (the same compute and bytes, one message less)."""
    denoiser = denoiser_of(pipe)
    device = next(denoiser.parameters()).device
    dtype = next(denoiser.parameters()).dtype
    extra = {}
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None and not is_svd(pipe) and not is_wan(pipe):  # Wan pads its text to 512 tokens
        extra["text_len"] = min(int(tokenizer.model_max_length), 77)
    return adapter.example_call(batch, latent_frames(pipe, frames), latent, latent, device, dtype, **extra)


@torch.no_grad()
def profile_pipeline(pipe, frames: int, latent: int, batch: int = 2) -> dict:
    """Unit costs, cut bytes and per-step overhead of ``pipe`` at this shape (``batch`` 2 = CFG)."""
    from ..models import adapter_for
    from .profile import cut_bytes, initial_bytes, unit_costs

    denoiser = denoiser_of(pipe)
    adapter = adapter_for(denoiser)
    device = next(denoiser.parameters()).device
    dtype = next(denoiser.parameters()).dtype
    call = pipeline_example_call(pipe, adapter, batch, frames, latent)
    raw = unit_costs(adapter, call, use_cache=False)
    # Timed one by one, small units carry Python overhead that the whole forward does not: keep the
    # units' shares but scale them to the measured whole forward.
    forward = time_forward(adapter, call)
    costs = [c * forward / sum(raw) for c in raw]
    # CFG-parallel groups each run a part of the batch: the forward at one guidance branch
    part = adapter.split_batch(call, batch)[0] if batch > 1 else call
    part_forward = time_forward(adapter, part) if batch > 1 else forward
    sizes = cut_bytes(type(adapter), denoiser, call)
    eps = initial_bytes(adapter, call.sample)
    kwargs = call_kwargs(pipe, frames, latent, steps=4)
    timed_call(pipe, kwargs)  # one-off set-up
    marks = timed_call(pipe, kwargs)
    per_step = (marks[-1] - marks[1]) / (len(marks) - 2)  # steps 2.., after the first
    # the pipeline's own work per step, timed directly with the denoiser answering zeros: the
    # difference of two timings (step minus forward) would carry both timings' noise
    from ..pipelines.driver_work import pipeline_step_seconds

    overhead = pipeline_step_seconds(pipe, adapter, frames, latent) or max(0.0, per_step - forward)
    return {
        "version": PROFILE_VERSION,
        "unet": type(denoiser).__name__,
        "shape": {"batch": batch, "frames": frames, "latent": latent},
        "device": str(device),
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "units": [u.name for u in adapter.units()],
        "costs_s": costs,
        "bytes_after_unit": sizes,
        "eps_bytes": eps,
        "sample_bytes": call.sample.numel() * call.sample.element_size(),
        "calls_per_step": 2 if is_wan(pipe) else 1,  # Wan: the batch of 2 above is a step's two calls
        "part_forward_s": part_forward,  # the forward at batch / ``batch`` (one guidance branch)
        "unit_costs_timed_alone_s": raw,
        "unet_forward_s": forward,
        "pipeline_step_s": per_step,
        "overhead_s": overhead,
    }


def time_forward(adapter, call, reps: int = 3) -> float:
    """Seconds of one whole forward of ``call``, unit by unit (after one untimed run)."""
    adapter.run_all(call)  # one-off set-up
    start = now(call.sample.device)
    for _ in range(reps):
        adapter.run_all(call)
    return (now(call.sample.device) - start) / reps


def save_profile(profile: dict, path: str) -> None:
    atomic_write(path, json.dumps(profile, indent=1))


def load_profile(path: str) -> dict:
    try:
        profile = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AsyncVidError(f"{path}: profile not found") from None
    except ValueError as exc:
        raise AsyncVidError(f"{path}: not a JSON profile ({exc})") from None
    missing = {"units", "costs_s", "bytes_after_unit", "overhead_s"} - set(profile)
    if missing or len(profile["units"]) != len(profile["costs_s"]):
        raise AsyncVidError(f"{path}: not an asyncvid profile (missing {', '.join(sorted(missing)) or 'unit costs'})")
    return profile


def predict_from(profile: dict, stages: int, stride: int = 1, warmup: int = 1, steps: int = 25,
                 link: LinkModel = LINKS["loopback"], ranges: list[tuple[int, int]] | None = None,
                 cfg: int = 1, slowdown: float = 1.0, engine_s: float | list[float] = 0.0) -> Prediction:
    """Predict from a saved profile; ``ranges``: a given split (default: the balanced one); ``cfg``
    stage groups, each on a ``cfg``-th of the profiled batch (scaled from the profile's one-branch
    forward when the profile has one, linearly otherwise). A pipeline that makes one denoiser call per
    guidance branch (``calls_per_step`` 2, Wan) moves the same bytes per step in twice the messages:
    each hop pays the link's latency once per call."""
    costs, eps = profile["costs_s"], profile.get("eps_bytes", 0)
    calls = int(profile.get("calls_per_step", 1))
    if calls > 1:
        link = replace(link, latency_s=link.latency_s * calls)
    part_costs = None
    if cfg > 1:
        batch = profile.get("shape", {}).get("batch", 2)
        if batch % cfg:
            raise AsyncVidError(f"cfg={cfg} does not divide the profile's guidance batch of {batch}")
        if "part_forward_s" in profile and cfg == batch:
            scale = profile["part_forward_s"] / sum(costs) if sum(costs) else 0.0
            part_costs = [c * scale for c in costs]
    guidance = (profile.get("sample_bytes", eps) + eps) // cfg if cfg > 1 else 0
    return predict(costs, profile["bytes_after_unit"], stages, stride, warmup, steps, profile["overhead_s"], link, eps,
                   ranges, cfg, part_costs, guidance, slowdown, engine_s)


def _groups(cfg: int) -> str:
    return f" in each of {cfg} CFG groups (one per part of the guidance batch)" if cfg > 1 else ""


def describe(profile: dict, pred: Prediction, link: LinkModel) -> str:
    """The plan as text: per-stage share and units, bytes per cut, predicted step time and speedup."""
    from ..engine.split import compress_names

    units, costs = profile["units"], profile["costs_s"]
    total = sum(costs)
    shape = profile["shape"]
    lines = [f"profile: {profile['unet']} at batch {shape['batch']} x {shape['frames']} frames x "
             f"{shape['latent']}x{shape['latent']} latents on {profile['device']} ({profile['threads']} thread(s)): "
             f"UNet {total * 1e3:.1f} ms + {profile['overhead_s'] * 1e3:.1f} ms other work per step",
             f"split into {pred.stages} stage(s){_groups(pred.cfg)}, link {link.name} ({link.bytes_per_s / 1e9:g} GB/s):"]
    for k, (a, b) in enumerate(pred.ranges):
        sent = f", sends {pred.cut_bytes[k] / 2**20:.2f} MiB per round" if k < len(pred.cut_bytes) else ""
        lines.append(f"  stage {k}: {100 * sum(costs[a:b]) / total:5.1f}% ({sum(costs[a:b]) * 1e3:.1f} ms){sent}: "
                     f"{', '.join(compress_names(units[a:b], units))}")
    lines.append(f"predicted: {pred.per_step_s * 1e3:.1f} ms/step vs {pred.sequential_step_s * 1e3:.1f} sequential "
                 f"= {pred.speedup_per_step:.2f}x per step (stride {pred.stride}); a {pred.steps}-step video with "
                 f"warm-up {pred.warmup}: {pred.video_s:.2f} s vs {pred.sequential_video_s:.2f} s = "
                 f"{pred.speedup_per_video:.2f}x")
    if pred.exposed_comm_s > 0:
        lines.append(f"  communication not hidden by compute: {pred.exposed_comm_s * 1e3:.2f} ms per round")
    return "\n".join(lines)

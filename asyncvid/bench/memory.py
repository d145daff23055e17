"""Memory per rank: a full single-process pipeline against stage-only loading on N ranks.

The preset is built once (in a child process), cast to the dtype and saved as a diffusers folder.
Then, each in fresh processes: (a) the plain diffusers ``from_pretrained`` plus one denoising call;
(b) ``Async*Pipeline.from_pretrained`` on N ranks plus the same call. Every process reports its
peak resident memory (Linux ``VmHWM``, counted from after the imports: loading plus the call), its
resident memory before loading, and the denoiser parameters it holds. The figure of merit is each
non-driver rank's peak over the full pipeline's.
"""

from __future__ import annotations

import os
import tempfile

import torch


def rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Linux: restart the peak-RSS (VmHWM) count, so a peak can be attributed to one phase."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def phase_peak_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def save_preset(cfg: dict, folder: str) -> int:
    """Build the configuration's pipeline, cast it and save it (safetensors); runs in a child
    process. Returns its latent side (``--size`` or the model's own)."""
    from ..catalog.pipelines import build_pipeline, latent_side

    pipe = build_pipeline(cfg["model"], cfg["preset"]).to(dtype=getattr(torch, cfg["dtype"]))
    pipe.save_pretrained(folder, safe_serialization=True)
    return latent_side(pipe, cfg)


def _call(pipe, cfg: dict) -> None:
    from ..catalog.pipelines import call_kwargs

    pipe(**call_kwargs(pipe, cfg["frames"], cfg["latent"], 2), generator=torch.Generator().manual_seed(0))


def memory_rank(folder: str, stages: int, cfg: dict) -> dict | None:
    """One process of the memory run: plain pipeline (``stages=0``) or one rank of ``stages``."""
    import torch.distributed as dist

    from ..catalog.folders import pipeline_class_name
    from ..catalog.quiet import svd_pipeline_class
    from ..pipelines.placement import materialized_parameters

    from ..catalog.pipelines import denoiser_of

    torch.set_num_threads(1)
    dtype = getattr(torch, cfg["dtype"])
    kind = pipeline_class_name(folder)
    frames = cfg["frames"]
    if kind == "StableVideoDiffusionPipeline":
        plain_class = svd_pipeline_class()
        from ..pipelines.svd_loading import AsyncStableVideoDiffusionPipeline as Loader
    elif kind == "WanPipeline":
        import json

        from diffusers import WanPipeline as plain_class

        from ..pipelines.wan_loading import AsyncWanPipeline as Loader

        with open(os.path.join(folder, "vae", "config.json"), encoding="utf-8") as f:
            step = json.load(f).get("scale_factor_temporal", 4)
        frames = (frames if frames % step == 1 else frames // step * step + 1) // step + 1  # latent frames of 4k+1
    else:
        from diffusers import AnimateDiffPipeline as plain_class

        from ..pipelines.animatediff import AsyncAnimateDiffPipeline as Loader
    before = rss_now_mib()
    reset_peak_rss()
    if stages == 0:
        pipe = plain_class.from_pretrained(folder, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        loaded = phase_peak_mib()
        _call(pipe, cfg)
        return {"rss_before_mib": [before], "peak_load_mib": [loaded], "peak_mib": [phase_peak_mib()],
                "unet_params_held": [materialized_parameters(denoiser_of(pipe))]}
    latent = cfg["latent"]
    shape = dict(frames=frames, height=latent, width=latent, **({"batch": 1} if kind == "WanPipeline" else {}))
    ppipe = Loader.from_pretrained(folder, stages=stages, split="auto", torch_dtype=dtype, profile_shape=shape)
    loaded = phase_peak_mib()
    if ppipe.is_driver:
        ppipe.pipe.set_progress_bar_config(disable=True)
        _call(ppipe, cfg)
        ppipe.close()
    else:
        ppipe.serve()
    row = [before, loaded, phase_peak_mib(), materialized_parameters(denoiser_of(ppipe.pipe))]
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if not ppipe.is_driver:
        return None
    keys = ["rss_before_mib", "peak_load_mib", "peak_mib", "unet_params_held"]
    return dict({k: [r[i] for r in rows] for i, k in enumerate(keys)}, plan=ppipe.plan.to_dict())


def run_memory(cfg: dict, stages_list=(2,), log=print) -> dict:
    """The full pipeline's peak and every rank's peak under stage-only loading, with their ratios."""
    from ..launch import launch_local

    out = {"dtype": cfg["dtype"], "preset": cfg["preset"], "model": cfg["model"]}
    with tempfile.TemporaryDirectory(prefix="asyncvid-memory-") as tmp:
        folder = os.path.join(tmp, "model")
        cfg = dict(cfg, latent=launch_local(save_preset, 1, cfg, folder))
        out["latent"] = cfg["latent"]
        full = out["full_pipeline"] = launch_local(memory_rank, 1, folder, 0, cfg)
        log(f"memory, full pipeline in one process: peak {full['peak_mib'][0]:.0f} MiB, "
            f"{full['unet_params_held'][0] / 1e6:.0f} M denoiser parameters")
        for stages in stages_list:
            res = out[f"stage_only_{stages}"] = launch_local(memory_rank, stages, folder, stages, cfg)
            res["peak_over_full"] = [round(p / full["peak_mib"][0], 3) for p in res["peak_mib"]]
            log(f"memory, stage-only on {stages} ranks: peak MiB {[round(p) for p in res['peak_mib']]}, "
                f"x full: {res['peak_over_full']}, parameters {[round(n / 1e6) for n in res['unet_params_held']]} M")
    return out

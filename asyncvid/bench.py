"""``asyncvid bench``: per-step denoising time of AsyncDiff configurations against two baselines.

Baselines: (a) the untouched diffusers pipeline in one process with one thread, (b) the same with
every core. Every parallel rank runs one thread (a CPU "device"). Per-step time is measured from
the pipeline loop's own step-end callback, after the warm-up steps, on the second of two calls (the
first call pays one-off allocator and kernel set-up). Results are JSON; speedups are ratios within
one run on one machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time

import torch


def _call_kwargs(cfg: dict) -> dict:
    size = cfg["latent"] * 2  # the tiny/small presets' VAEs downsample by 2
    common = dict(num_frames=cfg["frames"], height=size, width=size, num_inference_steps=cfg["steps"],
                  output_type="latent")
    if cfg.get("model", "animatediff") == "svd":
        from PIL import Image

        image = Image.new("RGB", (size, size), (200, 40, 40))
        # max_guidance_scale > 1: both guidance branches in one batch-2 UNet call, like AnimateDiff's CFG
        return dict(common, image=image, min_guidance_scale=1.0, max_guidance_scale=2.5, decode_chunk_size=8)
    return dict(common, prompt="a red circle moving left on a black background", guidance_scale=7.5)


def _build(cfg: dict):
    from .models.tiny import build_animatediff_pipeline, build_svd_pipeline

    builder = build_svd_pipeline if cfg.get("model", "animatediff") == "svd" else build_animatediff_pipeline
    return builder(cfg["preset"], seed=0)


def _timed_call(pipe, cfg: dict) -> list[float]:
    """Wall-clock time at the end of every step of one call."""
    marks: list[float] = []

    def on_step_end(p, i, t, kwargs):
        marks.append(time.perf_counter())
        return {}

    start = time.perf_counter()
    out = pipe(**_call_kwargs(cfg), generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step_end)
    return [start] + marks if out is not None else []


def _per_step(marks: list[float], warmup: int) -> dict:
    steps = len(marks) - 1
    return {
        "denoise_s": marks[-1] - marks[0],
        "per_step_s": (marks[-1] - marks[warmup]) / (steps - warmup),  # steady state, after warm-up
    }


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(pipe, cfg: dict, warmup: int, repeats: int) -> dict:
    _timed_call(pipe, cfg)  # first call: one-off set-up
    runs = [_per_step(_timed_call(pipe, cfg), warmup) for _ in range(repeats)]
    return min(runs, key=lambda r: r["per_step_s"])


def run_baseline(cfg: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    pipe = _build(cfg)
    result = _measure(pipe, cfg, warmup=cfg["warmup"], repeats=cfg["repeats"])
    result.update(threads=threads, peak_rss_mib=[_peak_rss_mib()])
    return result


def run_parallel_rank(cfg: dict, stages: int, stride: int) -> dict | None:
    """Runs on every rank (launched by :func:`asyncvid.launch.launch_local`)."""
    import torch.distributed as dist

    from .pipelines.parallel import parallelize

    pipe = _build(cfg)
    latent = cfg["latent"]
    ppipe = parallelize(pipe, stages=stages, stride=stride, warmup=cfg["warmup"], split="auto",
                        profile_shape=dict(frames=cfg["frames"], height=latent, width=latent, batch=2))
    if ppipe.is_driver:
        result = _measure(ppipe, cfg, warmup=cfg["warmup"], repeats=cfg["repeats"])
        ppipe.close()
    else:
        ppipe.serve()  # follow the driver's calls until it closes
    rss = [None] * dist.get_world_size()
    dist.all_gather_object(rss, _peak_rss_mib())
    if not ppipe.is_driver:
        return None
    result.update(peak_rss_mib=rss, plan=ppipe.plan.to_dict(),
                  activation_bytes_per_step=max(ppipe.traffic.per_step, default=0))
    return result


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Linux: restart the peak-RSS (VmHWM) count, so a peak can be attributed to one phase."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _phase_peak_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def run_load_rank(folder: str, stages: int, cfg: dict) -> dict | None:
    """Memory of loading a saved pipeline: plain diffusers (``stages=0``) or stage-only per rank."""
    import torch.distributed as dist
    from diffusers import AnimateDiffPipeline  # noqa: F401  (imports before the baseline reading)

    from .pipelines.animatediff import AsyncAnimateDiffPipeline
    from .pipelines.parallel import materialized_parameters

    before = _rss_now_mib()
    _reset_peak_rss()
    if stages == 0:
        pipe = AnimateDiffPipeline.from_pretrained(folder)
        return {"rss_before_load_mib": [before], "peak_rss_during_load_mib": [_phase_peak_mib()],
                "rss_after_load_mib": [_rss_now_mib()], "unet_params_held": [materialized_parameters(pipe.unet)]}
    # an explicit split (no profiling pass) so the reading is the loading alone
    split = [["conv_in", "down_blocks", "mid_block"], ["up_blocks", "conv_out"]] if stages == 2 else "auto"
    latent = cfg["latent"]
    ppipe = AsyncAnimateDiffPipeline.from_pretrained(
        folder, stages=stages, split=split, profile_shape=dict(frames=cfg["frames"], height=latent, width=latent))
    row = [before, _phase_peak_mib(), _rss_now_mib(), materialized_parameters(ppipe.unet)]
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if not ppipe.is_driver:
        return None
    keys = ["rss_before_load_mib", "peak_rss_during_load_mib", "rss_after_load_mib", "unet_params_held"]
    return {k: [r[i] for r in rows] for i, k in enumerate(keys)}


def run_memory(cfg: dict, stages_list=(2,), log=print) -> dict:
    """Peak and resident memory per rank when loading a saved model stage-only, vs plain diffusers."""
    import tempfile

    from .launch import launch_local
    from .models.tiny import save_animatediff_pipeline

    out = {}
    with tempfile.TemporaryDirectory(prefix="asyncvid-bench-") as tmp:
        folder = str(save_animatediff_pipeline(os.path.join(tmp, "model"), cfg["preset"], seed=0))
        out["plain_from_pretrained"] = launch_local(run_load_rank, 1, folder, 0, cfg)
        log(f"memory, plain from_pretrained: {out['plain_from_pretrained']}")
        for stages in stages_list:
            out[f"stage_only_{stages}"] = res = launch_local(run_load_rank, stages, folder, stages, cfg)
            log(f"memory, stage-only load on {stages} ranks: {res}")
    return out


def hardware() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "load_avg_1m": os.getloadavg()[0]}


def run_bench(preset: str = "small", frames: int = 8, latent: int = 16, steps: int = 12, warmup: int = 1,
              repeats: int = 2, configs: list[tuple[int, int]] | None = None, log=print,
              model: str = "animatediff") -> dict:
    from .launch import launch_local

    cfg = dict(model=model, preset=preset, frames=frames, latent=latent, steps=steps, warmup=warmup, repeats=repeats)
    configs = configs or [(1, 1), (1, 2), (2, 1), (2, 2)]
    report = {"config": dict(cfg, cfg_guidance=True, batch=2), "hardware": hardware(), "results": []}
    one = launch_local(run_baseline, 1, cfg, 1, threads_per_rank=1)
    log(f"baseline 1 process x 1 thread: {one['per_step_s'] * 1000:.1f} ms/step")
    cores = os.cpu_count() or 1
    allc = launch_local(run_baseline, 1, cfg, cores, threads_per_rank=cores)
    log(f"baseline 1 process x {cores} threads: {allc['per_step_s'] * 1000:.1f} ms/step")
    report["baselines"] = {"one_thread": one, "all_cores": allc}
    if model == "animatediff":  # stage-only loading exists for AnimateDiff folders
        report["memory"] = run_memory(cfg, sorted({s for s, _ in configs if s > 1}) or [2], log=log)
    for stages, stride in configs:
        res = launch_local(run_parallel_rank, stages, cfg, stages, stride)
        res.update(stages=stages, stride=stride,
                   speedup_vs_one_thread=one["per_step_s"] / res["per_step_s"],
                   speedup_vs_all_cores=allc["per_step_s"] / res["per_step_s"],
                   end_to_end_speedup_vs_one_thread=one["denoise_s"] / res["denoise_s"])
        report["results"].append(res)
        log(f"stages={stages} stride={stride}: {res['per_step_s'] * 1000:.1f} ms/step, "
            f"{res['speedup_vs_one_thread']:.2f}x vs 1 thread, {res['speedup_vs_all_cores']:.2f}x vs {cores} threads")
    return report


def write_report(report: dict, path: str | None) -> None:
    text = json.dumps(report, indent=2, default=str)
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        print(text)

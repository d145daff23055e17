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

import torch

from ..catalog.builtin import DEFAULT_MODEL, DEFAULT_STEPS
from ..catalog.pipelines import denoiser_of, latent_side, profile_shape, vae_scale
from .memory import phase_peak_mib, reset_peak_rss, run_memory
from ..progress import progress
from ..utils import atomic_write


def _build(cfg: dict):
    """The configuration's pipeline on this rank's device (``cuda:LOCAL_RANK`` or the CPU), in its dtype."""
    from ..catalog.pipelines import build_pipeline
    from ..distributed.env import default_device

    pipe = build_pipeline(cfg["model"], cfg["preset"], cfg.get("layers"))
    from .stack import apply_stack

    dtype = getattr(torch, cfg.get("dtype", "float32"))
    # a cast to the dtype the weights already have would only make diffusers warn about float32 modules
    pipe = pipe.to(device=default_device()) if dtype == torch.float32 else pipe.to(device=default_device(), dtype=dtype)
    return apply_stack(pipe, cfg.get("stack", "none"))


def _timed_call(pipe, cfg: dict) -> list[float]:
    from ..catalog.pipelines import call_kwargs
    from ..planner.clock import timed_call

    return timed_call(pipe, call_kwargs(pipe, cfg["frames"], latent_side(pipe, cfg), cfg["steps"]))


def _per_step(marks: list[float], warmup: int) -> dict:
    steps = len(marks) - 1
    warmup = max(1, min(warmup, steps - 1))  # the first step always carries one-off work
    return {
        "denoise_s": marks[-1] - marks[0],  # the whole call: one video's denoising
        "per_step_s": (marks[-1] - marks[warmup]) / (steps - warmup),  # steady state, after warm-up
    }


def _measure(pipe, cfg: dict, warmup: int, repeats: int) -> dict:
    _timed_call(pipe, cfg)  # first call: one-off set-up
    reset_peak_rss()
    runs = [_per_step(_timed_call(pipe, cfg), warmup) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["per_step_s"])
    return dict(best, peak_rss_mib=phase_peak_mib())


def run_baseline(cfg: dict, threads: int, profile: bool = False) -> dict:
    """The untouched pipeline; with ``profile`` also the unit profile the planner predicts from."""
    torch.set_num_threads(threads)
    pipe = _build(cfg)
    result = _measure(pipe, cfg, warmup=1, repeats=cfg["repeats"])
    result.update(threads=threads, peak_rss_mib=[result["peak_rss_mib"]], latent=latent_side(pipe, cfg),
                  size=latent_side(pipe, cfg) * vae_scale(pipe))
    if profile:
        from ..planner.report import profile_pipeline

        result["profile"] = profile_pipeline(pipe, cfg["frames"], result["latent"])
    return result


def run_parallel_rank(cfg: dict, stages: int, stride: int, warmup: int = 1, groups: int = 1) -> dict | None:
    """Runs on every rank (launched by :func:`asyncvid.launch.launch_local`); ``groups``: CFG groups."""
    import torch.distributed as dist

    from ..pipelines.parallel import parallelize

    pipe = _build(cfg)
    latent = latent_side(pipe, cfg)
    ppipe = parallelize(pipe, stages=stages, stride=stride, warmup=warmup, split="auto", cfg=groups,
                        profile_shape=profile_shape(pipe, cfg["frames"], latent, groups),
                        forecast=cfg.get("forecast", "none"))
    if ppipe.is_driver:
        result = _measure(ppipe, cfg, warmup=warmup, repeats=cfg["repeats"])
        ppipe.close()
        peak = result["peak_rss_mib"]
    else:
        reset_peak_rss()
        ppipe.serve()  # follow the driver's calls until it closes
        peak = phase_peak_mib()
    t = ppipe.traffic
    rows = [None] * dist.get_world_size()
    cache = ppipe.runtime.cache_counts()
    dist.all_gather_object(rows, (peak, t.activation, t.activation + t.control + t.conditioning + t.guidance,
                                   t.guidance, ppipe.runtime.forecast_bytes(), (cache["skipped"], cache["computed"])))
    if not ppipe.is_driver:
        return None
    steps = (1 + cfg["repeats"]) * cfg["steps"]  # every call of the run: set-up call + timed calls
    result.update(peak_rss_mib=[r[0] for r in rows], plan=ppipe.plan.to_dict(),
                  bytes_sent_per_rank=[r[2] for r in rows],
                  activation_bytes_per_step=sum(r[1] for r in rows) / steps,
                  guidance_bytes_per_step=sum(r[3] for r in rows) / steps,
                  forecast_mib_per_rank=[r[4] / 2**20 for r in rows],
                  block_cache_last_call_per_rank=[dict(skipped=r[5][0], computed=r[5][1]) for r in rows])
    return result


@torch.no_grad()
def run_contention_rank(cfg: dict) -> dict | None:
    """Every rank (one thread each): the one-branch forward timed on rank 0 alone, the others
    waiting, then on every rank at once. CPU ranks on one host share its caches and memory
    bandwidth; the ratio is the slowdown the planner applies to parallel rounds here."""
    import torch.distributed as dist

    from ..models import adapter_for
    from ..planner.report import pipeline_example_call, time_forward

    pipe = _build(cfg)
    adapter = adapter_for(denoiser_of(pipe))
    call = pipeline_example_call(pipe, adapter, 1, cfg["frames"], latent_side(pipe, cfg))
    alone = time_forward(adapter, call) if dist.get_rank() == 0 else 0.0
    dist.barrier()
    together = time_forward(adapter, call)
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, together)
    if dist.get_rank() != 0:
        return None
    return {"alone_s": alone, "together_s": rows, "slowdown": max(1.0, sum(rows) / len(rows) / alone)}


def hardware() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "load_avg_1m": os.getloadavg()[0]}


def run_bench(preset: str = "small", frames: int = 8, size: int | None = None, steps: int = DEFAULT_STEPS,
              warmup: int = 1, repeats: int = 2, configs: list[tuple] | None = None, log=print,
              model: str = DEFAULT_MODEL, memory: bool = True, dtype: str = "float32", latent: int | None = None,
              layers: int | None = None, forecasts: tuple[str, ...] = ("none",),
              stacks: tuple[str, ...] = ("none",)) -> dict:
    """Baselines, then every (stages, stride[, warmup[, cfg]]) configuration (once per forecast and per
    stack, side by side), each with the planner's prediction from the one-thread profile beside the
    measurement. A stack other than ``none`` (``bench/stack.py``) also gets its own one-thread baseline:
    the feature alone."""
    from ..launch import launch_local

    cfg = dict(model=model, preset=preset, frames=frames, size=size, latent=latent, steps=steps, warmup=warmup,
               repeats=repeats, dtype=dtype, layers=layers)
    configs = [(tuple(c) + (warmup, 1)[len(c) - 2:])[:4] for c in (configs or [(1, 1), (1, 2), (2, 1), (2, 2)])]
    report = {"config": dict(cfg, cfg_guidance=True, batch=2), "hardware": hardware(), "results": []}
    one = launch_local(run_baseline, 1, cfg, 1, True, threads_per_rank=1)
    profile = report["profile"] = one.pop("profile")
    cfg.update(latent=one["latent"], size=one["size"])  # resolved by the first rank: every later one uses it
    report["config"].update(latent=one["latent"], size=one["size"])
    link = _link(configs, log)
    report["link"] = link.__dict__
    slowdown = 1.0
    if any(c[0] * c[3] > 1 for c in configs):
        contention = report["contention"] = launch_local(run_contention_rank, 2, cfg)
        slowdown = contention["slowdown"]
        log(f"one-branch forward alone {contention['alone_s'] * 1000:.1f} ms, with a second rank computing "
            f"{', '.join(f'{t * 1000:.1f}' for t in contention['together_s'])} ms: {slowdown:.2f}x slowdown")
    log(f"baseline 1 process x 1 thread: {one['per_step_s'] * 1000:.1f} ms/step")
    cores = os.cpu_count() or 1
    allc = launch_local(run_baseline, 1, cfg, cores, threads_per_rank=cores)
    log(f"baseline 1 process x {cores} threads: {allc['per_step_s'] * 1000:.1f} ms/step")
    report["baselines"] = {"one_thread": one, "all_cores": allc, "stacked": {}}
    for stack in stacks:
        if stack != "none":
            alone = report["baselines"]["stacked"][stack] = launch_local(run_baseline, 1, dict(cfg, stack=stack), 1)
            log(f"baseline 1 process x 1 thread with {stack}: {alone['per_step_s'] * 1000:.1f} ms/step "
                f"({one['per_step_s'] / alone['per_step_s']:.2f}x)")
    if memory:
        report["memory"] = run_memory(cfg, sorted({c[0] for c in configs if c[0] > 1}) or [2], log=log)
    # This machine's speed drifts by 10-25 % from minute to minute: every configuration is compared
    # with the one-thread baseline measured right before and right after it (their mean).
    report["baselines"]["one_thread_runs"] = [dict(per_step_s=one["per_step_s"], denoise_s=one["denoise_s"])]
    with progress(len(configs) * len(forecasts) * len(stacks), "configurations") as advance:
        for stages, stride, wu, groups in configs:
            for forecast in forecasts if stages > 1 else ("none",):
                for stack in stacks:
                    _run_config(report, dict(cfg, forecast=forecast, stack=stack), (stages, stride, wu, groups),
                                profile, link, slowdown, allc, cores, log)
                    advance()
    return report


def _run_config(report: dict, cfg: dict, config: tuple, profile: dict, link, slowdown: float, allc: dict,
                cores: int, log) -> None:
    """One configuration between two one-thread baselines (the one before is the previous one's after)."""
    from ..launch import launch_local
    from ..planner.report import predict_from

    stages, stride, wu, groups = config
    steps = cfg["steps"]
    runs = report["baselines"]["one_thread_runs"]
    before = runs[-1]
    res = launch_local(run_parallel_rank, stages * groups, cfg, stages, stride, wu, groups)
    after = launch_local(run_baseline, 1, dict(cfg, stack="none"), 1, threads_per_rank=1)  # untouched, always
    runs.append(dict(per_step_s=after["per_step_s"], denoise_s=after["denoise_s"]))
    ref = {k: (before[k] + after[k]) / 2 for k in ("per_step_s", "denoise_s")}
    ranges = [tuple(r) for r in res["plan"]["ranges"]]
    pred = predict_from(profile, stages, stride, wu, steps, link, ranges, cfg=groups, slowdown=slowdown)
    res.update(stages=stages, stride=stride, warmup=wu, cfg=groups, forecast=cfg.get("forecast", "none"),
               stack=cfg.get("stack", "none"),
               shares_cores=stages * groups > cores,
               one_thread_reference=ref,
               speedup_vs_one_thread=ref["per_step_s"] / res["per_step_s"],
               speedup_vs_all_cores=allc["per_step_s"] / res["per_step_s"],
               end_to_end_speedup_vs_one_thread=ref["denoise_s"] / res["denoise_s"],
               predicted=dict(per_step_s=pred.per_step_s, speedup_per_step=pred.speedup_per_step,
                              speedup_per_video=pred.speedup_per_video, stage_s=pred.stage_s, cfg=pred.cfg))
    report["results"].append(res)
    log(f"stages={stages} stride={stride} warmup={wu} cfg={groups} forecast={res['forecast']} stack={res['stack']}: "
        f"{res['per_step_s'] * 1000:.1f} ms/step "
        f"(1 thread around it: {ref['per_step_s'] * 1000:.1f}), "
        f"{res['speedup_vs_one_thread']:.2f}x vs 1 thread (predicted {pred.speedup_per_step:.2f}x), "
        f"{res['speedup_vs_all_cores']:.2f}x vs {cores} threads")


def _link(configs, log):
    """The link the predictions assume: measured between two local ranks when any configuration
    has more than one stage."""
    from ..planner.links import LINKS, measure_local_link

    if not any(c[0] * (c[3] if len(c) > 3 else 1) > 1 for c in configs):
        return LINKS["loopback"]
    link = measure_local_link()
    log(f"link between two local ranks: {link.latency_s * 1e6:.0f} us latency, {link.bytes_per_s / 1e9:.2f} GB/s")
    return link


def markdown(report: dict) -> str:
    """The report as a markdown table (per-step and per-video speedups, prediction, bytes, memory)."""
    one, allc = report["baselines"]["one_thread"], report["baselines"]["all_cores"]
    cores = report["hardware"]["cores"]
    rows = ["| configuration | ms/step | s/video | speedup/step vs 1 thread (predicted) | vs 1 process x "
            f"{cores} threads | speedup/video vs 1 thread (predicted) | activation MiB/step | peak MiB per rank |",
            "|---|---|---|---|---|---|---|---|",
            f"| untouched pipeline, 1 thread | {one['per_step_s'] * 1e3:.1f} | {one['denoise_s']:.2f} | 1.00x | | "
            f"1.00x | | {', '.join(f'{m:.0f}' for m in one['peak_rss_mib'])} |",
            f"| untouched pipeline, {cores} threads | {allc['per_step_s'] * 1e3:.1f} | {allc['denoise_s']:.2f} | "
            f"{one['per_step_s'] / allc['per_step_s']:.2f}x | 1.00x | {one['denoise_s'] / allc['denoise_s']:.2f}x | | "
            f"{', '.join(f'{m:.0f}' for m in allc['peak_rss_mib'])} |"]
    for stack, alone in report["baselines"].get("stacked", {}).items():
        rows.append(f"| untouched pipeline + {stack}, 1 thread | {alone['per_step_s'] * 1e3:.1f} | "
                    f"{alone['denoise_s']:.2f} | {one['per_step_s'] / alone['per_step_s']:.2f}x | | "
                    f"{one['denoise_s'] / alone['denoise_s']:.2f}x | | "
                    f"{', '.join(f'{m:.0f}' for m in alone['peak_rss_mib'])} |")
    for r in report["results"]:
        p = r["predicted"]
        note = " (cores shared)" if r.get("shares_cores") else ""
        groups = f" cfg={r['cfg']}" if r.get("cfg", 1) > 1 else ""
        if r.get("forecast", "none") != "none":
            groups += f" forecast {r['forecast']}"
        if r.get("stack", "none") != "none":
            groups += f" + {r['stack']}"
        rows.append(
            f"| N={r['stages']} S={r['stride']}{groups} warm-up {r['warmup']}{note} | {r['per_step_s'] * 1e3:.1f} | "
            f"{r['denoise_s']:.2f} | {r['speedup_vs_one_thread']:.2f}x ({p['speedup_per_step']:.2f}x) | "
            f"{r['speedup_vs_all_cores']:.2f}x | {r['end_to_end_speedup_vs_one_thread']:.2f}x "
            f"({p['speedup_per_video']:.2f}x) | {r['activation_bytes_per_step'] / 2**20:.2f} | "
            f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mib'])} |")
    return "\n".join(rows) + "\n"


def write_report(report: dict, path: str | None, markdown_path: str | None = None) -> None:
    text = json.dumps(report, indent=2, default=str)
    if path:
        atomic_write(path, text)
    else:
        print(text)
    if markdown_path:
        atomic_write(markdown_path, markdown(report))

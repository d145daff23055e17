"""Fidelity of AsyncDiff configurations against the sequential output of the same seeds.

Every configuration (stages N, stride S, warm-up W) renders the same prompts and seeds as the
untouched pipeline; the initial latents come from the same generator, so any difference is the
method's. Per configuration: PSNR, SSIM, ST-LPIPS and temporal error against the sequential clips,
optionally CLIP score (local weights), and for the shapes world prompt adherence from pixels. The
speed beside each is the measured per-video speedup from an ``asyncvid bench`` report where the
configuration fits the machine's cores, else the planner's prediction.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from ..progress import progress
from ..utils import atomic_path


def _render_seed(runner, pipe, prompts: list[str], seed: int, call: dict) -> list:
    """One seed's clips in prompt order. Image-to-video models (SVD) are given shapes-world prompts:
    the first frame of the prompt's clip as image, its direction as motion bucket, and the guidance
    as the top of SVD's per-frame ramp (from 1)."""
    import torch

    from ..catalog.pipelines import is_svd

    if is_svd(pipe):
        from .adherence import render_i2v
        from .world import parse_prompt

        rest = {k: v for k, v in call.items() if k not in ("num_frames", "height", "width", "guidance_scale")}
        return render_i2v(runner, [parse_prompt(p) for p in prompts], seed, call["num_frames"], call["height"],
                          max_guidance_scale=call["guidance_scale"], min_guidance_scale=1.0, **rest)
    out = runner(prompt=prompts, generator=torch.Generator().manual_seed(seed), output_type="np", **call)
    return list(out.frames)


def render_rank(model: str, prompts: list[str], seeds: list[int], call: dict, config: tuple[int, int, int] | None,
                out_path: str, dtype: str = "float32", forecasts: tuple[str, ...] = ("none",),
                stacks: tuple[str, ...] = ("none",)) -> None:
    """Runs on every rank: render ``prompts`` for each seed (:func:`_render_seed`) and, on the
    driver, save the clips (seed-major) to ``out_path``. ``config`` None = the untouched pipeline.
    With several ``forecasts`` the same ranks render the configuration once per forecast, in order,
    into ``out_path`` with ``-0``, ``-1``, ... before its extension; with several ``stacks``
    (``bench/stack.py``) once per (forecast, stack), forecast-major."""
    import torch

    from ..bench.stack import apply_stack
    from ..catalog.pipelines import build_pipeline, profile_shape, vae_scale
    from ..distributed.env import default_device

    variants = [(f, s) for f in forecasts for s in stacks] if config is not None else [("none", "none")]
    for i, (forecast, stack) in enumerate(variants):
        pipe = build_pipeline(model).to(device=default_device(), dtype=getattr(torch, dtype))
        apply_stack(pipe, stack)
        pipe.set_progress_bar_config(disable=True)
        runner, driver = pipe, True
        if config is not None:
            from ..pipelines.parallel import parallelize

            stages, stride, warmup = config
            latent = call["height"] // vae_scale(pipe)
            runner = parallelize(pipe, stages=stages, stride=stride, warmup=warmup, split="auto", forecast=forecast,
                                 profile_shape=profile_shape(pipe, call["num_frames"], latent))
            driver = runner.is_driver
            if not driver:
                runner.serve()
                continue
        clips, seconds = [], 0.0
        with torch.no_grad():
            for seed in seeds:
                start = time.perf_counter()
                clips += _render_seed(runner, pipe, prompts, seed, call)
                seconds += time.perf_counter() - start
        if config is not None:
            runner.close()
        path = out_path if config is None else forecast_path(out_path, i)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez would add ".npz" to a name
            np.savez(f, clips=np.stack(clips), seconds=seconds)


def forecast_path(path: str, index: int) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}-{index}{ext}"


def score(ref: np.ndarray, clips: np.ndarray, prompts: list[str], perceptual, clip_dir: str | None,
          shapes_world: bool) -> dict:
    """Metrics of ``clips`` against ``ref`` (both (n, F, H, W, 3)); ``prompts`` per clip."""
    from .fidelity import clip_score, compare_clips

    rows = [compare_clips(r, c, perceptual) for r, c in zip(ref, clips)]
    exact = sum(1 for r in rows if r["psnr"] == math.inf)
    psnrs = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
    out = {"clips": len(rows), "identical_clips": exact,
           "psnr_db": (sum(psnrs) / len(psnrs)) if psnrs else math.inf,
           "ssim": float(np.mean([r["ssim"] for r in rows])),
           "lpips": None if perceptual is None else float(np.mean([r["lpips"] for r in rows])),
           "temporal_error": float(np.mean([r["temporal_error"] for r in rows]))}
    if clip_dir:
        out["clip_score"] = float(np.mean([clip_score(c, p, clip_dir) for c, p in zip(clips, prompts)]))
    if shapes_world:
        from .adherence import score_many

        adh = score_many(list(clips), prompts)
        out["adherence"] = {k: adh[k] for k in ("colour", "direction", "shape", "moving")}
    return out


def speed_for(config: tuple[int, int, int], bench: dict | None, profile: dict | None, steps: int,
              cores: int) -> tuple[float | None, str]:
    """(per-video speedup, "measured" | "predicted") for one configuration."""
    stages, stride, warmup = config
    if bench and stages <= cores:
        for r in bench.get("results", []):
            if (r["stages"], r["stride"], r.get("warmup", 1)) == config and bench["config"]["steps"] == steps:
                return r["end_to_end_speedup_vs_one_thread"], "measured"
    if profile:
        from ..planner.links import LINKS, LinkModel
        from ..planner.report import predict_from

        link = LinkModel(**bench["link"]) if bench and "link" in bench else LINKS["loopback"]
        return predict_from(profile, stages, stride, warmup, steps, link).speedup_per_video, "predicted"
    return None, "unknown"


def markdown(report: dict) -> str:
    rows = ["| configuration | speedup/video | PSNR dB vs sequential | SSIM | ST-LPIPS | temporal error | "
            "adherence colour / direction / shape / moving |", "|---|---|---|---|---|---|---|"]
    ref = report["sequential"]
    adh = ref.get("adherence")
    rows.append(f"| sequential (untouched pipeline) | 1.00x | exact | 1.0000 | 0.0000 | 0.0000 | "
                f"{_adh(adh)} |")
    for r in report["configs"]:
        m = r["metrics"]
        speed = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x ({r['speed_source']})"
        psnr = "exact" if m["psnr_db"] == math.inf else f"{m['psnr_db']:.2f}"
        lp = "n/a" if m["lpips"] is None else f"{m['lpips']:.4f}"
        rows.append(f"| {config_label(r)} | {speed} | {psnr} | {m['ssim']:.4f} | "
                    f"{lp} | {m['temporal_error']:.4f} | {_adh(m.get('adherence'))} |")
    if len(report.get("forecasts", ["none"])) > 1:
        rows += ["", forecast_pivot(report)]
    return "\n".join(rows) + "\n"


def forecast_pivot(report: dict) -> str:
    """PSNR per configuration (rows) and forecast (columns), each with its change against ``none``."""
    forecasts = report["forecasts"]
    table: dict[tuple, dict[str, float]] = {}
    for r in report["configs"]:
        table.setdefault((r["stages"], r["stride"], r["warmup"]), {})[r.get("forecast", "none")] = r["metrics"]["psnr_db"]
    rows = ["| configuration | " + " | ".join(f"PSNR dB, forecast {f}" for f in forecasts) + " |",
            "|---|" + "---|" * len(forecasts)]
    for (n, stride, w), psnr in table.items():
        base = psnr.get("none")
        cells = []
        for f in forecasts:
            value = psnr.get(f)
            if value is None:
                cells.append("n/a")
            elif f == "none" or base is None or not math.isfinite(value) or not math.isfinite(base):
                cells.append("exact" if value == math.inf else f"{value:.2f}")
            else:
                cells.append(f"{value:.2f} ({value - base:+.2f})")
        rows.append(f"| N={n} S={stride} warm-up {w} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def config_label(row: dict) -> str:
    """``N=2 S=1 warm-up 1`` (and ``, forecast linear`` when the row has one)."""
    label = f"N={row['stages']} S={row['stride']} warm-up {row['warmup']}"
    forecast, stack = row.get("forecast", "none"), row.get("stack", "none")
    label = label if forecast == "none" else f"{label}, forecast {forecast}"
    return label if stack == "none" else f"{label} + {stack}"


def _adh(adh) -> str:
    if not adh:
        return "n/a"
    return " / ".join(f"{100 * adh[k]:.0f}%" for k in ("colour", "direction", "shape", "moving") if k in adh)


def run_fidelity(model: str, configs: list[tuple[int, int, int]], prompts: list[str], seeds: list[int], steps: int,
                 guidance: float, frames: int, size: int, bench: dict | None = None, clip_dir: str | None = None,
                 lpips: bool = True, shapes_world: bool = False, log=print, dtype: str = "float32",
                 forecasts: tuple[str, ...] = ("none",), stacks: tuple[str, ...] = ("none",)) -> dict:
    """The sequential reference (untouched: nothing stacked), then every configuration on its own local
    ranks (once per forecast and stack, on the same ranks); scored and paired with its speed. Returns the report (JSON-safe except for
    ``inf``, see :func:`fidelity.finite`)."""
    import tempfile

    from ..launch import launch_local
    from .fidelity import PerceptualDistance

    perceptual = PerceptualDistance() if lpips else None
    cores = os.cpu_count() or 1
    call = dict(num_frames=frames, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance)
    clip_prompts = [p for _ in seeds for p in prompts]  # seed-major, like the saved clips
    profile = (bench or {}).get("profile")
    report = {"model": model, "prompts": prompts, "seeds": seeds, "call": call, "dtype": dtype,
              "forecasts": list(forecasts), "stacks": list(stacks), "configs": []}
    with tempfile.TemporaryDirectory(prefix="asyncvid-fidelity-") as tmp:
        ref_path = os.path.join(tmp, "sequential.npz")
        launch_local(render_rank, 1, model, prompts, seeds, call, None, ref_path, dtype, threads_per_rank=cores)
        ref = np.load(ref_path)["clips"]
        report["sequential"] = score(ref, ref, clip_prompts, None, clip_dir, shapes_world)
        log(f"sequential: {len(ref)} clips")
        if profile is None:
            from ..catalog.pipelines import build_pipeline, vae_scale
            from ..planner.report import profile_pipeline

            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            pipe = build_pipeline(model).to(dtype=getattr(torch, dtype))
            profile = profile_pipeline(pipe, frames, size // vae_scale(pipe))
            torch.set_num_threads(threads)

        def score_config(config: tuple[int, int, int], advance) -> list[dict]:
            """Render one configuration (every forecast) from the same seeds on its own local ranks, score
            each against ``ref``."""
            path = os.path.join(tmp, "run.npz")
            own = tuple(forecasts) if config[0] > 1 else ("none",)  # one stage is never stale
            launch_local(render_rank, config[0], model, prompts, seeds, call, config, path, dtype, own, tuple(stacks))
            speedup, source = speed_for(config, bench, profile, steps, cores)
            rows = []
            for i, (forecast, stack) in enumerate((f, s) for f in own for s in stacks):
                metrics = score(ref, np.load(forecast_path(path, i))["clips"], clip_prompts, perceptual, clip_dir,
                                shapes_world)
                row = dict(stages=config[0], stride=config[1], warmup=config[2], forecast=forecast, stack=stack,
                           speedup=speedup if stack == "none" else None,
                           speed_source=source, shares_cores=config[0] > cores, metrics=metrics)
                log(f"{config_label(row)}: PSNR {metrics['psnr_db']:.2f} dB, SSIM {metrics['ssim']:.4f}, speedup "
                    f"{speedup if speedup is None else round(speedup, 2)} ({source})")
                rows.append(row)
                advance()
            return rows

        renders = sum(len(forecasts) * len(stacks) if c[0] > 1 else len(stacks) for c in configs)
        with progress(renders, "configurations") as advance:
            for config in configs:
                report["configs"] += score_config(config, advance)
    return report


def plot_points(report: dict) -> list[dict]:
    """Pareto-plot points: x = per-video speedup, y = PSNR against the sequential output."""
    points = [dict(x=1.0, y=math.inf, label="sequential", hollow=False)]
    for r in report["configs"]:
        if r["speedup"] is not None:
            points.append(dict(x=r["speedup"], y=r["metrics"]["psnr_db"], hollow=r["speed_source"] != "measured",
                               label=f"N{r['stages']} S{r['stride']} w{r['warmup']}"
                                     + ("" if r.get("forecast", "none") == "none" else f" {r['forecast']}")))
    return points

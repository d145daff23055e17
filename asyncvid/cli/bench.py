"""``asyncvid bench`` (measured speed, with the planner's prediction beside it) and ``asyncvid plan``
(predicted speed of N devices from a unit profile)."""

from __future__ import annotations

import argparse
import re

from .. import logs
from ..catalog.builtin import DEFAULT_MODEL, DEFAULT_STEPS
from ..errors import AsyncVidError
from ..utils import atomic_write
from .options import add_device_and_dtype, add_forecast, apply_device

SWEEP = ["1x1", "1x2", "2x1", "2x2", "2x1w3", "2x2w3", "3x1", "3x2", "4x1", "4x2"]


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure the speed of stage/stride/warm-up/CFG configurations, or of a "
                                            "job file on 1 vs D devices (--render); JSON",
                              description="Per-step and per-video denoising time of AsyncDiff configurations against "
                                          "the untouched pipeline in one process with one thread and with every core, "
                                          "with the planner's prediction beside each speedup. Each rank runs one "
                                          "thread. Nothing is downloaded.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="a built-in model (shapes-t2v, tiny-random, ...), a local diffusers folder, a cached hub id, or "
                        "`animatediff` / `svd`: random-weight architectures sized by --preset")
    p.add_argument("--preset", choices=["null", "tiny", "small", "full"], default="small",
                   help="size of the random presets; full = the real architectures (SD 1.5 + AnimateDiff motion "
                        "modules, or SVD), 1.3-1.5 B parameters, random weights")
    p.add_argument("--layers", type=int, help="blocks of the random `wan` presets (default: the preset's own)")
    p.add_argument("--frames", type=int, default=8, help="frames per video")
    add_size(p)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps per video")
    p.add_argument("--warmup", type=int, default=1, help="warm-up of configurations that do not name one")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per configuration; the fastest counts")
    add_device_and_dtype(p)
    p.add_argument("--configs", nargs="+", metavar="NxS[wW][cC]", default=["1x1", "1x2", "2x1", "2x2"],
                   help="configurations: stages x stride, optionally w + warm-up and c + CFG groups (N x C ranks), "
                        "e.g. 2x1 2x2w3 4x1 1x1c2 2x1c2")
    add_forecast(p, "each multi-stage configuration once per forecast, side by side")
    p.add_argument("--stack", nargs="+", default=["none"], metavar="FEATURE",
                   help="accelerations stacked on the pipeline, each side by side (none, fbc[:THRESHOLD]: diffusers' "
                        "FirstBlockCache, compile: torch.compile of the denoiser); each also gets a one-thread "
                        "baseline of its own (the feature alone)")
    p.add_argument("--sweep", action="store_true", help=f"run the standard sweep: {' '.join(SWEEP)}")
    p.add_argument("--no-memory", action="store_true", help="skip the memory section (full pipeline vs stage-only ranks)")
    p.add_argument("--memory-only", action="store_true",
                   help="only the memory section: peak memory and parameters per rank, stage-only loading of "
                        "--configs' stage counts, against the full pipeline in one process")
    p.add_argument("--render", metavar="JOBFILE",
                   help="instead: time `asyncvid render JOBFILE` on 1 device and on --devices (replicas), "
                        "one thread per device")
    p.add_argument("--devices", type=int, default=2, metavar="D", help="with --render: devices to compare with one")
    p.add_argument("--simulate", metavar="TABLE",
                   help="run on simulated devices: each unit's compute is a wait from a cost table (uniform, "
                        "profile = this CPU's one-thread profile, or a JSON file {units, seconds, batch}); the "
                        "pipeline loop, messages and transfers stay real; up to 8 devices fit on this machine")
    p.add_argument("--step-ms", type=float, nargs="+", metavar="MS",
                   help="with --simulate: the simulated device's cost of one denoising step (both guidance "
                        "branches), each a separate table (default: 50; a file's own costs when a file is given)")
    p.add_argument("--json", metavar="FILE", help="write the report here (default: stdout)")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    p.set_defaults(func=cmd_bench)

    q = subparsers.add_parser("plan", help="rank the layouts of D devices (replicas x cfg x stages x stride x warm-up)",
                              description="Profile the UNet's units on this device (or read a saved profile), predict "
                                          "every layout of D devices (replicas x CFG groups x stages x stride x "
                                          "warm-up) on the given link, rank them for --objective, and print the best "
                                          "one's split: each stage's share, the bytes per cut and the predicted "
                                          "per-step time. With --fidelity, each layout's measured PSNR beside it. "
                                          "With --stages, only that configuration.")
    q.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help="a built-in model, a local diffusers folder, a cached hub id, or `animatediff`/`svd` "
                        "random-weight presets (ignored with --profile; default: shapes-t2v)")
    q.add_argument("--devices", type=int, required=True, metavar="D", help="devices to plan for (required)")
    q.add_argument("--objective", choices=["latency", "throughput"], default="latency",
                   help="latency: fastest single video; throughput: most videos per hour over replicas (default latency)")
    q.add_argument("--fidelity", metavar="FILE", help="an `asyncvid eval fidelity --json` report: PSNR per layout")
    q.add_argument("--bench", nargs="+", metavar="FILE",
                   help="`asyncvid bench --json` reports (real or --simulate): each layout they timed says so in the "
                        "'speed known from' column (simulated / measured), the others say 'predicted only'")
    q.add_argument("--min-psnr", type=float, metavar="DB", help="only layouts measured at or above this PSNR (needs --fidelity)")
    q.add_argument("--stages", type=int, help="predict only this many stages (with --stride, --warmup, --cfg)")
    q.add_argument("--cfg", type=int, default=1, help="with --stages: CFG groups (default 1)")
    q.add_argument("--stride", type=int, default=1, help="with --stages (default 1)")
    q.add_argument("--warmup", type=int, default=1, help="with --stages (default 1)")
    q.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps per video")
    q.add_argument("--link", default="loopback",
                   help="nvlink, pcie, ib, ethernet, loopback, measure (a ping-pong between two local ranks), "
                        "or a bandwidth in GB/s (default loopback)")
    q.add_argument("--profile", metavar="FILE", help="read this saved profile instead of profiling")
    q.add_argument("--save-profile", metavar="FILE", help="write the profile taken here")
    q.add_argument("--preset", choices=["null", "tiny", "small", "full"], default="small",
                   help="size of the `animatediff`/`svd` random presets")
    q.add_argument("--frames", type=int, default=8, help="frames per video")
    add_size(q)
    q.add_argument("--threads", type=int, default=1, help="threads while profiling on CPU (default 1 = one CPU device)")
    add_device_and_dtype(q, "precision to profile in")
    q.add_argument("--json", metavar="FILE", help="also write the plan and prediction as JSON")
    q.set_defaults(func=cmd_plan)


def add_size(parser) -> None:
    parser.add_argument("--size", type=int, metavar="PIXELS",
                        help="frame height = width in pixels (default: the model's own size, as its pipeline renders)")
    parser.add_argument("--latent", type=int, help=argparse.SUPPRESS)  # before --size; latent pixels


def parse_config(text: str) -> tuple[int, int, int | None, int]:
    """``NxS[wW][cC]``: stages x stride, optional warm-up, optional CFG groups (ranks = N x C)."""
    match = re.fullmatch(r"(\d+)x(\d+)(?:w(\d+))?(?:c(\d+))?", text.lower())
    if not match:
        raise AsyncVidError(f"--configs: expected STAGESxSTRIDE[wWARMUP][cCFG] such as 2x1, 2x2w3 or 1x1c2, got {text!r}")
    stages, stride, warmup, groups = match.groups()
    return int(stages), int(stride), None if warmup is None else int(warmup), int(groups or 1)


def cmd_bench(args) -> int:
    from ..bench.speed import run_bench, write_report
    from ..bench.stack import parse_stack

    apply_device(args)
    for stack in args.stack:
        parse_stack(stack)  # one line for a bad name, before anything starts
    if args.render:
        from ..bench.render import run_render_bench

        write_report(run_render_bench(args.render, args.devices, log=logs.info),
                     args.json)
        return 0
    configs = [parse_config(c) for c in (SWEEP if args.sweep else args.configs)]
    configs = [(n, s, args.warmup if w is None else w, c) for n, s, w, c in configs]
    if args.simulate:
        return _bench_simulated(args, configs)
    if args.step_ms:
        raise AsyncVidError("--step-ms needs --simulate TABLE")
    if args.memory_only:
        from ..bench.memory import run_memory

        cfg = dict(model=args.model, preset=args.preset, frames=args.frames, size=args.size, latent=args.latent,
                   dtype=args.dtype)
        stages = sorted({n for n, _, _, _ in configs if n > 1}) or [2]
        write_report({"memory": run_memory(cfg, stages, log=logs.info)}, args.json)
        return 0
    report = run_bench(args.preset, args.frames, args.size, args.steps, args.warmup, args.repeats, configs,
                       log=logs.info, model=args.model, memory=not args.no_memory, dtype=args.dtype,
                       latent=args.latent, layers=args.layers, forecasts=tuple(args.forecast),
                       stacks=tuple(args.stack))
    write_report(report, args.json, args.markdown)
    return 0


def _bench_simulated(args, configs) -> int:
    from ..bench import simulated
    from ..bench.speed import write_report

    if args.render or args.memory_only:
        raise AsyncVidError("--simulate measures speed only: not with --render or --memory-only")
    if args.stack != ["none"]:
        raise AsyncVidError("--stack is measured on real compute only: not with --simulate")
    if any(n * c > 8 for n, _, _, c in configs):
        raise AsyncVidError("--simulate: at most 8 simulated devices (stages x cfg) on one machine")
    steps_ms = args.step_ms or ([None] if args.simulate not in ("uniform", "profile") else [50.0])
    cfg = dict(model=args.model, preset=args.preset, frames=args.frames, size=args.size, latent=args.latent,
               steps=args.steps, warmup=args.warmup, repeats=args.repeats, dtype=args.dtype, layers=args.layers,
               forecasts=tuple(args.forecast))
    report = simulated.run_simulated_bench(cfg, configs, args.simulate, steps_ms, log=logs.info)
    write_report(report, args.json)
    if args.markdown:
        atomic_write(args.markdown, simulated.markdown(report))
    return 0


def cmd_plan(args) -> int:
    import json

    import torch

    from ..planner.links import parse_link
    from ..catalog.pipelines import build_pipeline, latent_side
    from ..planner.report import describe, load_profile, predict_from, profile_pipeline, save_profile

    link = parse_link(args.link)
    apply_device(args)
    if args.devices < 1:
        raise AsyncVidError(f"--devices must be >= 1, got {args.devices}")
    if args.profile:
        profile = load_profile(args.profile)
    else:
        torch.set_num_threads(args.threads)
        from ..distributed.env import default_device

        pipe = build_pipeline(args.model, args.preset).to(device=default_device(), dtype=getattr(torch, args.dtype))
        profile = profile_pipeline(pipe, args.frames, latent_side(pipe, vars(args)))
        profile["model"] = args.model
    if args.save_profile:
        save_profile(profile, args.save_profile)
    layouts = []
    if args.stages:
        if args.stages * args.cfg > args.devices:
            raise AsyncVidError(f"--stages {args.stages} x --cfg {args.cfg} needs more than --devices {args.devices}")
        pred = predict_from(profile, args.stages, args.stride, args.warmup, args.steps, link, cfg=args.cfg)
    else:
        from ..planner.layouts import bench_table, describe_layouts, enumerate_layouts, fidelity_table, rank_layouts

        if args.min_psnr is not None and not args.fidelity:
            raise AsyncVidError("--min-psnr needs --fidelity FILE (an asyncvid eval fidelity --json report)")
        fidelity = fidelity_table(_read_json(args.fidelity)) if args.fidelity else None
        measured = bench_table([_read_json(f) for f in args.bench]) if args.bench else None
        ranked = rank_layouts(enumerate_layouts(profile, args.devices, args.steps, link, fidelity, measured=measured),
                              args.objective, args.min_psnr)
        print(describe_layouts(ranked, args.objective, args.devices))
        print()
        pred, layouts = ranked[0].prediction, [lay.to_dict() for lay in ranked]
    print(describe(profile, pred, link))
    if args.json:
        atomic_write(args.json, json.dumps({"profile": profile, "link": link.__dict__, "prediction": pred.to_dict(),
                                            "layouts": layouts}, indent=1))
    return 0


def _read_json(path: str) -> dict:
    from ..utils import read_json

    return read_json(path)

"""``asyncvid bench``: AsyncDiff speed against one-process baselines; JSON out (see asyncvid.bench)."""

from __future__ import annotations


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure per-step speed of stage/stride configurations (JSON)",
                              description="Per-step denoising time of stages 1/2 x stride 1/2 against the untouched "
                                          "pipeline in one process with one thread and with every core. Each rank "
                                          "runs one thread. Random-weight models built from configs; nothing is "
                                          "downloaded.")
    p.add_argument("--model", choices=["animatediff", "svd"], default="animatediff",
                   help="UNet family: AnimateDiff (text-to-video) or Stable Video Diffusion (image-to-video)")
    p.add_argument("--preset", choices=["tiny", "small"], default="small", help="model size (default small)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--latent", type=int, default=16, help="latent height = width (default 16)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="timed calls per configuration; the fastest counts")
    p.add_argument("--configs", nargs="+", metavar="STAGESxSTRIDE", default=["1x1", "1x2", "2x1", "2x2"],
                   help="configurations to run, e.g. 2x1 2x2 3x1")
    p.add_argument("--json", metavar="FILE", help="write the report here (default: stdout)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import sys

    from ..bench import run_bench, write_report
    from ..errors import AsyncVidError

    try:
        configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs]
        assert all(len(c) == 2 for c in configs)
    except (ValueError, AssertionError):
        raise AsyncVidError(f"--configs: expected STAGESxSTRIDE such as 2x1, got {' '.join(args.configs)}") from None
    report = run_bench(args.preset, args.frames, args.latent, args.steps, args.warmup, args.repeats, configs,
                       log=lambda line: print(line, file=sys.stderr), model=args.model)
    write_report(report, args.json)
    return 0

"""``asyncvid render FILE``: the argument parser; the work is :func:`asyncvid.render.runner.render_file`."""

from __future__ import annotations

from ..render.select import parse_shard


def add_render_parser(subparsers) -> None:
    p = subparsers.add_parser("render", help="render the jobs of a YAML job file",
                              description="Render every job of a YAML job file to <out>/<name>.<ext> plus a "
                                          "<name>.json manifest. Jobs whose manifest matches their config are skipped.")
    p.add_argument("file", help="job file (YAML)")
    p.add_argument("--devices", type=int, metavar="N",
                   help="number of devices (ranks). A job without `stages` gets N / cfg stages; jobs needing "
                        "fewer devices (stages x cfg) run as N / (stages x cfg) replicas side by side. Default: "
                        "the group size when started by srun/torchrun (one process per rank), else 1 (local "
                        "ranks are spawned for N > 1)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the file's `out`, relative to the file)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="render only this job (repeat for several: --only a --only b; or --only a,b)")
    p.add_argument("--shard", metavar="I/K", type=parse_shard,
                   help="render only jobs I, I+K, I+2K, ... of the file (0-based I; Slurm array tasks use this)")
    p.add_argument("--force", action="store_true", help="render again even if an up-to-date output exists")
    p.add_argument("--dry-run", action="store_true",
                   help="check the file and its model folders, print the resolved jobs and exit (status 1 if "
                        "a job would fail on these devices)")
    p.add_argument("--timings", "--profile", dest="profile", action="store_true",
                   help="print the batch's wall time against its summed denoising time and write them, with "
                        "per-job timings, to <out>/render_profile.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-job success lines")
    p.add_argument("--rank-timeout", type=float, metavar="SECONDS",
                   help="with several devices: a rank waiting on another inside a denoising pass for longer than "
                        "max(SECONDS, 20 x the slowest step seen) names it and every rank stops (nothing partial "
                        "is kept; run again to resume). The first step gets 5 x SECONDS; 0 turns this off. "
                        "Default: $ASYNCVID_RANK_TIMEOUT, else 60")
    p.set_defaults(func=cmd_render)

    s = subparsers.add_parser("schema", help="print the JSON Schema of a job file (for editors)",
                              description="Print the JSON Schema of render job files, derived from the models that "
                                          "validate them. Point a YAML language server at it with a first-line "
                                          "comment: # yaml-language-server: $schema=asyncvid-jobs.schema.json")
    s.add_argument("--out", metavar="FILE", help="write it here instead of printing it")
    s.set_defaults(func=cmd_schema)


def cmd_render(args) -> int:
    from ..render.runner import render_file

    if args.rank_timeout is not None:  # every rank reads it, spawned ones too
        import os

        from ..distributed.watchdog import ENV, floor_from

        os.environ[ENV] = f"{floor_from(args.rank_timeout):g}"
    only = [name for value in args.only for name in value.split(",") if name] if args.only else None
    return render_file(args.file, devices=args.devices, out=args.out, only=only, shard=args.shard,
                       force=args.force, dry_run=args.dry_run, profile=args.profile, quiet=args.quiet)


def cmd_schema(args) -> int:
    import json

    from ..render.json_schema import job_file_schema
    from ..utils import atomic_write

    text = json.dumps(job_file_schema(), indent=2) + "\n"
    if args.out:
        atomic_write(args.out, text)
    else:
        print(text, end="")
    return 0

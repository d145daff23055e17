"""The ``asyncvid`` command line.

Each subcommand module provides ``add_<name>_parser(subparsers)`` that registers its parser with
``func=<handler(args) -> int>``. Problems the user can fix are :class:`AsyncVidError` and are printed
as one ``asyncvid: error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ..errors import AsyncVidError


def add_render_parser(subparsers) -> None:
    p = subparsers.add_parser("render", help="render the jobs of a YAML job file",
                              description="Render every job of a YAML job file to <out>/<name>.<ext> plus a "
                                          "<name>.json manifest. Jobs whose manifest matches their config are skipped.")
    p.add_argument("file", help="job file (YAML)")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="number of devices (ranks); every job's `stages` must equal N (default 1)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the file's `out`, relative to the file)")
    p.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="render only these jobs")
    p.add_argument("--force", action="store_true", help="render again even if an up-to-date output exists")
    p.add_argument("--dry-run", action="store_true", help="print the resolved jobs and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-job success lines")
    p.set_defaults(func=cmd_render)


def _select(jobs, only):
    if not only:
        return jobs
    names = {j.name for j in jobs}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise AsyncVidError(f"--only: no job named {', '.join(map(repr, unknown))} (jobs: {', '.join(sorted(names))})")
    return [j for j in jobs if j.name in set(only)]


def cmd_render(args) -> int:
    from ..jobs import load_job_file
    from .render import is_done, make_task

    if args.devices < 1:
        raise AsyncVidError(f"--devices must be >= 1, got {args.devices}")
    jobfile = load_job_file(args.file)
    out = Path(args.out).expanduser().resolve() if args.out else jobfile.out
    tasks = [make_task(job, jobfile.model_ref(job), out) for job in _select(jobfile.jobs, args.only)]
    if args.dry_run:
        import yaml

        jobs = [dict(t.config, output=t.output, up_to_date=is_done(t)) for t in tasks]
        print(yaml.safe_dump({"file": str(jobfile.path), "out": str(out), "devices": args.devices, "jobs": jobs},
                             sort_keys=False, allow_unicode=True), end="")
        return 0
    return _render(tasks, args)


def _render(tasks, args) -> int:
    from .render import _render_all, is_done, resolve_model

    quiet, devices = args.quiet, args.devices
    pending, failed, skipped = [], [], 0
    for task in tasks:
        if not args.force and is_done(task):
            skipped += 1
            if not quiet:
                print(f"skip {task.name} (up to date: {task.output})")
            continue
        stages = task.config["stages"]
        try:
            if stages != devices:
                raise AsyncVidError(f"stages is {stages} but --devices is {devices}: a job runs one stage per device, "
                                    f"so set `stages: {devices}` or run with --devices {stages}")
            task.model_dir = resolve_model(task.model)
        except AsyncVidError as exc:
            failed.append(task.name)
            print(f"asyncvid: job {task.name!r} failed: {exc}", file=sys.stderr)
            continue
        pending.append(task)
    rendered = 0
    if pending:
        sys.stdout.flush()
        if devices == 1:
            results = _render_all(pending, 1, quiet)
        else:
            results = _render_group(pending, devices, quiet)
        rendered = sum(r["status"] == "done" for r in results)
        failed += [r["name"] for r in results if r["status"] != "done"]
    if not quiet:
        print(f"{rendered} rendered, {skipped} skipped, {len(failed)} failed")
    return 1 if failed else 0


def _render_group(tasks, devices: int, quiet: bool) -> list[dict]:
    """Run the render loop on ``devices`` local ranks; jobs the group never finished count as failed."""
    import json

    import asyncvid
    from .render import _render_all

    with tempfile.TemporaryDirectory(prefix="asyncvid-render-") as tmp:
        results_path = os.path.join(tmp, "results.jsonl")
        error = None
        try:
            asyncvid.launch_local(_render_all, devices, tasks, devices, quiet, results_path)
        except AsyncVidError as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        results = []
        if os.path.exists(results_path):
            with open(results_path, encoding="utf-8") as f:
                results = [json.loads(line) for line in f if line.strip()]
    finished = {r["name"] for r in results}
    for task in tasks:
        if task.name not in finished:
            message = f"not rendered: {error or 'the device group stopped early'}"
            print(f"asyncvid: job {task.name!r} failed: {message}", file=sys.stderr)
            results.append(dict(name=task.name, status="failed", message=message))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncvid", description="AsyncDiff stage-parallel video diffusion.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_render_parser(subparsers)
    try:
        from .bench import add_bench_parser
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.bench":  # a missing dependency of bench.py is a real error
            raise
    else:
        add_bench_parser(subparsers)
    return parser


def main(argv=None) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before any diffusers/transformers import: never download
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except AsyncVidError as exc:
        print(f"asyncvid: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asyncvid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

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
    p.add_argument("--devices", type=int, metavar="N",
                   help="number of devices (ranks); every job's `stages` must equal N. Default: the group "
                        "size when started by srun/torchrun (one process per rank), else 1 (local ranks are "
                        "spawned for N > 1)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the file's `out`, relative to the file)")
    p.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="render only these jobs")
    p.add_argument("--shard", metavar="I/K", type=_shard,
                   help="render only jobs I, I+K, I+2K, ... of the file (0-based I; Slurm array tasks use this)")
    p.add_argument("--force", action="store_true", help="render again even if an up-to-date output exists")
    p.add_argument("--dry-run", action="store_true",
                   help="check the file and its model folders, print the resolved jobs and exit")
    p.add_argument("--profile", action="store_true",
                   help="print the batch's wall time against its summed denoising time and write them, with "
                        "per-job timings, to <out>/render_profile.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-job success lines")
    p.set_defaults(func=cmd_render)


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= I < K, got {text!r}")
    return index, count


def _select(jobs, only, shard=None):
    if shard:
        jobs = jobs[shard[0]::shard[1]]
    if not only:
        return jobs
    names = {j.name for j in jobs}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise AsyncVidError(f"--only: no job named {', '.join(map(repr, unknown))} (jobs: {', '.join(sorted(names))})")
    return [j for j in jobs if j.name in set(only)]


def cmd_render(args) -> int:
    from ..distributed.env import launched_world_size
    from ..jobs import load_job_file
    from ..render.tasks import tasks_for
    from .render import is_done

    launched = launched_world_size()
    if args.devices is None:
        args.devices = launched
    if args.devices < 1:
        raise AsyncVidError(f"--devices must be >= 1, got {args.devices}")
    if launched > 1 and args.devices != launched:
        raise AsyncVidError(f"--devices is {args.devices} but the launcher started {launched} ranks; "
                            "leave --devices out under srun/torchrun")
    jobfile = load_job_file(args.file)
    out = Path(args.out).expanduser().resolve() if args.out else jobfile.out
    jobs = _select(jobfile.jobs, args.only, args.shard)
    tasks = tasks_for(jobfile, out, jobs)
    if args.dry_run:
        import yaml

        _check_folders(jobfile, jobs, tasks)
        listed = [dict(t.config, output=t.output, up_to_date=is_done(t)) for t in tasks]
        print(yaml.safe_dump({"file": str(jobfile.path), "out": str(out), "devices": args.devices, "jobs": listed},
                             sort_keys=False, allow_unicode=True), end="")
        return 0
    if launched > 1:
        from .launched import render_launched

        return render_launched(tasks, args, out)
    return _render(tasks, args, out)


def _check_folders(jobfile, jobs, tasks) -> None:
    """--dry-run: a missing model or motion adapter folder is an error (rendering reports it per job)."""
    from ..catalog.folders import missing_adapter, missing_model

    for job, task in zip(jobs, tasks):
        problem = missing_model(task.model)
        field = "model"
        if problem is None and task.motion_adapter:
            problem, field = missing_adapter(task.motion_adapter), "motion_adapter"
        if problem:
            raise AsyncVidError(f"{jobfile.where(job, field)}: {field}: {problem}")


def _clean_partials(tasks, quiet: bool) -> None:
    """Remove what a killed run left (hidden .partial files): they never carry a final name."""
    from ..video import remove_partial

    removed = []
    for task in tasks:
        removed += remove_partial(task.output, task.config["format"])
        manifest_tmp = Path(task.manifest).with_name(f".{Path(task.manifest).name}.partial")
        if manifest_tmp.exists():
            manifest_tmp.unlink()
            removed.append(manifest_tmp)
    if removed and not quiet:
        print(f"removed {len(removed)} partial file(s) left by an interrupted run")


def _plan(tasks, args) -> tuple[list, list, int]:
    """(pending tasks, names of jobs that failed before rendering, number skipped as up to date)."""
    from .render import is_done, resolve

    quiet, devices = args.quiet, args.devices
    _clean_partials(tasks, quiet)
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
            resolve(task)
        except AsyncVidError as exc:
            failed.append(task.name)
            print(f"asyncvid: job {task.name!r} failed: {exc}", file=sys.stderr)
            continue
        pending.append(task)
    return pending, failed, skipped


def _render(tasks, args, out: Path) -> int:
    from .render import _render_all

    quiet, devices = args.quiet, args.devices
    pending, failed, skipped = _plan(tasks, args)
    rendered = 0
    profile_path = str(out / "render_profile.json") if args.profile else None
    if profile_path and os.path.exists(profile_path):
        os.remove(profile_path)  # a stale profile must not pass for this run's
    if pending:
        sys.stdout.flush()
        if devices == 1:
            results = _render_all(pending, 1, quiet, None, profile_path)
        else:
            results = _render_group(pending, devices, quiet, profile_path)
        rendered = sum(r["status"] == "done" for r in results)
        failed += [r["name"] for r in results if r["status"] != "done"]
    if not quiet:
        print(f"{rendered} rendered, {skipped} skipped, {len(failed)} failed")
    if profile_path:
        _print_profile(profile_path)
    return 1 if failed else 0


def _print_profile(path: str) -> None:
    import json

    if not os.path.exists(path):
        print("profile: nothing was rendered")
        return
    with open(path, encoding="utf-8") as f:
        p = json.load(f)
    ratio = p["wall_over_denoise"]
    print(f"profile: {p['jobs']} job(s) on {p['devices']} device(s): wall {p['render_wall_s']:.2f} s "
          f"(+{p['setup_s']:.2f} s loading models) vs denoise {p['denoise_s']:.2f} s"
          + (f" = {ratio:.3f}x" if ratio else "")
          + f"; decode {p['decode_s']:.2f} s, encode {p['encode_s']:.2f} s (background) -> {path}")


def _render_group(tasks, devices: int, quiet: bool, profile_path: str | None = None) -> list[dict]:
    """Run the render loop on ``devices`` local ranks; jobs the group never finished count as failed."""
    import json

    import asyncvid
    from .render import _render_all

    with tempfile.TemporaryDirectory(prefix="asyncvid-render-") as tmp:
        results_path = os.path.join(tmp, "results.jsonl")
        error = None
        try:
            asyncvid.launch_local(_render_all, devices, tasks, devices, quiet, results_path, profile_path)
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
    from .bench import add_bench_parser
    from .evaluate import add_eval_parser
    from .slurm import add_slurm_parser

    add_render_parser(subparsers)
    add_bench_parser(subparsers)
    add_eval_parser(subparsers)
    add_slurm_parser(subparsers)
    return parser


def _terminated(signum, frame):
    """SIGTERM (scancel, a job's time limit, kill) unwinds like Ctrl-C, so partial outputs are removed."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    import signal

    os.environ["HF_HUB_OFFLINE"] = "1"  # before any diffusers/transformers import: never download
    signal.signal(signal.SIGTERM, _terminated)
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

"""``asyncvid render FILE``: load the job file, select its jobs, then print them (dry run), render
them in this process (one device) or on N local ranks, or, started once per rank by a launcher,
hand over to :mod:`.launched`."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ..errors import AsyncVidError
from .batch import (RenderOptions, check_folders, device_problem, devices_per_job, fail_unfinished, pending_work,
                    profile_path, summarize)
from .jobfile import load_job_file
from .select import select_jobs
from .tasks import Task, is_done, tasks_for


def render_file(file, devices: int | None = None, out=None, only: list[str] | None = None,
                shard: tuple[int, int] | None = None, force: bool = False, dry_run: bool = False,
                profile: bool = False, quiet: bool = False) -> int:
    """Render (or with ``dry_run`` list) the selected jobs of a job file; the exit status.
    ``devices`` defaults to the launcher's group size, else 1; ``out`` to the file's ``out``."""
    from ..distributed.env import launched_world_size

    launched = launched_world_size()
    if devices is None:
        devices = launched
    if devices < 1:
        raise AsyncVidError(f"--devices must be >= 1, got {devices}")
    if launched > 1 and devices != launched:
        raise AsyncVidError(f"--devices is {devices} but the launcher started {launched} ranks; "
                            "leave --devices out under srun/torchrun")
    jobfile = load_job_file(file)
    out = Path(out).expanduser().resolve() if out else jobfile.out
    jobs = select_jobs(jobfile.jobs, only, shard)
    tasks = tasks_for(jobfile, out, jobs, devices)
    if dry_run:
        import yaml

        check_folders(jobfile, jobs, tasks)
        listed = [dict(t.config, output=t.output, up_to_date=is_done(t)) for t in tasks]
        print(yaml.safe_dump({"file": str(jobfile.path), "out": str(out), "devices": devices, "jobs": listed},
                             sort_keys=False, allow_unicode=True), end="")
        problems = [(t.name, device_problem(t, devices, launched > 1)) for t in tasks]
        for name, problem in problems:
            if problem:
                print(f"asyncvid: job {name!r} would fail: {problem}", file=sys.stderr)
        return 1 if any(problem for _, problem in problems) else 0
    options = RenderOptions(devices=devices, force=force, profile=profile, quiet=quiet)
    if launched > 1:
        from .launched import render_launched

        return render_launched(tasks, options, out)
    return render_local(tasks, options, out)


def render_local(tasks: list[Task], options: RenderOptions, out: Path) -> int:
    """In this process for one device, else on local ranks: jobs needing G devices (stages x cfg)
    run as ``devices // G`` replicas side by side (``replicas.py``), one group size after another."""
    from .loop import render_all
    from .replicas import render_replicas

    pending, failed, skipped = pending_work(tasks, options)
    results = []
    profile = profile_path(out, options)
    if profile and os.path.exists(profile):
        os.remove(profile)  # a stale profile must not pass for this run's
    by_size: dict[int, list[Task]] = {}
    for task in pending:
        by_size.setdefault(devices_per_job(task), []).append(task)
    for group, batch in by_size.items():
        sys.stdout.flush()
        replicas = min(options.devices // group, len(batch))
        idle = options.devices - replicas * group
        if not options.quiet and (replicas > 1 or idle):
            print(f"{len(batch)} job(s) of {group} device(s) each: {replicas} replica(s) side by side"
                  + (f", {idle} device(s) idle" if idle else ""), flush=True)
        if replicas > 1:
            results += render_replicas(batch, replicas, group, options.quiet, profile)
        elif group == 1:
            results += render_all(batch, 1, options.quiet, None, profile)
        else:
            results += render_group(batch, group, options.quiet, profile)
    return summarize(results, failed, skipped, options, profile)


def render_group(tasks: list[Task], devices: int, quiet: bool, profile: str | None = None) -> list[dict]:
    """Run the render loop on ``devices`` local ranks; jobs the group never finished count as failed."""
    import asyncvid

    from .loop import render_all

    with tempfile.TemporaryDirectory(prefix="asyncvid-render-") as tmp:
        results_path = os.path.join(tmp, "results.jsonl")
        error = None
        try:
            asyncvid.launch_local(render_all, devices, tasks, devices, quiet, results_path, profile)
        except AsyncVidError as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        results = []
        if os.path.exists(results_path):
            with open(results_path, encoding="utf-8") as f:
                results = [json.loads(line) for line in f if line.strip()]
    return fail_unfinished(tasks, results, error or "the device group stopped early")

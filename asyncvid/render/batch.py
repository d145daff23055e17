"""A batch's bookkeeping around the render loop, the same in every mode: model folders checked,
partial files of an interrupted run removed, what is pending / up to date / failed before
rendering, and the closing summary and profile lines."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import AsyncVidError
from ..utils import partial_leftovers
from .tasks import Task, is_done, resolve


@dataclass(frozen=True)
class RenderOptions:
    """How a batch renders: on ``devices`` ranks, ``force`` re-renders up-to-date jobs, ``profile``
    writes ``<out>/render_profile.json``, ``quiet`` drops the progress bar and per-job lines."""

    devices: int
    force: bool = False
    profile: bool = False
    quiet: bool = False


def check_folders(jobfile, jobs, tasks: list[Task]) -> None:
    """Before a dry run or a submission: a missing model or motion adapter folder is an error
    (rendering reports it per job)."""
    from ..catalog.folders import missing_adapter, missing_model

    for job, task in zip(jobs, tasks):
        problem = missing_model(task.model)
        field = "model"
        if problem is None and task.motion_adapter:
            problem, field = missing_adapter(task.motion_adapter), "motion_adapter"
        if problem:
            raise AsyncVidError(f"{jobfile.where(job, field)}: {field}: {problem}")


def clean_partials(tasks: list[Task], quiet: bool) -> None:
    """Remove what a killed run left (hidden .partial files): they never carry a final name."""
    from ..video import remove_partial

    removed = []
    for task in tasks:
        removed += remove_partial(task.output, task.config["format"])
        for leftover in partial_leftovers(task.manifest):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    if removed and not quiet:
        print(f"removed {len(removed)} partial file(s) left by an interrupted run")


def pending_work(tasks: list[Task], options: RenderOptions, exact: bool = False) -> tuple[list[Task], list[str], int]:
    """(pending tasks, names of jobs that failed before rendering, number skipped as up to date).
    ``exact``: every job must use all the devices (a launcher's group: no replicas)."""
    quiet, devices = options.quiet, options.devices
    clean_partials(tasks, quiet)
    pending, failed, skipped = [], [], 0
    for task in tasks:
        if not options.force and is_done(task):
            skipped += 1
            if not quiet:
                print(f"skip {task.name} (up to date: {task.output})")
            continue
        try:
            problem = device_problem(task, devices, exact)
            if problem:
                raise AsyncVidError(problem)
            resolve(task)
        except AsyncVidError as exc:
            failed.append(task.name)
            print(f"asyncvid: job {task.name!r} failed: {exc}", file=sys.stderr)
            continue
        pending.append(task)
    return pending, failed, skipped


def devices_per_job(task: Task) -> int:
    """Ranks one job runs on: its stages times its CFG groups."""
    return task.config["stages"] * task.config.get("cfg", 1)


def device_problem(task: Task, devices: int, exact: bool = False) -> str | None:
    """Why ``task`` cannot run on ``devices`` devices (None if it can). ``exact``: under a launcher
    every job must use every rank (no replicas)."""
    need, c = devices_per_job(task), task.config
    if c["stages"] > 1 and c["warmup"] < 1:
        return f"warmup: must be >= 1 with {c['stages']} stages (one per device; the first step seeds every stage)"
    if need > devices or (exact and need != devices):
        hint = ("; under a launcher a job uses every rank (replicas: run `asyncvid render "
                f"--devices {devices}` in one task)" if exact and need < devices else
                f" (run with --devices {need} or more)" if need > devices else "")
        return f"needs {need} devices (stages {c['stages']} x cfg {c.get('cfg', 1)}) but the group has {devices}{hint}"
    return None


def fail_unfinished(tasks: list[Task], results: list[dict], reason: str) -> list[dict]:
    """``results`` plus a failed entry, printed as one line each, for every task none of them names
    (a group or replica that stopped before finishing them)."""
    finished = {r["name"] for r in results}
    for task in tasks:
        if task.name not in finished:
            message = f"not rendered: {reason}"
            print(f"asyncvid: job {task.name!r} failed: {message}", file=sys.stderr)
            results.append(dict(name=task.name, status="failed", message=message))
    return results


def profile_path(out: Path, options: RenderOptions) -> str | None:
    return str(out / "render_profile.json") if options.profile else None


def summarize(results: list[dict], failed: list[str], skipped: int, options: RenderOptions,
              profile: str | None) -> int:
    """Print ``N rendered, N skipped, N failed`` (unless quiet) and the profile line; the exit status."""
    rendered = sum(r["status"] == "done" for r in results)
    failed = failed + [r["name"] for r in results if r["status"] != "done"]
    if not options.quiet:
        print(f"{rendered} rendered, {skipped} skipped, {len(failed)} failed", flush=True)
    if profile:
        print_profile(profile)
    return 1 if failed else 0


def print_profile(path: str) -> None:
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

"""Several device groups rendering one batch side by side (data parallelism over jobs).

With ``--devices D`` and jobs that each need G = stages x cfg devices, ``D // G`` replicas run at
once, each a local group of G ranks (one process when G = 1) over the same pending jobs. A replica
takes a job by creating its claim file first (``O_EXCL`` in a folder private to this run), so each
job is rendered exactly once and a fast replica simply takes more. Outputs, manifests and resume are
the render loop's own: a killed run leaves no claim behind, and the next run skips finished videos.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import AsyncVidError
from ..utils import atomic_write, one_line
from .batch import fail_unfinished
from .tasks import Task


def render_replicas(tasks: list[Task], replicas: int, group: int, quiet: bool, profile: str | None) -> list[dict]:
    """Render ``tasks`` on ``replicas`` local groups of ``group`` ranks; the per-job results (jobs no
    replica finished count as failed, with the reason)."""
    import asyncvid

    from .loop import render_all

    with tempfile.TemporaryDirectory(prefix="asyncvid-replicas-") as tmp:
        claims = os.path.join(tmp, "claims")
        os.mkdir(claims)
        errors: dict[int, str] = {}
        start = time.perf_counter()

        def run(index: int) -> None:
            label = f"replica {index + 1}/{replicas}"
            results, part = os.path.join(tmp, f"results.{index}.jsonl"), os.path.join(tmp, f"profile.{index}.json")
            try:
                asyncvid.launch_local(render_all, group, tasks, group, quiet, results, part if profile else None,
                                      claims, label, first_local_rank=index * group)  # its own GPUs
            except Exception as exc:  # noqa: BLE001 - one replica failing leaves the others their jobs
                errors[index] = one_line(exc)
                print(f"asyncvid: {label} stopped: {errors[index]}", file=sys.stderr, flush=True)

        threads = [threading.Thread(target=run, args=(i,), name=f"replica-{i}") for i in range(replicas)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        results = []
        for path in sorted(Path(tmp).glob("results.*.jsonl")):
            results += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if profile:
            parts = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(tmp).glob("profile.*.json"))]
            if parts:
                atomic_write(profile, json.dumps(merged_profile(parts, replicas, group, wall), indent=2) + "\n")
    return fail_unfinished(tasks, results, "; ".join(errors.values()) or "no replica rendered it")


def merged_profile(parts: list[dict], replicas: int, group: int, wall: float) -> dict:
    """One profile for the batch from each replica's: job times summed; the rendering wall time is
    the longest replica's (each replica's clock starts once its process is up, and excludes its
    loading); ``wall_s`` is the whole run's, starting the replicas included."""
    sums = {k: round(sum(p[k] for p in parts), 4) for k in ("denoise_s", "decode_s", "encode_s")}
    render_wall = max(p["render_wall_s"] for p in parts)
    return dict(jobs=sum(p["jobs"] for p in parts), devices=replicas * group, replicas=replicas,
                devices_per_replica=group, wall_s=round(wall, 4), setup_s=round(max(p["setup_s"] for p in parts), 4),
                render_wall_s=round(render_wall, 4), **sums,
                wall_over_denoise=round(render_wall * len(parts) / sums["denoise_s"], 4) if sums["denoise_s"] else None,
                jobs_timings=[dict(t, replica=i) for i, p in enumerate(parts) for t in p["jobs_timings"]])


def replica_plan(devices: int, group: int) -> int:
    """Replicas of ``group`` devices that fit in ``devices``."""
    if group > devices:
        raise AsyncVidError(f"a job needs {group} devices but --devices is {devices}")
    return devices // group

"""Where a submitted job file stands: which videos are done, running, pending or failed.

Done comes from the manifests (the same check the renderer uses to skip); running and pending from
``squeue``; a job that is neither, whose array task ran, failed: how comes from Slurm's accounting
(``sacct``: TIMEOUT, OUT_OF_MEMORY, CANCELLED, FAILED with its exit code) when the cluster keeps
it, beside the most telling line of the task's log. Each submission of the
kept script (first or resubmitted) is one line of ``<out>/slurm/submissions.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import AsyncVidError
from .script import SLURM_DIR


def records_path(out: Path) -> Path:
    return out / SLURM_DIR / "submissions.jsonl"


def record_submission(out: Path, job_id: int, script: Path, file: Path, tasks: int, indices: list[int],
                      devices: int = 1) -> None:
    """One line of ``submissions.jsonl``; ``devices`` per task decides unpinned jobs' stages (and so
    the videos' identity), which ``status`` needs to recognise finished ones."""
    path = records_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = dict(job_id=job_id, script=str(script), file=str(file), tasks=tasks, indices=indices, devices=devices,
                 submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with open(path, "a", encoding="utf-8") as f:  # one short line per append: no torn records
        f.write(json.dumps(entry) + "\n")


def load_records(out: Path) -> list[dict]:
    path = records_path(out)
    if not path.is_file():
        raise AsyncVidError(f"{out}: no asyncvid Slurm submission here (no {SLURM_DIR}/submissions.jsonl)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AsyncVidError(f"{path}:{n}: not a JSON line") from None
    if not records:
        raise AsyncVidError(f"{path} is empty")
    return records


@dataclass
class JobState:
    name: str
    index: int  # array task that renders it
    state: str  # done | running | pending | failed | not run
    detail: str = ""


_TELLING = (r"CANCELLED|DUE TO TIME LIMIT|PREEMPT|NODE FAIL|OUT OF MEMORY|oom-kill",  # Slurm's notices first
            r"^asyncvid: (error|job)", r"error|failed|Killed|interrupted")


def last_error(log: Path) -> str:
    """The most telling line of an array task's log: Slurm's cancel notice, else asyncvid's error."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    for pattern in _TELLING:
        for line in reversed(lines):
            if re.search(pattern, line):
                return line[:200]
    return lines[-1][:200] if lines else ""


def job_states(out: Path, tasks, shards: int, queued: dict[int, str], job_ids: list[int],
               finals: dict[int, tuple[str, str]] | None = None) -> list[JobState]:
    """``tasks``: the file's render tasks in file order; task j belongs to array index j % shards.
    ``finals``: :func:`~.commands.final_states` of the array tasks (empty without accounting)."""
    from ..render.tasks import is_done

    logs = out / SLURM_DIR / "logs"
    states = []
    for j, task in enumerate(tasks):
        index = j % shards
        if is_done(task):
            states.append(JobState(task.name, index, "done", task.output))
        elif index in queued:
            states.append(JobState(task.name, index, queued[index].lower()))
        else:
            ran = [logs / f"{job}_{index}.out" for job in job_ids if (logs / f"{job}_{index}.out").exists()]
            final = (finals or {}).get(index)
            if ran or final:
                said = f"{os.path.basename(ran[-1])}: {last_error(ran[-1])}" if ran else ""
                if final:
                    slurm = "Slurm: " + ", ".join(part for part in final if part)
                    said = f"{slurm}; {said}" if said else slurm
                states.append(JobState(task.name, index, "failed", said))
            else:
                states.append(JobState(task.name, index, "not run"))
    return states


def to_resubmit(states: list[JobState]) -> list[int]:
    """Array indices with a job that is neither done nor still queued."""
    return sorted({s.index for s in states if s.state in ("failed", "not run")})

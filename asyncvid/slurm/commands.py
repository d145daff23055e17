"""The Slurm client commands asyncvid runs (sinfo, sbatch, squeue, sacct), each failing with one line."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from ..errors import AsyncVidError


def run(args: list[str], timeout: float = 60) -> str:
    """stdout of a Slurm command; a missing client or a non-zero exit is one AsyncVidError line."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise AsyncVidError(f"{args[0]} not found: this machine has no Slurm client (run on a login node)") from None
    except subprocess.TimeoutExpired:
        raise AsyncVidError(f"{args[0]} did not answer within {timeout:.0f} s (is slurmctld up?)") from None
    if proc.returncode != 0:
        message = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        raise AsyncVidError(f"{' '.join(args[:2])} failed: {message}")
    return proc.stdout


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    gpus: int


def gpus_in_gres(gres: str) -> int:
    """GPUs in a gres string such as ``gpu:8``, ``gpu:a100:4(S:0-1),shard:8`` or ``(null)``."""
    total = 0
    for item in gres.split(","):
        match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if match:
            total += int(match.group(1))
    return total


def partition_nodes(partition: str | None) -> list[Node]:
    """The nodes of ``partition`` (the default one if None) with their CPUs and GPUs."""
    args = ["sinfo", "-h", "-N", "-o", "%N|%c|%G"] + (["-p", partition] if partition else [])
    nodes = {}
    for line in run(args).splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            nodes[parts[0]] = Node(parts[0], int(parts[1]), gpus_in_gres(parts[2]))
    if not nodes:
        raise AsyncVidError(f"partition {partition!r} has no nodes" if partition else "sinfo lists no nodes")
    return list(nodes.values())


def sbatch(script: str, array: str | None = None) -> int:
    """Submit ``script``; ``array`` overrides its ``--array`` directive. Returns the job id."""
    out = run(["sbatch", "--parsable"] + ([f"--array={array}"] if array else []) + [script])
    job = out.strip().split(";")[0]
    if not job.isdigit():
        raise AsyncVidError(f"sbatch printed no job id: {out.strip()!r}")
    return int(job)


def array_states(job_ids: list[int]) -> dict[int, str]:
    """Array task index -> squeue state (PENDING, RUNNING, ...) for the tasks of ``job_ids`` still queued.
    A later submission wins when an index appears in several."""
    if not job_ids:
        return {}
    # all of the user's array tasks, filtered here: squeue -j fails on ids it has already forgotten
    out = run(["squeue", "-h", "-r", "--me", "-o", "%F|%K|%T"])
    order = {job: i for i, job in enumerate(job_ids)}
    seen: dict[int, tuple[int, str]] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or int(parts[0]) not in order:
            continue
        rank, index = order[int(parts[0])], int(parts[1])
        if index not in seen or rank >= seen[index][0]:
            seen[index] = (rank, parts[2])
    return {index: state for index, (_, state) in seen.items()}


def final_states(job_ids: list[int]) -> dict[int, tuple[str, str]]:
    """Array task index -> (final state, how it ended) from Slurm's accounting (``sacct``), such as
    ``("TIMEOUT", "")``, ``("FAILED", "exit 3")``, ``("CANCELLED", "signal 15")``; a later submission
    wins. Empty when the cluster keeps no accounting (then ``status`` reads the task logs alone)."""
    if not job_ids:
        return {}
    try:
        out = run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(map(str, job_ids))])
    except AsyncVidError:
        return {}
    return parse_sacct(out, job_ids)


def parse_sacct(text: str, job_ids: list[int]) -> dict[int, tuple[str, str]]:
    """``sacct -P -o JobID,State,ExitCode`` lines (``86_1|CANCELLED by 0|0:15``) of ``job_ids``' array
    tasks; pending ranges (``86_[3-5]``) and other jobs are skipped."""
    order = {job: i for i, job in enumerate(job_ids)}
    seen: dict[int, tuple[int, str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        match = re.fullmatch(r"(\d+)_(\d+)", parts[0]) if len(parts) == 3 else None
        if not match or int(match.group(1)) not in order:
            continue
        rank, index = order[int(match.group(1))], int(match.group(2))
        state = parts[1].split()[0] if parts[1].split() else "UNKNOWN"
        code, _, signal = parts[2].partition(":")
        how = f"signal {signal}" if signal not in ("", "0") else (f"exit {code}" if code not in ("", "0") else "")
        if index not in seen or rank >= seen[index][0]:
            seen[index] = (rank, state, how)
    return {index: (state, how) for index, (_, state, how) in seen.items()}

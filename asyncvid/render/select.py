"""Which jobs of a job file a run renders: ``--shard I/K`` (every K-th job from I; Slurm array
tasks use it) and then ``--only NAME...``."""

from __future__ import annotations

import argparse

from ..errors import AsyncVidError


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/K"`` -> (I, K) with 0 <= I < K; an :class:`argparse.ArgumentTypeError` (a command-line
    value) otherwise."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= I < K, got {text!r}")
    return index, count


def select_jobs(jobs: list, only: list[str] | None, shard: tuple[int, int] | None = None) -> list:
    """Jobs I, I+K, ... of ``shard``, then those named in ``only``; an unknown name is an error."""
    if shard:
        jobs = jobs[shard[0]::shard[1]]
    if not only:
        return jobs
    names = {j.name for j in jobs}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise AsyncVidError(f"--only: no job named {', '.join(map(repr, unknown))} (jobs: {', '.join(sorted(names))})")
    return [j for j in jobs if j.name in set(only)]

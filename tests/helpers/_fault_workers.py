"""Rank functions for the fault tests: ranks that are slow, stop, or raise inside a call."""

from __future__ import annotations

import os
import signal
import time

import torch

import asyncvid
from _workers import CALL, tiny_pipeline


def _patch_last_unit(ppipe, on_call) -> None:
    """``on_call(n)`` runs before the n-th call (1-based) of this rank's last unit."""
    unit = ppipe.unet.get_submodule(ppipe.plan.stage_units(ppipe.topo.stage)[-1])
    original, calls = unit.forward, {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        on_call(calls["n"])
        return original(*args, **kwargs)

    unit.forward = forward


def sleepy_render(options: dict, sleeps: dict):
    """``sleeps``: rank -> {unit call number: seconds}; that rank sleeps there, as a slow but healthy
    rank does (a long first step, a slow unit). Starts from a fresh watchdog, as a new process would."""
    from asyncvid.distributed.watchdog import WATCH

    WATCH.steps_seen, WATCH.slowest = 0, 0.0
    ppipe = asyncvid.parallelize(tiny_pipeline(), **options)
    mine = sleeps.get(ppipe.topo.rank, {})
    _patch_last_unit(ppipe, lambda n: time.sleep(mine.get(n, 0.0)))
    out = ppipe(**CALL, generator=torch.Generator().manual_seed(0))
    return {"frames": out.frames, "limit_floor": WATCH.floor} if ppipe.is_driver else None


def stop_mid_call(options: dict, stopped_rank: int, at_call: int = 3):
    """``stopped_rank`` stops itself (SIGSTOP) inside its stage at its ``at_call``-th unit call."""
    ppipe = asyncvid.parallelize(tiny_pipeline(), **options)
    if ppipe.topo.rank == stopped_rank:
        _patch_last_unit(ppipe, lambda n: n == at_call and os.kill(os.getpid(), signal.SIGSTOP))
    ppipe(**CALL, generator=torch.Generator().manual_seed(0))
    return "finished"


def idle_between_calls(options: dict, pause: float):
    """Two calls; between them the driver does something else for ``pause`` seconds while the
    worker waits in ``serve`` for the next call."""
    ppipe = asyncvid.parallelize(tiny_pipeline(), **options)
    frames = []
    for call in range(2):
        if call and ppipe.is_driver:
            time.sleep(pause)
        out = ppipe(**CALL, generator=torch.Generator().manual_seed(0))
        if out is not None:
            frames.append(out.frames)
    return len(frames) if ppipe.is_driver else None

"""Wall-clock readings that mean run time on every device.

CUDA kernels run asynchronously: ``perf_counter`` around them measures how long it took to *launch*
them. :func:`now` first waits for the device's queued work (``torch.cuda.synchronize``), so an
interval between two readings covers the work itself; on the CPU it is plain ``perf_counter``.
"""

from __future__ import annotations

import time

import torch


def synchronize(device=None) -> None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def now(device=None) -> float:
    """Seconds, after the device's queued work has finished."""
    synchronize(device)
    return time.perf_counter()


def timed_call(pipe, kwargs: dict, seed: int = 0) -> list[float]:
    """Wall-clock time at the call's start and at the end of every step (the loop's own callback)."""
    marks: list[float] = []

    def on_step_end(p, i, t, cb_kwargs):
        marks.append(now())
        return {}

    start = now()
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step_end)
    return [start] + marks if out is not None else []

"""Measure the link between two local ranks (``asyncvid plan --link measure``; ``asyncvid bench``).

A ping-pong of a small and a large tensor over the default backend (gloo on CPU, NCCL on GPUs)
gives the per-message latency and the bandwidth that :mod:`asyncvid.engine.predict` uses. On CPU
ranks the copies run on the ranks' own cores, so the measured link is marked as not overlapping
compute.
"""

from __future__ import annotations

import time

SMALL, LARGE = 64, 4 << 20  # bytes


def _pingpong(nbytes: int, iters: int) -> float:
    """Seconds for one message of ``nbytes`` one way (rank 0's view)."""
    import torch
    import torch.distributed as dist

    from .distributed.env import default_device

    device = default_device()
    buf = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=device)
    rank = dist.get_rank()
    for i in range(iters + 2):  # two untimed round trips first
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if rank == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        else:
            dist.recv(buf, 0)
            dist.send(buf, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (2 * iters)


def probe_rank(iters: int = 20) -> dict | None:
    """Runs on two ranks; rank 0 returns latency (s) and bandwidth (bytes/s)."""
    import torch.distributed as dist

    from .distributed.env import default_device, ensure_process_group

    ensure_process_group()
    small = _pingpong(SMALL, iters * 5)
    large = _pingpong(LARGE, iters)
    if dist.get_rank() != 0:
        return None
    latency = small
    bandwidth = (LARGE - SMALL) / max(large - small, 1e-9)
    return {"latency_s": latency, "bytes_per_s": bandwidth, "backend": dist.get_backend(),
            "device": default_device().type}


def measure_local_link():
    """A :class:`~asyncvid.engine.predict.Link` measured between two ranks on this machine."""
    from .engine.predict import Link
    from .launch import launch_local

    result = launch_local(probe_rank, 2)
    return Link(f"measured {result['backend']} between two local ranks", result["bytes_per_s"], result["latency_s"],
                overlaps_compute=result["device"] != "cpu")

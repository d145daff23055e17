"""Link models for the predictions: typical interconnects, a bandwidth given by the user, or the link
between two local ranks measured here (``asyncvid plan --link measure``; ``asyncvid bench``).

A ping-pong of a small and a large tensor over the default backend (gloo on CPU, NCCL on GPUs)
gives the per-message latency and the bandwidth that :mod:`asyncvid.planner.predict` uses. On CPU
ranks the copies run on the ranks' own cores, so the measured link is marked as not overlapping
compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import AsyncVidError

SMALL, LARGE = 64, 4 << 20  # bytes


@dataclass(frozen=True)
class LinkModel:
    """A point-to-point link as the predictions see it: bandwidth, per-message latency, and whether
    transfers overlap compute."""

    name: str
    bytes_per_s: float
    latency_s: float
    overlaps_compute: bool = True


#: typical per-direction point-to-point figures; pass a number (GB/s) for your own interconnect
LINKS = {
    "nvlink": LinkModel("nvlink", 150e9, 10e-6),
    "pcie": LinkModel("pcie", 20e9, 20e-6),
    "ib": LinkModel("infiniband (200 Gb/s)", 22e9, 30e-6),
    "ethernet": LinkModel("ethernet (10 Gb/s)", 1.1e9, 100e-6),
    # gloo between CPU ranks on one host; `--link measure` gave 1.6-3.7 GB/s and 90-150 us on the 2-core
    # development machine, so these round figures are on the cautious side
    "loopback": LinkModel("gloo over TCP loopback", 2e9, 200e-6, overlaps_compute=False),
}


def parse_link(text: str) -> LinkModel:
    if text == "measure":
        return measure_local_link()
    if text in LINKS:
        return LINKS[text]
    try:
        gbps = float(text)
    except ValueError:
        raise AsyncVidError(f"--link: expected one of {', '.join(LINKS)}, measure, or a bandwidth in GB/s, "
                            f"got {text!r}") from None
    if gbps <= 0:
        raise AsyncVidError(f"--link: bandwidth must be positive, got {text!r}")
    return LinkModel(f"{gbps:g} GB/s", gbps * 1e9, 50e-6)


def _pingpong(nbytes: int, iters: int) -> float:
    """Seconds for one message of ``nbytes`` one way (rank 0's view)."""
    import torch
    import torch.distributed as dist

    from ..distributed.env import default_device

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

    from ..distributed.env import default_device, ensure_process_group

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
    """A :class:`LinkModel` measured between two ranks on this machine."""
    from ..launch import launch_local
    from ..optional import optional

    result = optional("the link between two local ranks", lambda: launch_local(probe_rank, 2), None,
                      "assuming the 'loopback' figures")
    if result is None:
        return LINKS["loopback"]
    return LinkModel(f"measured {result['backend']} between two local ranks", result["bytes_per_s"], result["latency_s"],
                overlaps_compute=result["device"] != "cpu")

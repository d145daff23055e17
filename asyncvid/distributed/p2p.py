"""Blocking point-to-point sends and receives whose waits the watchdog bounds.

``dist.send``/``dist.recv`` and the object-list helpers wait without a limit; these post the
non-blocking operation and wait through :func:`~asyncvid.distributed.watchdog.watched`, so a peer
that stops answering inside a pass is named instead of waited for forever.
"""

from __future__ import annotations

import pickle
import warnings

import torch
import torch.distributed as dist

from .watchdog import watched


def send(tensor: torch.Tensor, dst: int, what: str) -> None:
    watched(dist.isend(tensor, dst=dst), dst, f"it to take {what}")


def recv(tensor: torch.Tensor, src: int, what: str) -> torch.Tensor:
    watched(dist.irecv(tensor, src=src), src, what)
    return tensor


def _device(device) -> torch.device:
    return device if device is not None and torch.device(device).type == "cuda" else torch.device("cpu")


def send_object(obj, dst: int, device, what: str) -> int:
    """Send a picklable object (its length, then its bytes); returns the bytes sent."""
    payload = pickle.dumps(obj)
    where = _device(device)
    size = torch.tensor([len(payload)], dtype=torch.int64, device=where)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(where)
    works = [dist.isend(size, dst=dst), dist.isend(data, dst=dst)]
    for work in works:
        watched(work, dst, f"it to take {what}")
    return len(payload) + 8


def recv_object(src: int, device, what: str):
    where = _device(device)
    size = recv(torch.empty(1, dtype=torch.int64, device=where), src, what)
    data = recv(torch.empty(int(size.item()), dtype=torch.uint8, device=where), src, what)
    with warnings.catch_warnings():  # unpickling a pytree spec warns about torch's own deprecated API
        warnings.simplefilter("ignore", FutureWarning)
        return pickle.loads(data.cpu().numpy().tobytes())

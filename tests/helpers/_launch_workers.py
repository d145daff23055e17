"""Rank functions for the launcher's own tests (light: no diffusers import)."""

from __future__ import annotations

import os
import signal
import time


def end_together(killed_rank: int, pause: float = 0.3) -> None:
    """After a barrier, every rank ends at the same moment: ``killed_rank`` by SIGKILL, the others by
    raising, as a peer whose connection was reset does within milliseconds of the death."""
    import torch.distributed as dist

    dist.barrier()
    time.sleep(pause)
    if dist.get_rank() == killed_rank:
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("Connection reset by peer")


def environment(names: list[str]) -> dict:
    """What a rank sees: the named variables, the hub's offline flag as huggingface_hub read it at
    its import, whether the rank was forked from the preloading server, and its thread count."""
    import sys

    import huggingface_hub.constants
    import torch

    return dict(env={name: os.environ.get(name) for name in names}, hub_offline=huggingface_hub.constants.HF_HUB_OFFLINE,
                forked="asyncvid._preload" in sys.modules, threads=torch.get_num_threads())

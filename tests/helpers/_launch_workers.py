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

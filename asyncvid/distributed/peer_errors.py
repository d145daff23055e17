"""A rank's fatal error, told to the other ranks through the group's key-value store.

When a rank fails inside a call (its stage raised, or its watchdog fired) it writes one line under
``asyncvid/failed/<rank>`` in the store every launcher provides (torchrun's agent store, or the
TCPStore of rank 0 under srun and :func:`asyncvid.launch_local`). A rank whose receive then fails
with transport text ("Connection closed by peer ... GLHF!") looks there and reports ``rank R
failed: <its line>`` instead. Every store access runs on a helper thread with a short deadline:
the store's host may itself be the rank that stopped answering.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

KEY = "asyncvid/failed/{}"
SEEN = "asyncvid/seen/{}"
_published: list = []  # the store this rank published an error to (kept alive for lingering)


def own_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def _store():
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store, nothing to tell
        return None


def _bounded(fn, seconds: float):
    """``fn()`` on a daemon thread; its result, or None if it failed or took longer than ``seconds``."""
    box: list = []

    def run():
        try:
            box.append(fn())
        except Exception:  # noqa: BLE001 - the store is best effort here
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return box[0] if box else None


def publish(exc: BaseException) -> None:
    """Tell the other ranks why this rank stops (once). Errors that only repeat another rank's
    (a plain :class:`~asyncvid.errors.RankFailure`) are not published: the cause is elsewhere."""
    from ..errors import RankFailure, RankHung
    from ..utils import one_line

    from .env import lost_peer

    if _published or (isinstance(exc, RankFailure) and not isinstance(exc, RankHung)) or lost_peer(exc):
        return  # transport text ("Connection closed by peer") is not a cause either
    store = _store()
    if store is None:
        return
    value = f"{time.time():.6f}\n{one_line(exc)}"
    if _bounded(lambda: store.set(KEY.format(own_rank()), value) or True, 2.0):
        _published.append(store)
        atexit.register(linger)  # runs before the group's own clean-up (atexit is last in, first out)


def find(prefer: int | None = None, wait_s: float = 1.0) -> tuple[int, str] | None:
    """(rank, line) of another rank's published error: ``prefer``'s if it published one, else the
    earliest. Polls up to ``wait_s`` seconds (a peer may be writing it right now)."""
    store = _store()
    if store is None:
        return None
    import torch.distributed as dist

    me, world = own_rank(), dist.get_world_size()

    def look():
        found = {}
        for rank in range(world):
            key = KEY.format(rank)
            if rank != me and store.check([key]):
                stamp, _, line = store.get(key).decode().partition("\n")
                found[rank] = (float(stamp), line)
        return found

    deadline = time.monotonic() + wait_s
    while True:
        found = _bounded(look, 2.0) or {}
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if not found:
        return None
    rank = prefer if prefer in found else min(found, key=lambda r: found[r][0])
    _bounded(lambda: store.set(SEEN.format(me), "1"), 1.0)
    return rank, found[rank][1]


def linger(seconds: float = 3.0) -> None:
    """At exit, a rank that published an error tears the group down (so the peers' receives fail
    now and they look up why) and waits until they have read it, at most ``seconds``: the store may
    leave with this process (rank 0 outside torchrun), and a launcher stops the others as soon as
    this one exits."""
    import torch.distributed as dist

    if not _published:
        return
    store, me, world = _published[0], own_rank(), int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_initialized():
        world = dist.get_world_size()
        dist.destroy_process_group()
    others = [r for r in range(world) if r != me]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _bounded(lambda: all(store.check([SEEN.format(r)]) for r in others), 1.0):
            return
        time.sleep(0.1)


def install_excepthook() -> None:
    """In a launched rank (torchrun, srun), an uncaught :class:`~asyncvid.errors.RankFailure` (another
    rank's failure, or a peer that stopped answering) ends the process with one line, not with this
    rank's traceback: the cause is the other rank's, and N ranks would print N tracebacks."""
    import sys

    from ..errors import RankFailure

    import torch.distributed as dist

    previous = sys.excepthook
    if getattr(previous, "asyncvid", False) or not dist.is_initialized() or dist.get_world_size() < 2:
        return

    def hook(kind, value, tb):
        if isinstance(value, RankFailure):
            print(f"asyncvid: error: rank {own_rank()}: {value}", file=sys.stderr, flush=True)
            return
        previous(kind, value, tb)

    hook.asyncvid = True
    sys.excepthook = hook


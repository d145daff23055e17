"""``asyncvid render`` started once per rank by a launcher (``srun``, ``torchrun``).

The ranks form one group from the launcher's environment and each logs one line naming itself and
the group. Rank 0 alone decides what is left to do (it cleans partial files and checks manifests)
and broadcasts that list, so ranks that start a little apart on a shared file system cannot
disagree about which videos are finished. Then every rank runs the render loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import AsyncVidError, RankFailure
from ..utils import one_line
from .batch import RenderOptions, pending_work, profile_path, summarize
from .tasks import Task, resolve


def render_launched(tasks: list[Task], options: RenderOptions, out: Path) -> int:
    import torch.distributed as dist

    from ..distributed.env import describe_group, ensure_process_group, lost_peer
    from .loop import render_all

    try:
        ensure_process_group()
        line = describe_group()
    except AsyncVidError:
        raise
    except Exception as exc:  # an unreachable master, a rank that never came: one line per rank
        raise AsyncVidError(f"rank {os.environ.get('RANK', '?')} could not join the group at "
                            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: {one_line(exc)}") from None
    print(f"asyncvid: {line}", flush=True)
    rank = dist.get_rank()
    box = [None]
    if rank == 0:
        pending, failed, skipped = pending_work(tasks, options, exact=True)
        box = [([t.name for t in pending], failed, skipped)]
    dist.broadcast_object_list(box, src=0)
    names, failed, skipped = box[0]
    pending = [t for t in tasks if t.name in set(names)]
    if rank != 0:
        for task in pending:  # rank 0 already built any built-in model into the cache
            resolve(task)
    profile = profile_path(out, options) if rank == 0 else None
    try:
        results = render_all(pending, options.devices, options.quiet or rank != 0, None, profile) if pending else []
    except RankFailure as exc:  # another rank failed or stopped answering: say which rank speaks
        raise AsyncVidError(f"rank {rank}: the render group stopped: {exc}") from None
    except AsyncVidError:
        raise
    except Exception as exc:  # a rank died or the network broke: one line, not a traceback per rank
        why = lost_peer(exc)
        raise AsyncVidError(f"rank {rank}: the render group stopped: {why or one_line(exc)}") from None
    if rank != 0:
        return 0
    return summarize(results, failed, skipped, options, profile)

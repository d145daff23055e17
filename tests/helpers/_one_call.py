"""A script that makes one call and exits at once, on every rank (no launcher needed beyond the
torch.distributed environment variables): the toy engine.

``python _one_call.py`` is one rank. ``python _one_call.py --launches N`` imports torch once, then
forks N pairs of ranks, one pair after the other; each child sets the environment, makes its call and
leaves as the script does (``sys.exit``: interpreter shutdown, atexit, the group's teardown). A
launch then costs a fork, not two torch imports. Prints one JSON line: each launch's exit codes and
output.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import toy  # noqa: E402
from asyncvid.distributed.env import default_device, ensure_process_group  # noqa: E402
from asyncvid.distributed.topology import Topology  # noqa: E402
from asyncvid.engine.runtime import StageRuntime  # noqa: E402
from asyncvid.engine.schedule import AsyncOptions  # noqa: E402
from asyncvid.engine.split import SplitPlan, balanced_ranges  # noqa: E402


def main() -> None:
    ensure_process_group()
    topo = Topology.create(2)
    adapter = toy.ToyAdapter(toy.ToyModel())
    plan = SplitPlan([u.name for u in adapter.units()], balanced_ranges([1.0] * toy.UNITS, 2))
    runtime = StageRuntime(adapter, plan, topo, default_device(), AsyncOptions(warmup=1))
    if topo.is_driver:
        runtime.begin(toy.TIMESTEPS[:4])
        toy.toy_loop(lambda s, tag, call: runtime.drive(s, call, tag), 4, 1, False)
        runtime.end_call()  # and leave: what "parallelize, one call, exit" scripts do
    else:
        runtime.follow()
    print(f"rank {topo.rank} done", flush=True)


def _fork_rank(rank: int, port: int):
    """A child that runs :func:`main` as rank ``rank``, its stdout and stderr into a pipe; (pid, read end)."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    os.close(read)
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    main()
    sys.exit(0)  # unwinds to the interpreter's own exit, as the script's end does (no finally above)


def launches(count: int, timeout: float = 120.0) -> list[dict]:
    """``count`` launches of two forked ranks, one after the other: each rank's exit code (negative:
    the signal; -9 also for a rank that outlived ``timeout``) and output."""
    import gc
    import os
    import signal
    import time

    from asyncvid.utils import free_port

    gc.freeze()  # the children leave faster: finalization need not copy the pages it would touch for GC
    results = []
    for _ in range(count):
        sys.stdout.flush()
        sys.stderr.flush()  # a child must not inherit (and print again) what is buffered here
        port = free_port()
        children = [_fork_rank(rank, port) for rank in range(2)]
        codes: list[int | None] = [None, None]
        deadline = time.monotonic() + timeout
        while None in codes:
            for i, (pid, _) in enumerate(children):
                if codes[i] is None:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[i] = os.waitstatus_to_exitcode(status)
                    elif time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        outs = []
        for _, read in children:
            with os.fdopen(read, errors="replace") as f:
                outs.append(f.read())
        results.append({"codes": codes, "outs": outs})
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--launches":
        import json

        print(json.dumps(launches(int(sys.argv[2]))))
    else:
        main()

"""Start N local ranks without torchrun: ``launch_local(fn, nprocs, *args)``.

Each rank is a new process with the torch.distributed environment set, one thread on CPU, that calls
``fn(*args)``. If any rank fails, the others are stopped and the first failure comes back as one
:class:`~asyncvid.errors.RankFailure` line; rank 0's return value is returned otherwise. Ranks are
forked from a server with torch and diffusers imported, or spawned (:mod:`asyncvid._start`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ._start import Environment, start_context
from .errors import AsyncVidError, RankFailure
from .utils import atomic_write, free_port, one_line


def _rank_main(_env: None, rank: int, world: int, port: int, workdir: str, threads: int, fn, args,
               first_local: int = 0) -> None:
    """``_env``: None once unpickled (:class:`~asyncvid._start.Environment` applied itself then)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(first_local + rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    out = Path(workdir)
    faulthandler.enable()  # a native crash (abort, segfault) still prints where each thread was
    try:
        import torch

        torch.set_num_threads(threads)
        from .distributed.env import ensure_process_group

        ensure_process_group()
        result = fn(*args)
        atomic_write(out / f"result.{rank}", pickle.dumps(result))
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        (out / f"error.{rank}").write_text(f"{time.time():.6f}\n{one_line(exc)}\n{traceback.format_exc()}")
        os._exit(1)
    # Leave without running C++ static destructors: gloo's can abort a finished process at
    # teardown ("terminate called without an active exception"), about one run in ten here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _death(code: int) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with status {code} without reporting an error"


def launch_local(fn, nprocs: int, *args, threads_per_rank: int = 1, timeout: float | None = None,
                 first_local_rank: int = 0):
    """Run ``fn(*args)`` on ``nprocs`` local ranks; return rank 0's result. ``first_local_rank``
    shifts the ranks' ``LOCAL_RANK`` (and so their GPU): groups side by side on one node."""
    if nprocs < 1:
        raise AsyncVidError(f"nprocs must be >= 1, got {nprocs}")
    # Ranks leave with os._exit (see _rank_main), so semaphores torch created in them are freed by
    # multiprocessing's resource tracker, which then warns about each at exit. The tracker is its own
    # process started with this interpreter's -W options: tell it the clean-up is expected.
    quiet_tracker = "ignore::UserWarning:multiprocessing.resource_tracker"
    if quiet_tracker not in sys.warnoptions:
        sys.warnoptions.append(quiet_tracker)
    with start_context() as ctx:
        return _run(ctx, fn, nprocs, args, threads_per_rank, timeout, first_local_rank)


def _run(ctx, fn, nprocs: int, args, threads_per_rank: int, timeout: float | None, first_local_rank: int):
    port = free_port()
    env = Environment()  # unpickled first in each rank: the environment is in place before fn's imports
    with tempfile.TemporaryDirectory(prefix="asyncvid-launch-") as workdir:
        procs = [ctx.Process(target=_rank_main, daemon=False,
                             args=(env, r, nprocs, port, workdir, threads_per_rank, fn, args, first_local_rank))
                 for r in range(nprocs)]
        for p in procs:
            p.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        failed = None
        died: dict[int, int] = {}  # rank -> exit code of ranks that ended on their own, before any cleanup
        try:
            while any(p.is_alive() for p in procs):
                if any(p.exitcode not in (None, 0) for p in procs):
                    failed = True
                    time.sleep(0.5)  # let the first failure's peers report too, then pick the earliest
                    died = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode not in (None, 0)}
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise RankFailure(f"ranks did not finish within {timeout:.0f} s")
                time.sleep(0.05)
            else:  # every rank ended between two polls (a killed rank's peer can fail within ms of it)
                died = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode not in (None, 0)}
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    with contextlib.suppress(OSError):
                        os.kill(p.pid, signal.SIGCONT)  # a stopped rank (the watchdog named it) takes it now
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
        errors = []
        for r in range(nprocs):
            path = Path(workdir) / f"error.{r}"
            if path.exists():
                stamp, line = path.read_text().splitlines()[:2]
                errors.append((float(stamp), r, line))
        silent = {r: code for r, code in died.items() if not (Path(workdir) / f"error.{r}").exists()}
        if silent:  # killed (a signal, the OOM killer) or exited without a word: the cause; peers' errors follow from it
            rank, code = min(silent.items())
            raise RankFailure(f"rank {rank} {_death(code)} on {socket.gethostname()}; the other ranks stopped with it")
        if errors:
            _, rank, line = min(errors)
            raise RankFailure(f"rank {rank} failed: {line}")
        if failed or any(p.exitcode != 0 for p in procs):
            codes = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode != 0}
            raise RankFailure(f"rank(s) exited abnormally: {codes}")
        result = Path(workdir) / "result.0"
        return pickle.loads(result.read_bytes()) if result.exists() else None

"""How :func:`asyncvid.launch_local` starts ranks: forked from a forkserver that imported torch and
diffusers once (:mod:`asyncvid._preload`), or, with ``ASYNCVID_START_METHOD=spawn`` or where the
platform has no forkserver, each from a fresh interpreter (seconds of imports per rank).

A forked rank inherits the server's environment, as it was when the server started, so each rank
is handed the launcher's environment of now (:class:`Environment`). The libraries the server
imported read some variables at import only (``HF_*``, ``TORCH*``, ...): when those changed since the
server started, it is started again; if another launch still runs ranks from it, this launch spawns.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import threading

from .errors import AsyncVidError

START_METHOD_ENV = "ASYNCVID_START_METHOD"
# Variables torch, diffusers, transformers or huggingface_hub read when imported. OMP_NUM_THREADS
# is not one of them here: every rank sets its own thread count (launch.py).
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "TOKENIZERS_", "TORCH", "PYTORCH_",
                        "CUDA_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOMP_", "XDG_CACHE_HOME")

_lock = threading.Lock()
# the import-time environment the server started with; launches using it; whether stopping it hung
_server: dict = {"env": None, "launches": 0, "stuck": False}


def _import_time_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(IMPORT_TIME_PREFIXES) and k != "OMP_NUM_THREADS"}


def _asked() -> str:
    asked = os.environ.get(START_METHOD_ENV, "").strip().lower() or "forkserver"
    if asked not in ("forkserver", "spawn"):
        raise AsyncVidError(f"{START_METHOD_ENV} must be forkserver or spawn, got {asked!r}")
    return asked if asked in mp.get_all_start_methods() else "spawn"


@contextlib.contextmanager
def start_context():
    """The multiprocessing context to start one launch's ranks with, held until they have ended."""
    ctx = _claim_forkserver() if _asked() == "forkserver" else None
    if ctx is None:
        yield mp.get_context("spawn")
        return
    try:
        yield ctx
    finally:
        with _lock:
            _server["launches"] -= 1


def _claim_forkserver():
    """The forkserver context, counted as in use, its server started (again, if this environment's
    import-time part differs from the one it started with); None if that server still has ranks."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # the process's one server, as the module's own functions use it
    with _lock:
        env = _import_time_env()
        if _server["stuck"]:
            return None
        if _server["env"] not in (None, env) and (_server["launches"] or not _stopped(server)):
            return None
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["asyncvid._preload"])  # read when the server starts
        forkserver.ensure_running()
        _server.update(env=env, launches=_server["launches"] + 1)
        return ctx


def _stopped(server) -> bool:
    """Stop the server (multiprocessing's private ``_stop``), so that ``ensure_running`` starts a new
    one. It waits for the server to leave, which it does once nothing holds its 'alive' pipe: every
    rank does, and ours have ended, but a process a rank forked and left running would too; after
    10 s this gives up (and every later launch spawns: the server's lock stays held)."""
    if not hasattr(server, "_stop"):
        return False
    stopping = threading.Thread(target=server._stop, name="asyncvid-forkserver-stop", daemon=True)
    stopping.start()
    stopping.join(10)
    _server["stuck"] = stopping.is_alive()
    return not _server["stuck"]


class Environment:
    """The launcher's environment and its stdout and stderr, applied in a rank as it is unpickled: a
    rank's arguments are unpickled in order, this one first, so all is in place before the modules of
    the function and its arguments are imported (as under spawn, where a rank inherits them). A
    forked rank's own stdout and stderr are the server's, as they were when it started."""

    def __init__(self) -> None:
        self.env = dict(os.environ)

    def __reduce__(self):  # runs while multiprocessing pickles a rank: DupFd hands it the descriptor
        from multiprocessing.reduction import DupFd

        return apply_environment, (self.env, [(fd, DupFd(fd)) for fd in (1, 2) if _is_open(fd)])


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def apply_environment(env: dict[str, str], stdio: list) -> None:
    """Take the launcher's ``env`` (keeping what the preloaded libraries added) and its stdio."""
    added = getattr(sys.modules.get("asyncvid._preload"), "ADDED", {})
    os.environ.clear()
    os.environ.update(env)
    for key, value in added.items():
        os.environ.setdefault(key, value)
    for target, dup in stdio:
        fd = dup.detach()
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)

"""Small helpers every layer uses: one-line errors, the cache folder, atomic writes, a free port."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import uuid
from pathlib import Path
from typing import Iterator

from .errors import AsyncVidError


def one_line(exc: BaseException) -> str:
    """First line of an error; the exception type too unless it is one of ours."""
    lines = str(exc).strip().splitlines()
    msg = lines[0] if lines else ""
    return msg if isinstance(exc, AsyncVidError) else f"{type(exc).__name__}: {msg}"


def cache_dir() -> Path:
    """asyncvid's cache root: ``$ASYNCVID_CACHE`` when set and non-empty, else ``~/.cache/asyncvid``."""
    return Path(os.environ.get("ASYNCVID_CACHE") or Path.home() / ".cache" / "asyncvid").expanduser()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` (same file
    system, so readers see the old file or the new one, never half of one); on failure it is removed.

    The temporary name is hidden and ends in ``.partial`` (what a killed process leaves behind is
    found by :func:`partial_leftovers`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name, created by the caller with the usual permissions (mkstemp would make it 0600)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write bytes, or text as UTF-8, to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def partial_leftovers(path: str | os.PathLike) -> list[Path]:
    """Temporary files of :func:`atomic_path` for ``path`` that a killed process left behind
    (``.NAME.*partial``, which also matches the older fixed name ``.NAME.partial``)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*partial"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a local process group's rendezvous)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_json(path, what: str = ""):
    """A JSON file's content; a missing or malformed file is one clear error naming it."""
    import json

    name = f"{what} {path}".strip()
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AsyncVidError(f"{name}: not found") from None
    except ValueError as exc:
        raise AsyncVidError(f"{name}: not JSON ({exc})") from None

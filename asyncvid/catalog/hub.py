"""Hugging Face hub ids as model references, resolved from the local Hugging Face cache.

A job's ``model: org/name`` that is not a folder next to the job file is looked up in the user's
Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``, as ``hf download`` fills it). Nothing is
downloaded unless the user set ``HF_HUB_OFFLINE=0`` themselves; asyncvid only defaults it to 1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(ref: str) -> bool:
    return bool(HUB_ID.match(ref)) and ".." not in ref


def downloads_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() in ("0", "false", "no", "off")


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (its ``main`` revision), downloading it only when
    the user allowed downloads; None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=hub_cache_dir(), local_files_only=not downloads_allowed()))
    except Exception:  # noqa: BLE001 - not cached, no network, no such repo: all mean "not available"
        return None


def hub_cache_dir() -> str:
    """The hub cache as the environment says now (huggingface_hub reads it only once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def model_location(model: str, base_dir: Path) -> str:
    """Where a job's ``model`` is: the folder relative to the job file if it exists, else a hub id's
    cached snapshot if there is one, else the folder path, or the hub id itself when it looks like
    one (``missing_model`` then says how to get it)."""
    folder = (base_dir / Path(model).expanduser()).resolve()
    if folder.exists() or not looks_like_hub_id(model):
        return str(folder)
    snapshot = cached_snapshot(model)
    return str(snapshot) if snapshot is not None else model


def not_cached_line(model: str) -> str:
    return (f"model not found: {model!r} is neither a folder (next to the job file, or here) nor a hub id in the "
            f"Hugging Face cache ({hub_cache_dir()}): get it with `hf download {model}`, or set HF_HUB_OFFLINE=0 "
            "to let asyncvid download it")

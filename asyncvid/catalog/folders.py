"""Model folders: what kind of job a built-in name or a local diffusers folder renders, why a folder
cannot be used, and resolving a job's model to the folder to load.

Kinds: ``t2v`` (text-to-video, AnimateDiff) and ``i2v`` (image-to-video, Stable Video Diffusion).
A folder's kind comes from the ``_class_name`` in its ``model_index.json``. Importing this module is
cheap (no torch/diffusers): the job file loader uses it to decide each job's kind.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AsyncVidError
from .builtin import BUILTINS, ensure_builtin

#: diffusers pipeline class -> kind. A StableDiffusionPipeline is an AnimateDiff base model: it
#: needs a ``motion_adapter`` folder next to it.
CLASS_KINDS = {"AnimateDiffPipeline": "t2v", "StableDiffusionPipeline": "t2v", "StableVideoDiffusionPipeline": "i2v"}
KIND_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video"}


def pipeline_class_name(folder) -> str | None:
    """``_class_name`` of a diffusers folder's ``model_index.json``; None if there is no readable one."""
    try:
        data = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def model_kind(model: str) -> tuple[str | None, str]:
    """(kind, description) of a built-in name or a model folder; kind is None when the folder is
    missing or unreadable (the job's fields decide then, and rendering reports the folder).

    Raises :class:`AsyncVidError` for a folder holding a pipeline asyncvid cannot render."""
    if model in BUILTINS:
        return BUILTINS[model], f"the model {model} is {KIND_NAMES[BUILTINS[model]]}"
    name = pipeline_class_name(model)
    if name is None:
        return None, ""
    if name not in CLASS_KINDS:
        raise AsyncVidError(f"{model} holds a {name}; asyncvid renders AnimateDiffPipeline (text-to-video) "
                            f"and StableVideoDiffusionPipeline (image-to-video) folders")
    return CLASS_KINDS[name], f"the model is a {name} ({KIND_NAMES[CLASS_KINDS[name]]})"


def missing_model(model: str) -> str | None:
    """Why a model folder cannot be used (one line), or None; built-in names are always fine."""
    if model in BUILTINS or (Path(model) / "model_index.json").is_file():
        return None
    what = "has no model_index.json" if Path(model).is_dir() else "not found"
    return f"model folder {what}: {model} (expected a local diffusers pipeline folder; download it first)"


def missing_adapter(folder: str) -> str | None:
    """Why a motion adapter folder cannot be used (one line), or None."""
    if (Path(folder) / "config.json").is_file():
        return None
    what = "has no config.json" if Path(folder).is_dir() else "not found"
    return f"motion adapter folder {what}: {folder} (expected a local diffusers MotionAdapter folder)"


def resolve_model(model: str) -> str:
    """The diffusers folder for a job's model (built-ins are built on first use); one-line error if missing."""
    if model in BUILTINS:
        return str(ensure_builtin(model))
    problem = missing_model(model)
    if problem:
        raise AsyncVidError(problem)
    return model


def resolve_adapter(folder: str | None) -> str | None:
    problem = folder and missing_adapter(folder)
    if problem:
        raise AsyncVidError(problem)
    return folder

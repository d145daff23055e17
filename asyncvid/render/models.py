"""Render models: the built-in random models, local diffusers folders, what kind of job each one
renders, and loading them.

Kinds: ``t2v`` (text-to-video, AnimateDiff) and ``i2v`` (image-to-video, Stable Video Diffusion).
A folder's kind comes from the ``_class_name`` in its ``model_index.json``. Importing this module is
cheap (no torch/diffusers): the job file loader uses it to decide each job's kind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import AsyncVidError

TINY_RANDOM = "tiny-random"
TINY_RANDOM_SVD = "tiny-random-svd"
SHAPES_T2V = "shapes-t2v"
#: models shipped inside the package (trained here; see scripts/train_shapes_t2v.py)
PACKAGED = {SHAPES_T2V: Path(__file__).resolve().parents[1] / "assets" / SHAPES_T2V}
#: built-in model name -> kind. Random-weight ones are built into the cache on first use.
BUILTINS = {TINY_RANDOM: "t2v", TINY_RANDOM_SVD: "i2v", SHAPES_T2V: "t2v"}
#: diffusers pipeline class -> kind. A StableDiffusionPipeline is an AnimateDiff base model: it
#: needs a ``motion_adapter`` folder next to it.
CLASS_KINDS = {"AnimateDiffPipeline": "t2v", "StableDiffusionPipeline": "t2v", "StableVideoDiffusionPipeline": "i2v"}
KIND_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video"}


def _quiet_environment() -> None:
    """Set before diffusers/transformers are first imported (they read it at import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers are imported: never download
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")  # their load-time chatter would bury the one-line job reports
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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


# ---------------------------------------------------------------------------------- the cache
def cache_dir() -> Path:
    return Path(os.environ.get("ASYNCVID_CACHE") or Path.home() / ".cache" / "asyncvid").expanduser()


def ensure_builtin(name: str) -> Path:
    """The folder of a built-in model: packaged ones ship with asyncvid; random-weight ones are
    built once into the cache (temp folder, then rename)."""
    if name in PACKAGED:
        if not (PACKAGED[name] / "model_index.json").is_file():
            raise AsyncVidError(f"the packaged model {name} is missing from this installation ({PACKAGED[name]})")
        return PACKAGED[name]
    folder = cache_dir() / "models" / name
    if (folder / "model_index.json").is_file():
        return folder
    _quiet_environment()
    from ..models.tiny import save_animatediff_pipeline, save_svd_pipeline

    quiet_libraries()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save = save_svd_pipeline if BUILTINS[name] == "i2v" else save_animatediff_pipeline
    save(tmp, "tiny", seed=0)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process finished first (or a broken leftover is in the way)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model_index.json").is_file():
            raise AsyncVidError(f"cannot create the model cache at {folder}: remove it and retry") from None
    return folder


def ensure_tiny_random() -> Path:
    return ensure_builtin(TINY_RANDOM)


def missing_model(model: str) -> str | None:
    """Why a model folder cannot be used (one line), or None; built-in names are always fine."""
    if model in BUILTINS or (Path(model) / "model_index.json").is_file():
        return None
    what = "has no model_index.json" if Path(model).is_dir() else "not found"
    return f"model folder {what}: {model} (expected a local diffusers pipeline folder; download it first)"


def missing_adapter(folder: str) -> str | None:
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


# ---------------------------------------------------------------------------------- loading
def quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def load_pipeline(model_dir: str, adapter_dir: str | None = None):
    """A plain diffusers pipeline on the CPU: Stable Video Diffusion or AnimateDiff (a
    StableDiffusionPipeline base folder needs ``adapter_dir``; for an AnimateDiff folder it replaces
    the folder's own motion adapter)."""
    _quiet_environment()
    quiet_libraries()
    name = pipeline_class_name(model_dir)
    if name == "StableVideoDiffusionPipeline":
        from ..models.tiny import svd_pipeline_class

        pipe = svd_pipeline_class().from_pretrained(model_dir)
    else:
        from diffusers import AnimateDiffPipeline, MotionAdapter

        extra = {}
        if adapter_dir:
            extra["motion_adapter"] = MotionAdapter.from_pretrained(adapter_dir)
        elif name == "StableDiffusionPipeline":
            raise AsyncVidError(f"{model_dir} is a StableDiffusionPipeline: set `motion_adapter:` to an "
                                f"AnimateDiff motion adapter folder")
        # float32 compute whatever the stored dtype (the packaged model is stored in fp16)
        import torch

        import warnings

        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype; older ones lack the new name
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = AnimateDiffPipeline.from_pretrained(model_dir, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


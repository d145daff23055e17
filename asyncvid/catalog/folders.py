"""Model folders: what kind of job a built-in name or a local diffusers folder renders, why a folder
cannot be used, and resolving a job's model to the folder to load.

Kinds: ``t2v`` (text-to-video, AnimateDiff, SD 1.5 or SDXL) and ``i2v`` (image-to-video, Stable
Video Diffusion). A folder's kind comes from the ``_class_name`` in its ``model_index.json``; a
ControlNet folder's class from its ``config.json``. Importing this module is cheap (no
torch/diffusers): the job file loader uses it to decide each job's kind and check its folders.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from ..errors import AsyncVidError
from .builtin import BUILTINS, PACKAGED, ensure_builtin
from .hub import cached_snapshot, looks_like_hub_id, not_cached_line

#: diffusers pipeline class -> kind. A StableDiffusion(XL)Pipeline is an AnimateDiff base model: it
#: needs a ``motion_adapter`` folder next to it.
CLASS_KINDS = {"AnimateDiffPipeline": "t2v", "StableDiffusionPipeline": "t2v", "AnimateDiffSDXLPipeline": "t2v",
               "StableDiffusionXLPipeline": "t2v", "StableVideoDiffusionPipeline": "i2v", "WanPipeline": "t2v"}
#: image-model folders that render video only with a motion adapter
BASE_MODELS = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
#: folders rendered by AnimateDiffSDXLPipeline (diffusers has no ControlNet or video-to-video variant of it)
SDXL_MODELS = ("AnimateDiffSDXLPipeline", "StableDiffusionXLPipeline")
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
        raise AsyncVidError(f"{model} holds a {name}; asyncvid renders AnimateDiffPipeline, AnimateDiffSDXLPipeline "
                            f"and WanPipeline (text-to-video) and StableVideoDiffusionPipeline (image-to-video) folders")
    return CLASS_KINDS[name], f"the model is a {name} ({KIND_NAMES[CLASS_KINDS[name]]})"


def missing_model(model: str) -> str | None:
    """Why a model folder cannot be used (one line), or None; built-in names are always fine."""
    if model in BUILTINS or (Path(model) / "model_index.json").is_file():
        return None
    if Path(model).is_dir():
        return f"model folder has no model_index.json: {model} (expected a diffusers pipeline folder)"
    if looks_like_hub_id(model):  # a hub id that was neither a folder nor in the cache
        return not_cached_line(model)
    return (f"model folder not found: {model} (expected a diffusers pipeline folder, a built-in name such as "
            f"shapes-t2v, or a hub id in your Hugging Face cache)")


def missing_adapter(folder: str) -> str | None:
    """Why a motion adapter folder cannot be used (one line), or None."""
    if (Path(folder) / "config.json").is_file():
        return None
    what = "has no config.json" if Path(folder).is_dir() else "not found"
    return f"motion adapter folder {what}: {folder} (expected a local diffusers MotionAdapter folder)"


def _config_class(folder: Path) -> str | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))


def controlnet_problem(folder: str) -> str | None:
    """Why a folder is not a ``ControlNetModel`` saved with ``save_pretrained`` (one line), or None."""
    path = Path(folder)
    if not path.exists():
        return f"ControlNet folder not found: {folder}"
    if not path.is_dir():
        return f"not a folder: {folder} (expected a diffusers ControlNetModel folder)"
    if not (path / "config.json").is_file():
        return f"not a ControlNet folder (no config.json): {folder}"
    name = _config_class(path)
    if name == "SparseControlNetModel":
        return (f"{folder} is a SparseControlNetModel: SparseCtrl is available from Python only "
                f"(AnimateDiffSparseControlNetPipeline), not in job files")
    if name != "ControlNetModel":
        return f"not a ControlNet folder: {folder} holds a {name or 'config without _class_name'}, not a ControlNetModel"
    if not _weight_files(path):
        return f"ControlNet folder has no weights (.safetensors or .bin): {folder}"
    return None


def controlnet_fingerprint(folder: str) -> str:
    """sha256 over the folder's config.json content and its weights files' names, sizes and
    modification times: cheap (weights are not read) and changes whenever a file is replaced."""
    path = Path(folder)
    digest = hashlib.sha256()
    try:
        digest.update((path / "config.json").read_bytes())
        for weights in _weight_files(path):
            stat = weights.stat()
            digest.update(f"\0{weights.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    except OSError as exc:  # gone since the job file was checked: rendering reports it
        digest.update(f"\0unreadable: {exc.strerror}".encode())
    return digest.hexdigest()


def model_fingerprint(model: str) -> str | None:
    """What identifies a model's weights in a video's manifest hash, so new weights in the same
    folder make its videos stale: for a folder, sha256 over every config and index file's content
    and every weights file's relative name, size and modification time (weights are not read); for
    a packaged built-in, over its files' contents (mtimes change with every checkout); None for the
    generated built-ins (rebuilt identically from their seed)."""
    if model in BUILTINS:
        return _content_digest(PACKAGED[model]) if model in PACKAGED else None
    root = Path(model)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(root).as_posix()
        try:
            if path.suffix == ".json":
                digest.update(f"\0{rel}\0".encode() + path.read_bytes())
            elif path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
                stat = path.stat()
                digest.update(f"\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        except OSError as exc:
            digest.update(f"\0{rel}: unreadable: {exc.strerror}".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _content_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"\0{path.relative_to(root).as_posix()}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def native_size(model: str) -> tuple[int, int] | None:
    """(height, width) in pixels a model renders when not told, as its diffusers pipeline computes
    it: the denoiser's ``sample_size`` times the VAE's downscaling (2 per level after the first);
    None when the folder's configs cannot be read (rendering then reports the folder). A Wan folder's
    configs name no size: its ``model_index.json`` may (``"_asyncvid_size": [height, width]``, a private
    key diffusers skips, written by asyncvid's trainer); else WanPipeline's own default, 480x832."""
    try:
        root = Path(resolve_model(model))
        if pipeline_class_name(root) == "WanPipeline":
            index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
            h, w = index.get("_asyncvid_size", (480, 832))
            return int(h), int(w)
        unet = json.loads((root / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((root / "vae" / "config.json").read_text(encoding="utf-8"))
        sample = unet["sample_size"]
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        h, w = (sample[0], sample[-1]) if isinstance(sample, list) else (sample, sample)
        return int(h) * scale, int(w) * scale
    except (AsyncVidError, OSError, ValueError, KeyError, TypeError):
        return None


def resolve_model(model: str) -> str:
    """The diffusers folder for a model: a built-in name (built on first use), a folder, or a hub id
    in the local Hugging Face cache; one-line error if missing."""
    if model in BUILTINS:
        return str(ensure_builtin(model))
    if not Path(model).exists() and looks_like_hub_id(model):
        snapshot = cached_snapshot(model)
        if snapshot is not None:
            return str(snapshot)
    problem = missing_model(model)
    if problem:
        raise AsyncVidError(problem)
    return model


def resolve_adapter(folder: str | None) -> str | None:
    problem = folder and missing_adapter(folder)
    if problem:
        raise AsyncVidError(problem)
    return folder


def resolve_controlnet(folder: str | None) -> str | None:
    problem = folder and controlnet_problem(folder)
    if problem:
        raise AsyncVidError(problem)
    return folder

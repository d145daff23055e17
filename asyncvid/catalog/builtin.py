"""Built-in models, usable by name anywhere a model folder is: the packaged ``shapes-t2v``,
``shapes-i2v`` (image-to-video) and ``shapes-wan`` (trained here, shipped in ``asyncvid/assets``)
and the random-weight ``tiny-random`` / ``tiny-random-svd`` / ``tiny-random-wan`` (a Wan
text-to-video pipeline), built once into the cache on first use."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import AsyncVidError
from ..utils import cache_dir

TINY_RANDOM = "tiny-random"
TINY_RANDOM_SVD = "tiny-random-svd"
TINY_RANDOM_WAN = "tiny-random-wan"
SHAPES_T2V = "shapes-t2v"
SHAPES_WAN = "shapes-wan"
SHAPES_I2V = "shapes-i2v"
_ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: models shipped inside the package (trained here; see scripts/train_shapes_{t2v,i2v,wan}.py)
PACKAGED = {name: _ASSETS / name for name in (SHAPES_T2V, SHAPES_I2V, SHAPES_WAN)}
#: built-in model name -> kind. Random-weight ones are built into the cache on first use.
BUILTINS = {TINY_RANDOM: "t2v", TINY_RANDOM_SVD: "i2v", SHAPES_T2V: "t2v", TINY_RANDOM_WAN: "t2v", SHAPES_WAN: "t2v",
            SHAPES_I2V: "i2v"}
#: what every command uses when not told: jobs, bench, plan and eval render the same model the same way
DEFAULT_MODEL = SHAPES_T2V
DEFAULT_STEPS = 25


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
    from .quiet import quiet_environment, quiet_libraries

    quiet_environment()
    from .presets import save_animatediff_pipeline, save_svd_pipeline

    quiet_libraries()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if name == TINY_RANDOM_WAN:
        from .wan import build_wan_pipeline

        build_wan_pipeline("t2v", seed=0).save_pretrained(tmp, safe_serialization=True)
    else:
        save = save_svd_pipeline if BUILTINS[name] == "i2v" else save_animatediff_pipeline
        save(tmp, "tiny", seed=0)
    try:
        os.rename(tmp, folder)  # a whole folder: renamed at once, not through utils.atomic_path
    except OSError:  # another process finished first (or a broken leftover is in the way)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model_index.json").is_file():
            raise AsyncVidError(f"cannot create the model cache at {folder}: remove it and retry") from None
    return folder

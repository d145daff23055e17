"""Keep diffusers and transformers offline and quiet: their download attempts and load-time chatter
would bury asyncvid's one-line reports."""

from __future__ import annotations

import os


def quiet_environment() -> None:
    """Set before diffusers/transformers are first imported (they read it at import)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no download unless the user set HF_HUB_OFFLINE=0
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")  # their load-time chatter would bury the one-line job reports
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def quiet_libraries() -> None:
    """Errors only, and no progress bars, from diffusers' and transformers' loggers."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def svd_pipeline_class():
    """diffusers' SVD module imports ``transformers.CLIPImageProcessor``, which without torchvision
    falls back to the PIL backend with a warning; the fallback is what we want, the warning is noise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        from diffusers import StableVideoDiffusionPipeline
    finally:
        hf_logging.set_verbosity(level)
    return StableVideoDiffusionPipeline

"""Imported once by the forkserver that :func:`asyncvid.launch_local` forks its ranks from, so that
each rank starts with torch and diffusers imported (seconds per rank in a fresh interpreter; a fork
takes milliseconds).

Imports only: no tensor op runs (no torch thread pool exists before the fork) and CUDA is not
initialised. The imports see asyncvid's rank defaults (:func:`~asyncvid.catalog.quiet.quiet_environment`:
offline, libraries' chatter at errors), as a rank's own imports do after ``asyncvid.render.loop``.
``ADDED``: what the libraries themselves put into the environment (torch: ``TORCHINDUCTOR_CACHE_DIR``);
a rank takes the launcher's environment and keeps these (:func:`asyncvid._start.apply_environment`).
"""

from __future__ import annotations

import os

from .catalog.quiet import quiet_environment

_before = dict(os.environ)
quiet_environment()
_ours = {key for key, value in os.environ.items() if _before.get(key) != value}

try:
    import diffusers
    import torch.distributed  # noqa: F401
    import transformers

    # Both import lazily: naming a class imports its modules, most of a pipeline's (~1 s a rank).
    _classes = (diffusers.AnimateDiffPipeline, transformers.CLIPTextModel)
except Exception:  # noqa: BLE001 - the server must start anyway: a rank then imports, and reports, itself
    pass

ADDED = {key: value for key, value in os.environ.items() if _before.get(key) != value and key not in _ours}

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

import torch  # noqa: E402,F401
import torch.distributed  # noqa: E402,F401

try:
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover - asyncvid needs them; a rank reports it, not the server
    pass

ADDED = {key: value for key, value in os.environ.items() if _before.get(key) != value and key not in _ours}

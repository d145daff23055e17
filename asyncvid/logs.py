"""asyncvid's own messages about progress (``logging``, logger ``asyncvid``, on stderr).

Results and summaries stay on stdout; errors stay one ``asyncvid: error:`` line. What a long
command says while it works (configurations measured, replicas started) goes through this logger:
``-q`` keeps warnings only, ``-v`` adds debug detail and the libraries' own warnings. Ranks other
than 0 only warn unless ``-v``: a group of N ranks does not print everything N times.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER = logging.getLogger("asyncvid")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (redirected by a progress bar, captured in tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """``verbosity``: -1 quiet, 0 normal, 1 verbose."""
    rank = int(os.environ.get("RANK", "0") or 0)
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    if rank != 0 and verbosity < 1:
        level = logging.WARNING
    LOGGER.setLevel(level)
    if not LOGGER.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.propagate = False
    if verbosity > 0:  # the libraries' own warnings (quiet_environment keeps them at errors otherwise)
        for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ[var] = "warning"


def info(message: str) -> None:
    LOGGER.info(message)

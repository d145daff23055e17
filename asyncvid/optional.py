"""Optional measurements (the driver's per-step timing, unit profiles, link probes) never fail a call.

They only tune a plan; the work itself does not depend on them. :func:`optional` runs one and, on
any error, logs one line and returns a safe estimate instead.
"""

from __future__ import annotations


def optional(what: str, measure, fallback, instead: str):
    """``measure()``; on an error, one warning ("could not measure WHAT (...); INSTEAD") and ``fallback``
    (a value, or a function called for it)."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - any failure of a measurement has the same answer
        from .logs import LOGGER
        from .utils import one_line

        LOGGER.warning(f"asyncvid: could not measure {what} ({one_line(exc)}); {instead}")
        return fallback() if callable(fallback) else fallback

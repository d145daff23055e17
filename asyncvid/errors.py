"""Errors that reach users as one line (the CLI and launcher print ``str(err)``, no traceback)."""


class AsyncVidError(Exception):
    """A problem the user can fix: bad options, a bad split, a wrong world size, a missing file."""


class PlanError(AsyncVidError):
    """A split that cannot be built for this model."""


class RankFailure(AsyncVidError):
    """Another rank of the process group failed; carries its one-line message."""


class RankHung(RankFailure):
    """A peer did not answer within the watchdog's limit (``distributed/watchdog.py``)."""

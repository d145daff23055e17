"""The progress bar of long commands: shown on a terminal, silent elsewhere."""

from __future__ import annotations

import sys

from asyncvid.progress import progress


def test_silent_when_not_a_terminal(capsys):
    with progress(3, "configurations") as advance:
        advance("2x1")
    assert capsys.readouterr().err == ""


def test_counts_units_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress(2, "configurations") as advance:
        advance("2x1")
        advance()
    err = capsys.readouterr().err
    assert "configurations" in err and "2/2" in err

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


def test_render_bars_only_on_a_terminal(monkeypatch):
    from asyncvid.render.loop import Reporter

    assert Reporter(2, quiet=False, results_path=None).progress is None  # captured stdout: a log, not a terminal
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    reporter = Reporter(2, quiet=False, results_path=None)
    try:
        assert reporter.progress is not None
    finally:
        reporter.progress.stop()
    assert Reporter(2, quiet=True, results_path=None).progress is None

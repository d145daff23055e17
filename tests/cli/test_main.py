"""The top-level command line: version, defaults shown in every help."""

from __future__ import annotations

import pytest

import asyncvid
from asyncvid.cli.main import main


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"asyncvid {version('asyncvid')}" == f"asyncvid {asyncvid.__version__}"


@pytest.mark.parametrize("command, expected", [
    (["bench"], ["--frames FRAMES frames per video (default: 8)", "(default: small)", "(default: shapes-t2v)"]),
    (["plan"], ["(default latency)", "--steps STEPS denoising steps per video (default: 25)",
                "--devices D devices to plan for (required)"]),
    (["eval"], ["--seeds SEEDS seeds per prompt (default 2", "guidance scale (default: 5.0)",
                "--size PIXELS frame height = width in pixels (default: the model's own size"]),
])
def test_every_help_shows_the_defaults(command, expected, capsys):
    assert main(command + ["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for piece in expected:
        assert " ".join(piece.split()) in text, piece
    assert "(default: None)" not in text and "(default: False)" not in text


def test_quiet_and_verbose_set_asyncvid_s_logger(capsys, monkeypatch):
    import logging

    from asyncvid import logs

    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):  # -v changes them: restored afterwards
        monkeypatch.setenv(var, "error")
    assert main(["-q", "schema"]) == 0 and logs.LOGGER.level == logging.WARNING
    assert main(["-v", "schema"]) == 0 and logs.LOGGER.level == logging.DEBUG
    assert main(["schema"]) == 0 and logs.LOGGER.level == logging.INFO
    logs.info("measured 2x1")
    assert capsys.readouterr().err.strip().endswith("measured 2x1")
    assert main(["-q", "-v", "schema"]) == 2  # one or the other


def test_other_ranks_only_warn_unless_verbose(monkeypatch):
    import logging

    from asyncvid import logs

    monkeypatch.setenv("RANK", "1")
    logs.configure(0)
    assert logs.LOGGER.level == logging.WARNING
    logs.configure(1)
    assert logs.LOGGER.level == logging.DEBUG
    logs.configure(0)  # leave rank 0's default for other tests
    monkeypatch.setenv("RANK", "0")
    logs.configure(0)

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
    (["bench"], ["--frames FRAMES  (default: 8)", "(default: small)"]),
    (["plan"], ["(default latency)", "--steps STEPS (default: 25)"]),
    (["eval"], ["--seeds SEEDS seeds per prompt (default 2", "--guidance GUIDANCE (default: 5.0)"]),
])
def test_every_help_shows_the_defaults(command, expected, capsys):
    assert main(command + ["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for piece in expected:
        assert " ".join(piece.split()) in text, piece
    assert "(default: None)" not in text and "(default: False)" not in text

"""Writing job files in tests and catching their one-line errors."""

from __future__ import annotations

import textwrap

import pytest

from asyncvid.render.jobfile import JobFileError, load_job_file


def write(folder, text, name="jobs.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(folder, text) -> str:
    """The one line loading ``text`` fails with (it names the file; no traceback)."""
    with pytest.raises(JobFileError) as info:
        load_job_file(write(folder, text))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "jobs.yaml" in message
    return message

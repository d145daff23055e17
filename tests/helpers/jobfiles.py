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


def hub_cache_with(tmp_path, repo_id: str, source):
    """A Hugging Face cache holding ``source``'s files as ``repo_id``'s main revision, in the layout
    ``hf download`` writes (models--org--name/refs/main -> snapshots/<commit>/...)."""
    import shutil
    from pathlib import Path

    cache = Path(tmp_path) / "hf-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache

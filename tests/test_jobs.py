"""asyncvid.jobs: job file loading, defaults, and one-line validation errors."""

from __future__ import annotations

import textwrap

import pytest

from asyncvid.errors import AsyncVidError
from asyncvid.jobs import JobFileError, load_job_file

GOOD = """\
defaults:
  model: tiny-random
  steps: 4
out: renders
jobs:
  - name: circle
    prompt: "a red circle moving left"
    frames: 8
    width: 64
    height: 64
    fps: 8
  - name: square
    prompt: "a blue square"
    steps: 2
    format: gif
"""


def write(tmp_path, text, name="jobs.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path, text) -> str:
    with pytest.raises(JobFileError) as info:
        load_job_file(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert "jobs.yaml" in message
    return message


def test_good_file_merges_defaults(tmp_path):
    jf = load_job_file(write(tmp_path, GOOD))
    circle, square = jf.jobs
    assert (circle.name, circle.steps, circle.frames, circle.width, circle.fps) == ("circle", 4, 8, 64, 8.0)
    assert (square.steps, square.format, square.model) == (2, "gif", "tiny-random")
    assert circle.stages == 1 and circle.stride == 1 and circle.split == "auto"
    assert jf.out == (tmp_path / "renders").resolve()


def test_out_defaults_to_out_and_model_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", "jobs:\n  - {name: a, prompt: x, model: ../models/m}\n")
    jf = load_job_file(path)
    assert jf.out == (tmp_path / "sub" / "out").resolve()
    assert jf.model_ref(jf.jobs[0]) == str((tmp_path / "models" / "m").resolve())


def test_split_lists_are_accepted(tmp_path):
    jf = load_job_file(write(tmp_path, GOOD.replace("    fps: 8\n", "    fps: 8\n    stages: 2\n    split: [[a, b], [c]]\n")))
    assert jf.jobs[0].split == [["a", "b"], ["c"]]


def test_error_names_the_yaml_line(tmp_path):
    message = load_error(tmp_path, GOOD.replace("frames: 8", "frames: 0"))
    assert message.startswith(f"{tmp_path / 'jobs.yaml'}:8: job 1 'circle': frames:")


BAD_JOBS = {
    "frames": GOOD.replace("frames: 8", "frames: 0"),
    "steps": GOOD.replace("steps: 2", "steps: 0"),
    "fps": GOOD.replace("fps: 8", "fps: 0"),
    "width": GOOD.replace("width: 64", "width: 60"),
    "height": GOOD.replace("height: 64", "height: 4"),
    "stages": GOOD.replace("fps: 8", "fps: 8\n    stages: 0"),
    "stride": GOOD.replace("fps: 8", "fps: 8\n    stride: 3"),
    "warmup": GOOD.replace("fps: 8", "fps: 8\n    warmup: -1"),
    "format": GOOD.replace("format: gif", "format: mkv"),
    "crf": GOOD.replace("fps: 8", "fps: 8\n    crf: 60"),
    "split": GOOD.replace("fps: 8", "fps: 8\n    split: [[a], b]"),
    "colour": GOOD.replace("fps: 8", "fps: 8\n    colour: red"),  # unknown key
    "seed": GOOD.replace("fps: 8", "fps: 8\n    seed: '1'"),  # strict: no str -> int
    "guidance": GOOD.replace("fps: 8", "fps: 8\n    guidance: high"),
    "prompt": GOOD.replace('    prompt: "a blue square"\n', ""),  # missing
    "name": GOOD.replace("name: square", "name: Circle"),  # duplicate (case-insensitive)
    "defaults": GOOD.replace("steps: 4", "steps: 0"),
    "colours": GOOD + "colours: 3\n",  # unknown top-level key
    "jobs": "jobs: []\n",
}


@pytest.mark.parametrize("field", sorted(BAD_JOBS))
def test_bad_values_name_their_field(tmp_path, field):
    assert field in load_error(tmp_path, BAD_JOBS[field])


def test_split_must_match_stages(tmp_path):
    message = load_error(tmp_path, GOOD.replace("fps: 8", "fps: 8\n    stages: 3\n    split: [[a], [b]]"))
    assert "split" in message and "stages" in message


@pytest.mark.parametrize("name", ["a/b", "../up", "/abs", "a\\b", "..", ".hidden", "a b", ""])
def test_bad_job_names(tmp_path, name):
    message = load_error(tmp_path, GOOD.replace("name: square", f"name: {name!r}"))
    assert "job 2" in message and "name:" in message


def test_duplicate_yaml_key(tmp_path):
    message = load_error(tmp_path, GOOD.replace("fps: 8", "fps: 8\n    fps: 9"))
    assert "'fps'" in message and "jobs.yaml:12:" in message


def test_yaml_syntax_error(tmp_path):
    message = load_error(tmp_path, "jobs:\n  - name: a\n    prompt: [unclosed\n")
    assert "YAML syntax error" in message


@pytest.mark.parametrize("text", ["- just\n- a list\n", "jobs: 3\n", "jobs:\n  - 5\n", ""])
def test_wrong_structure(tmp_path, text):
    load_error(tmp_path, text)


def test_missing_file(tmp_path):
    with pytest.raises(JobFileError, match="not found") as info:
        load_job_file(tmp_path / "nope.yaml")
    assert isinstance(info.value, AsyncVidError)
    assert "nope.yaml" in str(info.value)

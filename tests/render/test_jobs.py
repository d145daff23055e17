"""asyncvid.render.jobfile: job file loading, defaults, and one-line validation errors."""

from __future__ import annotations


import pytest

from asyncvid.errors import AsyncVidError
from asyncvid.render.jobfile import JobFileError, load_job_file
from jobfiles import load_error, write

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



def test_good_file_merges_defaults(tmp_path):
    jf = load_job_file(write(tmp_path, GOOD))
    circle, square = jf.jobs
    assert (circle.name, circle.steps, circle.frames, circle.width, circle.fps) == ("circle", 4, 8, 64, 8.0)
    assert (square.steps, square.format, square.model) == (2, "gif", "tiny-random")
    assert circle.stages is None and circle.stride == 1 and circle.split == "auto"  # stages: one per device
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
    "forecast": GOOD.replace("fps: 8", "fps: 8\n    forecast: cubic"),
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


# ----------------------------------------------------------------------------- image-to-video jobs
I2V = """\
defaults:
  frames: 8
  guidance: 5.0          # text-to-video only: image jobs do not take it from the defaults
  motion_bucket_id: 90   # image-to-video only: text jobs do not take it from the defaults
jobs:
  - name: drift
    model: tiny-random-svd
    image: assets/cond.png
  - name: circle
    prompt: "a red circle"
"""


def make_image(path, size=(16, 8)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def svd_folder(tmp_path, name="svd", class_name="StableVideoDiffusionPipeline"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model_index.json").write_text(f'{{"_class_name": "{class_name}"}}')
    return folder


def test_i2v_job_defaults_and_mixed_defaults(tmp_path):
    make_image(tmp_path / "assets" / "cond.png")
    jf = load_job_file(write(tmp_path, I2V))
    drift, circle = jf.jobs
    assert drift.task == "i2v" and drift.image == "assets/cond.png"
    assert (drift.motion_bucket_id, drift.noise_aug_strength, drift.min_guidance, drift.max_guidance) == (90, 0.02, 1.0, 3.0)
    assert drift.prompt is drift.guidance is drift.negative_prompt is None
    assert jf.image_path(drift) == str((tmp_path / "assets" / "cond.png").resolve())
    assert circle.task == "t2v" and circle.guidance == 5.0 and circle.negative_prompt == ""
    assert circle.motion_bucket_id is None and jf.image_path(circle) is None
    assert jf.model_ref(drift) == "tiny-random-svd"


def test_task_comes_from_the_model_folder(tmp_path):
    make_image(tmp_path / "cond.png")
    svd_folder(tmp_path)
    jf = load_job_file(write(tmp_path, "jobs:\n  - {name: a, model: svd, image: cond.png}\n"
                                       "  - {name: b, model: missing-folder, image: cond.png}\n"
                                       "  - {name: c, model: missing-folder, prompt: x}\n"))
    assert [j.task for j in jf.jobs] == ["i2v", "i2v", "t2v"]  # a missing folder: the fields decide


I2V_ERRORS = {  # job text -> (field, words in the message, line)
    "{name: a, model: tiny-random-svd, image: nope.png}": ("image", "file not found", 2),
    "{name: a, model: tiny-random-svd, image: notes.txt}": ("image", "not an image file", 2),
    "{name: a, model: tiny-random-svd, image: assets}": ("image", "not a file", 2),
    "{name: a, model: tiny-random-svd}": ("image", "Field required for image-to-video jobs", 2),
    "{name: a, model: tiny-random-svd, image: cond.png, prompt: x}": ("prompt", "only for text-to-video jobs", 2),
    "{name: a, prompt: x, motion_bucket_id: 3}": ("motion_bucket_id", "only for image-to-video", 2),
    "{name: a, prompt: x, image: cond.png}": ("image", "shapes-t2v is text-to-video", 2),
    "{name: a, image: cond.png, task: t2v}": ("image", "task: t2v", 2),
    "{name: a, task: i2v, model: tiny-random}": ("task", "tiny-random is text-to-video", 2),
    "{name: a, task: i2v, model: ad}": ("task", "AnimateDiffPipeline", 2),
    "{name: a, model: flux, prompt: x}": ("model", "FluxPipeline", 2),
    "{name: a, task: v2v, prompt: x}": ("task", "'t2v' or 'i2v'", 2),
    "{name: a, model: tiny-random-svd, image: cond.png, motion_bucket_id: -1}": ("motion_bucket_id", "greater than or equal to 0", 2),
    "{name: a, model: tiny-random-svd, image: cond.png, noise_aug_strength: -0.1}": ("noise_aug_strength", "greater than or equal to 0", 2),
    "{name: a, model: tiny-random-svd, image: cond.png, decode_chunk: 0}": ("decode_chunk", "greater than or equal to 1", 2),
    "{name: a, model: tiny-random-svd, image: cond.png, max_guidance: high}": ("max_guidance", "number", 2),
    "{name: a, model: tiny-random-svd, image: ''}": ("image", "at least 1 character", 2),
}


@pytest.mark.parametrize("job", sorted(I2V_ERRORS))
def test_i2v_errors(tmp_path, job):
    make_image(tmp_path / "cond.png")
    (tmp_path / "assets").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    svd_folder(tmp_path, "ad", "AnimateDiffPipeline")
    svd_folder(tmp_path, "flux", "FluxPipeline")
    field, words, line = I2V_ERRORS[job]
    message = load_error(tmp_path, f"jobs:\n  - {job}\n")
    assert message.startswith(f"{tmp_path / 'jobs.yaml'}:{line}: job 1 'a': {field}: "), message
    assert words in message


def test_image_error_names_the_image_line(tmp_path):
    message = load_error(tmp_path, "jobs:\n  - name: a\n    model: tiny-random-svd\n    seed: 3\n    image: gone.png\n")
    assert message == f"{tmp_path / 'jobs.yaml'}:5: job 1 'a': image: file not found: {tmp_path / 'gone.png'}"


def test_truncated_image_is_rejected(tmp_path):
    png = make_image(tmp_path / "cond.png", size=(64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    message = load_error(tmp_path, "jobs:\n  - {name: a, model: tiny-random-svd, image: cut.png}\n")
    assert "image: not a readable image file" in message or "image: not an image file" in message


def test_t2v_without_prompt_names_prompt(tmp_path):
    message = load_error(tmp_path, "jobs:\n  - {name: a, steps: 2}\n")
    assert "job 1 'a': prompt: Field required for text-to-video jobs" in message


def test_dtype_field(tmp_path):
    jobs = load_job_file(write(tmp_path, GOOD.replace("  steps: 4\n", "  steps: 4\n  dtype: bfloat16\n"))).jobs
    assert [j.dtype for j in jobs] == ["bfloat16", "bfloat16"]
    assert load_job_file(write(tmp_path, GOOD)).jobs[0].dtype == "float32"
    message = load_error(tmp_path, GOOD.replace("  steps: 4\n", "  steps: 4\n  dtype: half\n"))
    assert "dtype" in message and "\n" not in message


def test_dtype_is_part_of_what_loading_a_model_depends_on(tmp_path):
    from pathlib import Path

    from asyncvid.catalog.pipelines import load_pipeline
    from asyncvid.render.tasks import tasks_for

    path = write(tmp_path, GOOD.replace("  steps: 4\n", "  steps: 4\n  dtype: bfloat16\n"))
    task = tasks_for(load_job_file(path), Path(tmp_path / "out"))[0]
    task.model_dir, task.adapter_dir = str(tmp_path / "model"), None
    assert task.model_key[2] == "bfloat16" and task.config["dtype"] == "bfloat16"  # load_pipeline(dir, adapter, dtype, ...)
    import torch
    from asyncvid.catalog.presets import build_animatediff_pipeline

    build_animatediff_pipeline("tiny", seed=0).save_pretrained(tmp_path / "model", safe_serialization=True)
    pipe = load_pipeline(*task.model_key)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16


def test_stages_default_to_one_per_device_left_by_cfg(tmp_path):
    from asyncvid.render.tasks import tasks_for

    jf = load_job_file(write(tmp_path, "jobs:\n  - {name: a, prompt: x}\n  - {name: b, prompt: x, cfg: 2}\n"
                                       "  - {name: c, prompt: x, stages: 1}\n  - {name: d, prompt: x, split: [[conv_in], [up_blocks]]}\n"))
    stages = {n: [t.config["stages"] for t in tasks_for(jf, tmp_path, devices=n)] for n in (1, 2, 4)}
    assert stages == {1: [1, 1, 1, 2], 2: [2, 1, 1, 2], 4: [4, 2, 1, 2]}
    # the resolved stages are part of a video's identity: one device and two make different videos
    one, two = tasks_for(jf, tmp_path, devices=1)[0], tasks_for(jf, tmp_path, devices=2)[0]
    assert one.config_hash != two.config_hash


def test_forecast_is_part_of_a_video_identity_and_none_keeps_old_hashes(tmp_path):
    from asyncvid.render.tasks import config_hash, tasks_for

    jf = load_job_file(write(tmp_path, "jobs:\n  - {name: a, prompt: x, stages: 2}\n"
                                       "  - {name: b, prompt: x, stages: 2, forecast: Linear}\n"
                                       "  - {name: c, prompt: x, stages: 2, forecast: none}\n"))
    a, b, c = tasks_for(jf, tmp_path)
    assert (a.config["forecast"], b.config["forecast"]) == ("none", "linear")
    assert config_hash(dict(b.config, name="a")) != a.config_hash
    assert config_hash(dict(c.config, name="a")) == a.config_hash  # "none" written out: the same video
    before = {k: v for k, v in a.config.items() if k != "forecast"}  # a manifest written before the option
    assert config_hash(before) == a.config_hash


THREE_MISTAKES = """\
defaults: {frames: 4}
jobs:
  - name: a
    prompt: x
    num_inference_steps: 10
  - name: b
    prompt: y
    frames: 0
  - name: c
    prompt: z
    fromat: gif
"""


def test_every_mistake_is_reported_at_once_with_its_line_and_a_suggestion(tmp_path, capsys):
    from asyncvid.cli.main import main

    path = write(tmp_path, THREE_MISTAKES)
    assert main(["render", str(path), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"asyncvid: error: {path}:5: job 1 'a': num_inference_steps: unknown field (diffusers' name; the job "
        "field is `steps`)",
        f"asyncvid: error: {path}:8: job 2 'b': frames: Input should be greater than or equal to 1 (got 0)",
        f"asyncvid: error: {path}:11: job 3 'c': fromat: unknown field; did you mean `format`?",
    ]
    assert not (tmp_path / "out").exists()  # nothing written


def test_new_weights_in_the_same_model_folder_make_its_videos_stale(tmp_path):
    import os

    from asyncvid.render.tasks import tasks_for

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "AnimateDiffPipeline"}')
    (folder / "unet" / "config.json").write_text("{}")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"old")
    path = write(tmp_path, "jobs:\n  - {name: a, prompt: x, model: model}\n")
    before = tasks_for(load_job_file(path), tmp_path)[0].config_hash
    assert tasks_for(load_job_file(path), tmp_path)[0].config_hash == before  # stable while nothing changes
    weights.write_bytes(b"new weights")
    os.utime(weights, ns=(1, 2))
    assert tasks_for(load_job_file(path), tmp_path)[0].config_hash != before


def test_schema_command_prints_the_job_file_schema(tmp_path, capsys):
    import json

    from asyncvid.cli.main import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["required"] == ["jobs"] and schema["additionalProperties"] is False
    item = schema["properties"]["jobs"]["items"]
    assert item["required"] == ["name"] and item["additionalProperties"] is False
    assert "num_inference_steps" not in item["properties"] and "steps" in item["properties"]
    assert "name" not in schema["properties"]["defaults"]["properties"]  # each job names itself
    assert "num_inference_steps" in item["properties"]["steps"]["description"]
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema


def test_a_job_without_model_steps_or_size_renders_the_default_model_at_its_own_size(tmp_path):
    from asyncvid.catalog.builtin import DEFAULT_MODEL, DEFAULT_STEPS
    from asyncvid.render.tasks import tasks_for

    folder = tmp_path / "sd15"
    for part, config in (("unet", '{"sample_size": 64}'), ("vae", '{"block_out_channels": [8, 8, 8, 8]}')):
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(config)
    (folder / "model_index.json").write_text('{"_class_name": "AnimateDiffPipeline"}')
    jf = load_job_file(write(tmp_path, "jobs:\n  - {name: a, prompt: x}\n  - {name: b, prompt: x, width: 64}\n"
                                       "  - {name: c, prompt: x, model: sd15}\n  - {name: d, prompt: x, model: gone}\n"))
    configs = [t.config for t in tasks_for(jf, tmp_path)]
    assert configs[0]["model"] == DEFAULT_MODEL and configs[0]["steps"] == DEFAULT_STEPS == 25
    sizes = [(c["width"], c["height"]) for c in configs]
    # shapes-t2v: 8-latent UNet, 3-level VAE; SD 1.5 layout: 64 x 2**3; unreadable: the fallback
    assert sizes == [(32, 32), (64, 32), (512, 512), (256, 256)]

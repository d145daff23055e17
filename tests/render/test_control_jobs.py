"""Job files with ControlNet jobs (``controlnet`` + ``conditioning_frames``) and video-to-video jobs
(``video`` + ``strength``): one-line errors for their inputs, the config hash following the input
files' content, and a 2-device render of both kinds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from asyncvid.cli.main import main
from asyncvid.render.jobfile import load_job_file
from jobfiles import load_error, write
from asyncvid.render.tasks import tasks_for
from asyncvid.video import read_video_info, write_video


def fake_folder(path, class_name, weights=True):
    """A model folder as far as the job file loader looks: config.json (and a weights file)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"_class_name": class_name}))
    if weights:
        (path / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    return path


def square_frames(count, size=(48, 40)):
    """``count`` frames of a white square moving right on black (not the job's size: resized)."""
    frames = np.zeros((count, size[1], size[0], 3), np.uint8)
    for i in range(count):
        frames[i, 10:20, 4 + 8 * i:14 + 8 * i] = 255
    return frames


@pytest.fixture
def inputs(tmp_path):
    """Input files beside the job file: 4 conditioning frames, a 4-frame mp4, ControlNet folders."""
    (tmp_path / "edges").mkdir()
    for i, frame in enumerate(square_frames(4)):
        Image.fromarray(frame).save(tmp_path / "edges" / f"edge_{i:03d}.png")
    (tmp_path / "edges" / "README.txt").write_text("other files are ignored")
    write_video(tmp_path / "clip.mp4", (np.random.RandomState(0).rand(4, 32, 32, 3) * 255).astype("uint8"), fps=8)
    fake_folder(tmp_path / "cn", "ControlNetModel")
    fake_folder(tmp_path / "sparse", "SparseControlNetModel")
    fake_folder(tmp_path / "unet", "UNet2DConditionModel")
    fake_folder(tmp_path / "noweights", "ControlNetModel", weights=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "0.png").write_text("not a png")
    (tmp_path / "notes.txt").write_text("not a video")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "cond.png")
    return tmp_path



CN = "prompt: x, controlnet: cn, conditioning_frames: edges"


def test_controlnet_and_video_jobs_resolve(inputs):
    jf = load_job_file(write(inputs, f"""\
        defaults: {{frames: 16, strength: 0.5, controlnet_scale: 0.7}}
        jobs:
          - {{name: ctrl, {CN}, frames: 4}}
          - {{name: v2v, prompt: x, video: clip.mp4}}
          - {{name: both, {CN}, video: clip.mp4, strength: 0.9, controlnet_scale: 2}}
          - {{name: plain, prompt: x}}
        """))
    ctrl, v2v, both, plain = jf.jobs
    assert (ctrl.frames, ctrl.controlnet_scale, ctrl.strength) == (4, 0.7, None)  # default strength skipped
    assert (v2v.frames, v2v.strength, v2v.controlnet_scale) == (4, 0.5, None)  # frames come from the video
    assert (both.frames, both.strength, both.controlnet_scale) == (4, 0.9, 2.0)
    assert plain.strength is plain.controlnet_scale is plain.video is None and plain.frames == 16
    assert jf.input_paths(both) == {f: str(inputs / p) for f, p in
                                    [("controlnet", "cn"), ("conditioning_frames", "edges"), ("video", "clip.mp4")]}
    keys = [t.model_key[3:] for t in tasks_for(jf, inputs / "out")]
    assert keys == [(str(inputs / "cn"), False), (None, True), (str(inputs / "cn"), True), (None, False)]
    defaults = load_job_file(write(inputs, f"jobs:\n  - {{name: a, {CN}, frames: 4, video: clip.mp4}}\n")).jobs[0]
    assert (defaults.controlnet_scale, defaults.strength) == (1.0, 0.8)


ERRORS = {  # job text -> (field, words in the message)
    "{name: a, prompt: x, controlnet: cn, conditioning_frames: nope, frames: 4}": ("conditioning_frames", "not found"),
    "{name: a, prompt: x, controlnet: cn, conditioning_frames: edges, frames: 3}": ("conditioning_frames", "has 4 frames but the job renders 3"),
    "{name: a, prompt: x, controlnet: cn, conditioning_frames: empty, frames: 4}": ("conditioning_frames", "no image files"),
    "{name: a, prompt: x, controlnet: cn, conditioning_frames: broken, frames: 1}": ("conditioning_frames", "not an image file"),
    "{name: a, prompt: x, controlnet: cn, conditioning_frames: notes.txt, frames: 4}": ("conditioning_frames", "not a readable video file"),
    "{name: a, prompt: x, controlnet: cn, frames: 4}": ("conditioning_frames", "Field required for ControlNet jobs"),
    "{name: a, prompt: x, conditioning_frames: edges, frames: 4}": ("conditioning_frames", "only for ControlNet jobs"),
    "{name: a, prompt: x, controlnet: unet, conditioning_frames: edges, frames: 4}": ("controlnet", "not a ControlNet folder"),
    "{name: a, prompt: x, controlnet: edges, conditioning_frames: edges, frames: 4}": ("controlnet", "no config.json"),
    "{name: a, prompt: x, controlnet: gone, conditioning_frames: edges, frames: 4}": ("controlnet", "not found"),
    "{name: a, prompt: x, controlnet: noweights, conditioning_frames: edges, frames: 4}": ("controlnet", "no weights"),
    "{name: a, prompt: x, controlnet: sparse, conditioning_frames: edges, frames: 4}": ("controlnet", "SparseCtrl is available from Python only"),
    "{name: a, prompt: x, controlnet: cn, conditioning_frames: edges, controlnet_scale: -1, frames: 4}": ("controlnet_scale", "greater than or equal to 0"),
    "{name: a, model: tiny-random-svd, image: cond.png, video: clip.mp4}": ("video", "only for text-to-video jobs"),
    "{name: a, model: tiny-random-svd, image: cond.png, controlnet: cn}": ("controlnet", "only for text-to-video jobs"),
    "{name: a, prompt: x, video: clip.mp4, strength: 1.5}": ("strength", "less than or equal to 1"),
    "{name: a, prompt: x, video: clip.mp4, strength: 0}": ("strength", "greater than 0"),
    "{name: a, prompt: x, strength: 0.5}": ("strength", "only for video-to-video jobs"),
    "{name: a, prompt: x, video: nope.mp4}": ("video", "not found"),
    "{name: a, prompt: x, video: notes.txt}": ("video", "not a readable video file"),
    "{name: a, prompt: x, video: clip.mp4, frames: 8}": ("frames", "the video has 4 frames"),
    "{name: a, prompt: x, video: clip.mp4, controlnet: cn, conditioning_frames: cond.png}": ("conditioning_frames", "has 1 frame but the video has 4"),
}


@pytest.mark.parametrize("job", sorted(ERRORS))
def test_input_errors_name_the_job_and_field(inputs, job):
    field, words = ERRORS[job]
    message = load_error(inputs, f"jobs:\n  - {job}\n")
    assert message.startswith(f"{inputs / 'jobs.yaml'}:2: job 1 'a': {field}: "), message
    assert words in message, message


def test_input_error_names_the_field_line_and_the_cli_prints_one_line(inputs, capsys):
    path = write(inputs, "jobs:\n  - name: a\n    prompt: x\n    frames: 4\n    controlnet: sparse\n"
                         "    conditioning_frames: edges\n")
    assert main(["render", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"asyncvid: error: {path}:5: job 1 'a': controlnet: "), err
    assert "SparseCtrl" in err[0] and "Traceback" not in err[0]


def test_sdxl_models_refuse_controlnet_and_video(inputs):
    (inputs / "xl").mkdir()
    (inputs / "xl" / "model_index.json").write_text('{"_class_name": "AnimateDiffSDXLPipeline"}')
    message = load_error(inputs, f"jobs:\n  - {{name: a, model: xl, {CN}, frames: 4}}\n")
    assert "job 1 'a': controlnet: " in message and "SDXL" in message
    message = load_error(inputs, "jobs:\n  - {name: a, model: xl, prompt: x, video: clip.mp4}\n")
    assert "job 1 'a': video: " in message and "SDXL" in message
    (inputs / "base").mkdir()
    (inputs / "base" / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    message = load_error(inputs, "jobs:\n  - {name: a, model: base, prompt: x}\n")
    assert "job 1 'a': model: " in message and "motion_adapter" in message
    fake_folder(inputs / "motion", "MotionAdapter")
    jf = load_job_file(write(inputs, "jobs:\n  - {name: a, model: base, motion_adapter: motion, prompt: x}\n"))
    assert jf.jobs[0].task == "t2v"


def test_config_hash_follows_the_input_files(inputs):
    path = write(inputs, f"jobs:\n  - {{name: a, {CN}, video: clip.mp4}}\n")

    def task():
        return tasks_for(load_job_file(path), inputs / "out")[0]

    first = task()
    assert first.config_hash == task().config_hash
    assert {"controlnet_fingerprint", "conditioning_frames_sha256", "video_sha256"} <= set(first.config)
    Image.fromarray(square_frames(1)[0] // 2).save(inputs / "edges" / "edge_002.png")  # one frame changed
    second = task()
    assert second.config_hash != first.config_hash
    assert second.config["conditioning_frames_sha256"] != first.config["conditioning_frames_sha256"]
    (inputs / "edges" / "README.txt").write_text("not a frame: changes nothing")
    assert task().config_hash == second.config_hash
    write_video(inputs / "clip.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=8)
    third = task()
    assert third.config_hash != second.config_hash and third.config["video_sha256"] != second.config["video_sha256"]
    (inputs / "cn" / "diffusion_pytorch_model.safetensors").write_bytes(b"retrained weights")
    assert task().config["controlnet_fingerprint"] != third.config["controlnet_fingerprint"]


def control_model(path):
    """The tiny ControlNet (its output convolutions non-zero: a random ControlNet that changes the video)."""
    from asyncvid.catalog.variants import controlnet_model

    controlnet_model("tiny").save_pretrained(path)


def png_frames(folder):
    return np.stack([np.asarray(Image.open(f)) for f in sorted(folder.glob("frame_*.png"))]).astype(np.int16)


@pytest.mark.multiprocess
def test_controlnet_and_video_jobs_on_two_devices(inputs):
    import shutil

    shutil.rmtree(inputs / "cn")
    control_model(inputs / "cn")
    path = write(inputs, f"""\
        defaults: {{model: tiny-random, frames: 4, width: 32, height: 32, steps: 3, stages: 2, format: png}}
        jobs:
          - {{name: ctrl, {CN}, controlnet_scale: 1.0}}
          - {{name: plain, prompt: x}}
          - {{name: v2v, prompt: x, video: clip.mp4, strength: 0.7, format: mp4}}
          - {{name: v2v-ctrl, {CN}, video: clip.mp4, strength: 0.7}}
        """)
    out = inputs / "out"
    assert main(["render", str(path), "--out", str(out), "--devices", "2", "--quiet"]) == 0
    for name in ("ctrl", "plain", "v2v.mp4", "v2v-ctrl"):
        info = read_video_info(out / name)
        assert (info["frames"], info["height"], info["width"]) == (4, 32, 32), name
        manifest = json.loads((out / f"{name.split('.')[0]}.json").read_text())
        assert manifest["devices"] == 2 and manifest["frames"] == 4
    ctrl = json.loads((out / "ctrl.json").read_text())
    assert ctrl["controlnet_dir"] == str(inputs / "cn") and ctrl["conditioning_frames"] == str(inputs / "edges")
    assert json.loads((out / "v2v.json").read_text())["config"]["strength"] == 0.7
    difference = np.abs(png_frames(out / "ctrl") - png_frames(out / "plain"))
    assert difference.mean() > 1.0  # same prompt and seed: the ControlNet is what changed the frames

"""``asyncvid render --devices 2``: text- and image-to-video jobs in one file, two stages each."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from asyncvid.cli.main import main
from asyncvid.video import read_video_info

pytestmark = [pytest.mark.multiprocess]

JOBS = """\
defaults: {frames: 8, width: 32, height: 32, steps: 2, stages: 2, fps: 8}
jobs:
  - {name: circle, prompt: "a red circle", format: gif}
  - {name: drift, model: tiny-random-svd, image: cond.png, fps: 6, decode_chunk: 4}
  - {name: square, prompt: "a blue square", seed: 1, width: 48}
"""


def test_three_jobs_on_two_devices(tmp_path):
    Image.fromarray((np.random.RandomState(0).rand(24, 40, 3) * 255).astype("uint8")).save(tmp_path / "cond.png")
    (tmp_path / "jobs.yaml").write_text(JOBS)
    out = tmp_path / "out"
    assert main(["render", str(tmp_path / "jobs.yaml"), "--out", str(out), "--devices", "2", "--quiet",
                 "--profile"]) == 0
    expected = {"circle.gif": (32, 8.0), "drift.mp4": (32, 6.0), "square.mp4": (48, 8.0)}
    for name, (width, fps) in expected.items():
        info = read_video_info(out / name)
        assert (info["frames"], info["height"], info["width"]) == (8, 32, width), name
        assert info["fps"] == pytest.approx(fps, rel=0.1)  # a GIF's frame delay is in 1/100 s
        manifest = json.loads((out / (name.rsplit(".", 1)[0] + ".json")).read_text())
        assert manifest["devices"] == 2 and manifest["frames"] == 8 and manifest["output"] == name
        assert manifest["config"]["task"] == ("i2v" if name == "drift.mp4" else "t2v")
    drift = json.loads((out / "drift.json").read_text())
    assert drift["image"] == str(tmp_path / "cond.png") and len(drift["config"]["image_sha256"]) == 64
    assert drift["model_dir"] == str(tmp_path / "cache" / "models" / "tiny-random-svd")  # built once, cached
    profile = json.loads((out / "render_profile.json").read_text())
    assert profile["jobs"] == 3 and profile["devices"] == 2

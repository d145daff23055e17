"""`asyncvid eval fidelity` end to end on a tiny random model: one exact and one asynchronous
configuration against the sequential output of the same seeds."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from asyncvid.cli.main import main

pytestmark = [pytest.mark.multiprocess]  # every configuration on its own local ranks


def test_fidelity_sweep_reports_exact_and_asynchronous_configs(tmp_path):
    out, md, png = tmp_path / "fid.json", tmp_path / "fid.md", tmp_path / "pareto.png"
    assert main(["eval", "fidelity", "--model", "tiny-random", "--prompt", "a red circle", "--prompt", "a cat",
                 "--seeds", "1", "--steps", "3", "--frames", "8", "--size", "32", "--configs", "1x1w1", "2x1w1",
                 "--forecast", "none", "linear", "--json", str(out), "--markdown", str(md), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    one, two, forecast = report["configs"]  # one stage is never stale: rendered once, without a forecast
    assert [r["forecast"] for r in report["configs"]] == ["none", "none", "linear"]
    # the forecast (on the same ranks, the same seeds) changes the asynchronous video, not its speed
    assert forecast["metrics"]["psnr_db"] != two["metrics"]["psnr_db"] and forecast["speedup"] == two["speedup"]
    assert "| N=2 S=1 warm-up 1, forecast linear |" in md.read_text()
    assert "PSNR dB, forecast linear" in md.read_text()  # the pivot: one column per forecast
    assert (one["stages"], two["stages"]) == (1, 2)
    # one stage through the engine is the sequential pipeline, bit for bit
    assert one["metrics"]["psnr_db"] == "inf" and one["metrics"]["identical_clips"] == 2
    assert one["metrics"]["lpips"] == 0.0 and one["metrics"]["ssim"] == 1.0
    # two asynchronous stages differ from it, measurably
    assert two["metrics"]["identical_clips"] == 0 and 5 < two["metrics"]["psnr_db"] < 100
    assert two["metrics"]["lpips"] > 0 and two["metrics"]["temporal_error"] > 0
    assert two["speed_source"] == "predicted" and two["speedup"] > 1
    assert "adherence" not in two["metrics"]  # not the shapes world: no adherence claimed
    assert "| N=2 S=1 warm-up 1 |" in md.read_text()
    assert Image.open(png).size == (900, 600)


def test_fidelity_of_an_image_to_video_model(tmp_path):
    """An SVD model is measured on shapes prompts: each prompt's first frame is the image and its
    direction the motion bucket, in the sequential run and in every configuration alike (one stage
    through the engine: the sequential video up to float rounding, as the reference renders with both
    cores' threads; two asynchronous stages: measurably different)."""
    out = tmp_path / "fid.json"
    assert main(["eval", "fidelity", "--model", "tiny-random-svd", "--prompt", "a red circle moving left on a "
                 "black background", "--prompt", "a blue square moving up on a gray background", "--seeds", "1",
                 "--steps", "3", "--guidance", "2.5", "--configs", "1x1w1", "2x1w1", "--no-lpips",
                 "--json", str(out)]) == 0
    one, two = json.loads(out.read_text())["configs"]
    assert one["metrics"]["psnr_db"] == "inf" or one["metrics"]["psnr_db"] > 100
    assert two["metrics"]["identical_clips"] == 0 and 5 < two["metrics"]["psnr_db"] < 80


def test_fidelity_of_an_image_to_video_model_needs_shapes_prompts(capsys):
    assert main(["eval", "fidelity", "--model", "tiny-random-svd", "--prompt", "a cat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a shapes-world prompt" in err[0] and "image-to-video" in err[0]

"""The shipped image-to-video model (asyncvid/assets/shapes-i2v): loads offline with stock diffusers,
continues a world clip's first frame in the colour it shows and the direction its motion bucket
asks for, and renders from a job file at the size it was trained at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import asyncvid
from asyncvid.catalog.folders import native_size
from asyncvid.cli.main import main
from asyncvid.eval.adherence import render_i2v, score_many
from asyncvid.eval.world import held_out_split, prompt_for
from asyncvid.video import read_video_info

ASSET = Path(asyncvid.__file__).parent / "assets" / "shapes-i2v"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_shipped_folder_is_small_and_loads_offline(one_thread):
    from diffusers import (AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPVisionModelWithProjection

    size = sum(f.stat().st_size for f in ASSET.rglob("*") if f.is_file())
    assert size < 32 * 2**20  # 26 MB: the 10.2 M-parameter UNet is most of it
    pipe = StableVideoDiffusionPipeline.from_pretrained(ASSET, torch_dtype=torch.float32)
    assert isinstance(pipe.unet, UNetSpatioTemporalConditionModel)
    assert isinstance(pipe.vae, AutoencoderKLTemporalDecoder)
    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection) and pipe.unet.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    combos = held_out_split()[1][:8]
    with torch.no_grad():
        clips = render_i2v(pipe, combos, seed=0, num_inference_steps=12)
    assert np.stack(clips).shape == (8, 8, 32, 32, 3) and np.isfinite(np.stack(clips)).all()
    scores = score_many(clips, [prompt_for(*c) for c in combos])  # held-out combinations, from pixels
    assert scores["colour"] >= 6 / 8 and scores["direction"] >= 5 / 8


def test_i2v_example_renders_at_the_trained_size(tmp_path):
    assert native_size("shapes-i2v") == (32, 32)  # the UNet's sample_size x the VAE's scale
    job = (EXAMPLES / "i2v.yaml").read_text().replace("assets/", f"{EXAMPLES / 'assets'}/")
    (tmp_path / "i2v.yaml").write_text(job.replace("steps: 25", "steps: 6"))
    assert main(["render", str(tmp_path / "i2v.yaml"), "--out", str(tmp_path / "out"), "--only", "green-square-left",
                 "--quiet"]) == 0
    info = read_video_info(tmp_path / "out" / "green-square-left.gif")
    assert (info["frames"], info["width"], info["height"]) == (8, 32, 32)
    manifest = json.loads((tmp_path / "out" / "green-square-left.json").read_text())
    assert manifest["config"]["model"] == "shapes-i2v" and manifest["config"]["motion_bucket_id"] == 32

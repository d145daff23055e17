"""The shipped Wan-format model (asyncvid/assets/shapes-wan): loads offline with stock diffusers,
renders the asked-for colour, and a job without a size renders at the size it was trained at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import asyncvid
from asyncvid.catalog.folders import native_size
from asyncvid.cli.main import main
from asyncvid.eval.adherence import score_many
from asyncvid.eval.world import held_out_split, prompt_for
from asyncvid.video import read_video_info

ASSET = Path(asyncvid.__file__).parent / "assets" / "shapes-wan"


def test_shipped_folder_is_small_and_loads_offline(one_thread):
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    size = sum(f.stat().st_size for f in ASSET.rglob("*") if f.is_file())
    assert size < 12 * 2**20
    pipe = WanPipeline.from_pretrained(ASSET, torch_dtype=torch.float32)
    assert isinstance(pipe.transformer, WanTransformer3DModel) and isinstance(pipe.vae, AutoencoderKLWan)
    assert pipe.transformer.dtype == torch.float32
    _, held_out = held_out_split()
    prompts = [prompt_for(*c) for c in held_out[:6]]
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=prompts, num_frames=9, height=32, width=32, num_inference_steps=12, guidance_scale=5.0,
               output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (6, 9, 32, 32, 3) and np.isfinite(out.frames).all()
    assert score_many(list(out.frames), prompts)["colour"] >= 4 / 6  # held-out combinations, from pixels


def test_a_job_without_a_size_renders_at_the_trained_size(tmp_path):
    assert native_size("shapes-wan") == (32, 32)  # from the folder's model_index.json
    job = tmp_path / "jobs.yaml"
    job.write_text("jobs:\n  - name: clip\n    model: shapes-wan\n    prompt: a blue square moving right on a white background\n"
                   "    frames: 9\n    steps: 6\n")
    assert main(["render", str(job), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    info = read_video_info(tmp_path / "out" / "clip.mp4")
    assert (info["frames"], info["width"], info["height"]) == (9, 32, 32)
    assert json.loads((tmp_path / "out" / "clip.json").read_text())["config"]["model"] == "shapes-wan"

"""asyncvid.catalog: built-in names, model folders and their kinds, building pipelines by name or
preset, and a benchmark call's kwargs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from asyncvid.catalog.builtin import BUILTINS, PACKAGED, SHAPES_T2V, ensure_builtin
from asyncvid.catalog.folders import missing_adapter, missing_model, model_kind, resolve_adapter, resolve_model
from asyncvid.catalog.pipelines import build_pipeline, call_kwargs, is_svd
from asyncvid.errors import AsyncVidError


def folder(tmp_path, class_name, name="model"):
    path = tmp_path / name
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return str(path)


def test_builtin_names_and_kinds():
    assert BUILTINS == {"tiny-random": "t2v", "tiny-random-svd": "i2v", "shapes-t2v": "t2v", "tiny-random-wan": "t2v",
                        "shapes-wan": "t2v", "shapes-i2v": "i2v"}
    assert resolve_model("shapes-wan") == str(PACKAGED["shapes-wan"])  # shipped too
    assert model_kind("shapes-i2v") == ("i2v", "the model shapes-i2v is image-to-video")
    assert model_kind("tiny-random-svd") == ("i2v", "the model tiny-random-svd is image-to-video")
    assert ensure_builtin(SHAPES_T2V) == PACKAGED[SHAPES_T2V]  # shipped: nothing is built
    assert resolve_model(SHAPES_T2V) == str(PACKAGED[SHAPES_T2V])
    assert missing_model("tiny-random") is None


def test_folder_kinds(tmp_path):
    assert model_kind(folder(tmp_path, "AnimateDiffPipeline", "ad"))[0] == "t2v"
    assert model_kind(folder(tmp_path, "StableDiffusionPipeline", "sd"))[0] == "t2v"
    assert model_kind(folder(tmp_path, "WanPipeline", "wan"))[0] == "t2v"
    assert model_kind(folder(tmp_path, "StableVideoDiffusionPipeline", "svd")) == (
        "i2v", "the model is a StableVideoDiffusionPipeline (image-to-video)")
    assert model_kind(str(tmp_path / "nowhere")) == (None, "")
    with pytest.raises(AsyncVidError, match="holds a FluxPipeline; asyncvid renders AnimateDiffPipeline"):
        model_kind(folder(tmp_path, "FluxPipeline", "flux"))


def test_missing_folders_are_one_line(tmp_path):
    assert missing_model(str(tmp_path / "nope")) == (
        f"model folder not found: {tmp_path / 'nope'} (expected a diffusers pipeline folder, a built-in name such as "
        "shapes-t2v, or a hub id in your Hugging Face cache)")
    assert missing_model(str(tmp_path)).startswith("model folder has no model_index.json")
    assert missing_adapter(str(tmp_path)).startswith("motion adapter folder has no config.json")
    with pytest.raises(AsyncVidError, match="model folder not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(AsyncVidError, match="motion adapter folder not found"):
        resolve_adapter(str(tmp_path / "nope"))
    assert resolve_adapter(None) is None


def test_call_kwargs_by_pipeline_kind():
    text = SimpleNamespace(vae_scale_factor=4, text_encoder=object())
    image = SimpleNamespace(vae_scale_factor=8, image_encoder=object())
    assert not is_svd(text) and is_svd(image)
    t2v = call_kwargs(text, frames=8, latent=4, steps=3, guidance=5.0, prompt="a cat")
    assert t2v == dict(num_frames=8, height=16, width=16, num_inference_steps=3, output_type="latent",
                       prompt="a cat", guidance_scale=5.0)
    i2v = call_kwargs(image, frames=8, latent=4, steps=3)
    assert i2v["image"].size == (32, 32) and i2v["max_guidance_scale"] > 1 and "prompt" not in i2v


def test_build_pipeline_null_preset():
    pipe = build_pipeline("animatediff", "null")
    assert tuple(pipe.unet.config.block_out_channels) == (8, 8)
    assert not is_svd(pipe)


def test_a_hub_id_resolves_from_the_local_cache_and_is_one_line_when_absent(tmp_path, monkeypatch):
    from jobfiles import hub_cache_with

    monkeypatch.setenv("ASYNCVID_CACHE", str(tmp_path / "asyncvid-cache"))
    cache = hub_cache_with(tmp_path, "someone/tiny-video", ensure_builtin("tiny-random"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # asyncvid's default: offline
    folder = resolve_model("someone/tiny-video")
    assert Path(folder).parent == cache / "models--someone--tiny-video" / "snapshots"
    assert model_kind(folder)[0] == "t2v"
    with pytest.raises(AsyncVidError) as err:
        resolve_model("someone/not-cached")
    line = str(err.value)
    assert "'someone/not-cached' is neither a folder" in line and "`hf download someone/not-cached`" in line
    assert str(cache) in line and "\n" not in line


def test_benchmark_sizes_are_pixels_over_the_vae_scale_or_the_models_own():
    from asyncvid.catalog.folders import native_size
    from asyncvid.catalog.pipelines import latent_side

    pipe = SimpleNamespace(vae_scale_factor=4, unet=SimpleNamespace(config=SimpleNamespace(sample_size=8)))
    assert latent_side(pipe, {"size": 64}) == 16
    assert latent_side(pipe, {}) == 8  # the model's own: sample_size latents
    assert latent_side(pipe, {"size": 64, "latent": 3}) == 3  # resolved already (the hidden --latent)
    with pytest.raises(AsyncVidError, match="--size 30: must be a multiple of the VAE's scale 4"):
        latent_side(pipe, {"size": 30})
    assert native_size(SHAPES_T2V) == (32, 32) and native_size("no/such/folder") is None


def test_a_folder_with_null_components_loads_as_the_video_to_video_pipeline():
    """shapes-t2v keeps its motion modules inside the UNet (``motion_adapter: [null, null]``):
    the video-to-video class, which lists more components, still loads it."""
    from asyncvid.catalog.pipelines import load_pipeline

    pipe = load_pipeline(str(ensure_builtin(SHAPES_T2V)), video=True)
    assert type(pipe).__name__ == "AnimateDiffVideoToVideoPipeline" and pipe.motion_adapter is None

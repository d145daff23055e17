"""Stable Video Diffusion (UNetSpatioTemporalConditionModel) on the AsyncDiff engine.

The adapter's unit chain reproduces the UNet bit for bit; over real processes (gloo) the frames
equal diffusers' with one stage (or a warm-up covering every step) and the single-process reference
recurrence with 2-3 stages; each rank holds only its stage and ships exactly the carried state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _svd_workers as W
from asyncvid.planner.profile import cut_bytes
from asyncvid.errors import AsyncVidError
from asyncvid.launch import launch_local
from asyncvid.models import adapter_for
from asyncvid.models.svd import SpatioTemporalUNetAdapter
from asyncvid.catalog.presets import build_svd_pipeline
from asyncvid.pipelines.svd import conditioning_image
from reference import AsyncReference, memo

SPLIT2 = [["conv_in", "down_blocks", "mid_block", "up_blocks.0"], ["up_blocks.1", "conv_out"]]
UNITS = ["conv_in", "down_blocks.0.resnets.0", "down_blocks.0.attentions.0", "down_blocks.0.downsamplers.0",
         "down_blocks.1.resnets.0", "mid_block", "up_blocks.0.resnets.0", "up_blocks.0.resnets.1",
         "up_blocks.0.upsamplers.0", "up_blocks.1.resnets.0", "up_blocks.1.attentions.0", "up_blocks.1.resnets.1",
         "up_blocks.1.attentions.1", "conv_out"]


def maxdiff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@memo
def sequential_frames(call=None, image=None, folder=None):
    return W.call_pipeline(W.load_pipeline(folder), image, call).frames


@memo
def reference_frames(ranges, warmup=1, stride=1, call=None, image=None):
    pipe = W.load_pipeline()
    AsyncReference(pipe, ranges, warmup, stride).install()
    return W.call_pipeline(pipe, image, call).frames


@pytest.fixture(scope="module")
def unet():
    return build_svd_pipeline("tiny", seed=0).unet


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd") / "tiny-svd"
    W.load_pipeline().save_pretrained(folder, safe_serialization=True)
    return str(folder)


IMAGES = [
    dict(size=(50, 30)),  # any size: the pipeline resizes it (to height x width for the VAE, 224 for CLIP)
    dict(mode="L", convert=True),  # grayscale, converted to RGB by asyncvid.pipelines.svd.conditioning_image
    dict(mode="RGBA", convert=True),  # alpha dropped by the conversion
    dict(mode="L"),  # raw grayscale: diffusers' SVD pipeline cannot take it; the call fails, the pipeline lives on
    dict(),
]


def _jobs(folder):
    """Every multi-rank run of this module, by world size; each world size is one group of ranks."""
    return {
        2: {"two": ("_svd_workers.render", (dict(stages=2, warmup=1, split=SPLIT2),)),
            "stride2-2": ("_svd_workers.render", (dict(stages=2, warmup=1, stride=2, split=SPLIT2),
                                                  dict(num_inference_steps=5))),
            "images": ("_svd_workers.render_images", (dict(stages=2, warmup=1, split=SPLIT2), IMAGES)),
            "from-folder": ("_svd_workers.render_from_folder", (folder, dict(stages=2, warmup=1, split=SPLIT2))),
            "fixture": ("_svd_workers.render_fixture", (dict(stages=2, warmup=2, split="auto"),))},
        3: {"warmup-all": ("_svd_workers.render", (dict(stages=3, warmup=4, split="auto"), None, folder)),
            "auto3": ("_svd_workers.render", (dict(stages=3, warmup=1, split="auto"),)),
            "stride2-3": ("_svd_workers.render", (dict(stages=3, warmup=1, stride=2, split="auto"),
                                                  dict(num_inference_steps=6)))},
    }


@pytest.fixture(scope="module")
def runs(svd_folder):
    out = {}
    for world, jobs in _jobs(svd_folder).items():
        out.update(zip(jobs, launch_local(W.run_many, world, list(jobs.values()), timeout=900)))
    return out


@pytest.fixture(scope="module")
def two_stage_run(runs):
    return runs["two"]


# ----------------------------------------------------------------------------- units, in-process
def test_adapter_and_units(unet):
    adapter = adapter_for(unet)
    assert isinstance(adapter, SpatioTemporalUNetAdapter)
    assert [u.name for u in adapter.units()] == UNITS
    assert adapter.units()[-1].modules == ("conv_norm_out", "conv_act", "conv_out")


# (B, F, C, H, W); 9x13 latents are not multiples of 2**num_upsamplers: the upsampler gets the skip's size
@pytest.mark.parametrize("shape", [(2, 8, 8, 16, 16), (1, 3, 8, 9, 13)])
def test_units_chain_is_bit_exact(unet, shape, one_thread):
    torch.manual_seed(1)
    x = torch.randn(*shape)
    ehs = torch.randn(shape[0], 1, 32)
    ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(shape[0], 1)
    t = torch.tensor(0.7)  # the SVD scheduler's continuous timesteps: 0.25 * log(sigma), float32, may be < 0
    adapter = adapter_for(unet)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ehs, added_time_ids=ids).sample
        out = adapter.full_forward(x, t, encoder_hidden_states=ehs, added_time_ids=ids).sample
        ref_tuple = unet(x, -1.25, ehs, ids, False)  # positional, python float timestep, tuple output
        out_tuple = adapter.full_forward(x, -1.25, ehs, ids, False)
    assert out.shape == shape[:2] + (4,) + shape[3:]
    assert torch.equal(ref, out)
    assert isinstance(out_tuple, tuple) and torch.equal(ref_tuple[0], out_tuple[0])


def test_cut_bytes_on_a_weightless_unet(unet):
    """The engine's meta copy must not trip over SVD's CPU-born AlphaBlender.mix_factor."""
    adapter = adapter_for(unet)
    call = adapter.example_call(2, 8, 16, 16, torch.device("cpu"), torch.float32)
    sizes = cut_bytes(SpatioTemporalUNetAdapter, unet, call)
    assert len(sizes) == len(UNITS)
    assert sizes[0] == 2 * 8 * 32 * 16 * 16 * 4  # conv_in's output is the hidden state and the first skip: once
    assert sizes[-1] == 2 * 8 * 4 * 16 * 16 * 4  # the prediction
    assert not any(p.is_meta for p in unet.parameters())


@pytest.mark.multiprocess
# ----------------------------------------------------------------------------- over processes
def test_one_stage_from_saved_folder_equals_untouched_pipeline(svd_folder, one_thread):
    out = launch_local(W.render, 1, dict(stages=1, warmup=1), None, svd_folder)
    assert out["frames"].shape == (1, 8, 32, 32, 3)
    assert maxdiff(out["frames"], sequential_frames(folder=svd_folder)) <= 1e-5


@pytest.mark.multiprocess
def test_warmup_covering_all_steps_is_exact_with_three_stages(runs, svd_folder, one_thread):
    out = runs["warmup-all"]
    assert len(out["stats"][0]["ranges"]) == 3
    assert maxdiff(out["frames"], sequential_frames(folder=svd_folder)) <= 1e-5


@pytest.mark.multiprocess
def test_two_stages_match_reference_and_differ_from_sequential(two_stage_run, one_thread):
    ranges = two_stage_run["stats"][0]["ranges"]
    assert ranges == [(0, 9), (9, 14)]
    assert maxdiff(two_stage_run["frames"], reference_frames(ranges)) <= 1e-4
    assert maxdiff(two_stage_run["frames"], sequential_frames()) > 1e-2  # the asynchrony is real (~0.18)


@pytest.mark.multiprocess
def test_three_stages_auto_split_match_reference(runs, one_thread):
    out = runs["auto3"]
    ranges = out["stats"][0]["ranges"]
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == len(UNITS)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert maxdiff(out["frames"], reference_frames(ranges)) <= 1e-4
    assert maxdiff(out["frames"], sequential_frames()) > 1e-2


@pytest.mark.multiprocess
@pytest.mark.parametrize("stages,split,steps", [(2, SPLIT2, 5), (3, "auto", 6)])
def test_stride_two_matches_reference(runs, one_thread, stages, split, steps):
    call = dict(num_inference_steps=steps)
    out = runs[f"stride2-{stages}"]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"], reference_frames(ranges, stride=2, call=call)) <= 1e-4
    assert maxdiff(out["frames"], reference_frames(ranges, stride=1, call=call)) > 1e-4
    warmup = 1  # rounds executed: the warm-up step plus one per pair of remaining steps
    assert all(s["steps_executed"] == warmup + (steps - warmup + 1) // 2 for s in out["stats"])


@pytest.mark.multiprocess
def test_parameters_and_bytes_per_rank(two_stage_run, unet):
    stats = two_stage_run["stats"]
    named = dict(unet.named_parameters())
    shared = sum(p.numel() for n, p in named.items() if n.startswith(("time_embedding.", "add_embedding.")))
    stage1 = sum(p.numel() for n, p in named.items() if n.startswith(("up_blocks.1.", "conv_norm_out.", "conv_out.")))
    total = sum(p.numel() for p in unet.parameters())
    assert [s["unet_params_held"] for s in stats] == [total - stage1, stage1 + shared]
    # the cut after up_blocks.0 carries its upsampled output and the two skips up_blocks.1 will pop
    # (conv_in's output, down_blocks.0.attentions.0's output), all (B*F, C, H, W) fp32 at full latent size
    b, f = 2, W.CALL["num_frames"]  # batch 2: classifier-free guidance
    h = w = W.CALL["height"] // 2  # the tiny temporal-decoder VAE downsamples by 2
    hidden = b * f * 64 * h * w * 4
    skips = 2 * (b * f * 32 * h * w * 4)
    eps = b * f * 4 * h * w * 4
    steps = W.CALL["num_inference_steps"]
    assert stats[0]["traffic"]["activation_bytes_per_step"] == [hidden + skips] * (steps - 1) + [0]
    assert stats[1]["traffic"]["activation_bytes_per_step"] == [eps] * steps
    assert stats[0]["cut_bytes_at_call_shape"] == [hidden + skips]
    # conditioning crosses once per call: the (B, 1, D) image embedding and the (B, 3) added time ids
    assert stats[0]["traffic"]["conditioning_bytes"] == (b * 1 * 32 + b * 3) * 4


@pytest.mark.multiprocess
def test_stage_only_loading_holds_only_the_stage_and_renders_the_same(runs, unet, one_thread):
    out = runs["from-folder"]
    named = dict(unet.named_parameters())
    shared = sum(p.numel() for n, p in named.items() if n.startswith(("time_embedding.", "add_embedding.")))
    stage1 = sum(p.numel() for n, p in named.items() if n.startswith(("up_blocks.1.", "conv_norm_out.", "conv_out.")))
    total = sum(p.numel() for p in unet.parameters())
    assert out["held"] == [total - stage1, stage1 + shared]
    assert maxdiff(out["frames"], reference_frames(out["ranges"])) <= 1e-4


# ----------------------------------------------------------------------------- conditioning images
@pytest.mark.multiprocess
def test_conditioning_images_of_other_sizes_and_modes(runs, one_thread):
    out = runs["images"]
    results, ranges = out["results"], out["ranges"]
    assert [sorted(r) for r in results] == [["frames"]] * 3 + [["error"]] + [["frames"]]
    for spec, result in zip(IMAGES, results):
        if "frames" not in result:
            continue
        spec = dict(spec)
        image = W.make_image(**{k: v for k, v in spec.items() if k != "convert"})
        if spec.get("convert"):
            image = conditioning_image(image)
        assert result["frames"].shape == (1, 8, 32, 32, 3)
        assert maxdiff(result["frames"], reference_frames(ranges, image=image)) <= 1e-4
    error = results[3]["error"]
    assert "\n" not in error and "channels" in error  # diffusers' own message (the VAE's conv_in), one line


def test_conditioning_image_conversions(tmp_path):
    rgb = W.make_image()
    assert conditioning_image(rgb) is rgb
    for mode in ("L", "LA", "P", "RGBA", "CMYK", "I"):
        converted = conditioning_image(W.make_image(mode=mode))
        assert converted.mode == "RGB" and converted.size == (32, 32)
    assert conditioning_image(W.make_image(mode="L")).getpixel((3, 4)) == (W.make_image(mode="L").getpixel((3, 4)),) * 3
    path = tmp_path / "frame.png"
    W.make_image(size=(50, 30), mode="RGBA").save(path)
    assert conditioning_image(str(path)).mode == "RGB" and conditioning_image(path).size == (50, 30)
    assert [im.mode for im in conditioning_image([W.make_image(mode="L"), rgb])] == ["RGB", "RGB"]
    tensor = torch.rand(1, 3, 32, 32)
    assert conditioning_image(tensor) is tensor
    for bad, words in [(tmp_path / "missing.png", "not found"), (np.zeros((4, 4, 3)), "must be a PIL image")]:
        with pytest.raises(AsyncVidError, match=words) as err:
            conditioning_image(bad)
        assert "\n" not in str(err.value)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(AsyncVidError, match="not an image file"):
        conditioning_image(tmp_path / "notes.txt")


@pytest.mark.multiprocess
def test_diffusers_own_svd_fixture_through_an_auto_split(runs, one_thread):
    """The fixture's 32 px image encoder makes asyncvid's timing of the driver's step fail (it calls
    the pipeline with a PIL image, resized to 224 px for CLIP); the split goes on without it, with
    one warning, and the parallel call equals the untouched pipeline (warm-up covers both steps)."""
    out = runs["fixture"]
    assert len(out["warnings"]) == 1, out["warnings"]
    assert out["warnings"][0].startswith("asyncvid: could not measure the driver's own work per step (")
    assert "the split counts none" in out["warnings"][0]
    assert len(out["ranges"]) == 2
    assert maxdiff(out["frames"], W.call_fixture(W.fixture_pipeline())) <= 1e-5

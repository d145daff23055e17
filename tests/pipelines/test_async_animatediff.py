"""AsyncDiff over real processes (gloo): equality with diffusers and with the reference recurrence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _workers
from asyncvid.launch import launch_local
from asyncvid.catalog.presets import build_animatediff_pipeline
from reference import AsyncReference, memo


pytestmark = pytest.mark.multiprocess


@memo
def sequential_frames(call=None, dtype=None):
    pipe = _workers.tiny_pipeline(dtype)
    kwargs = dict(_workers.CALL, **(call or {}))
    return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames


@memo
def reference_frames(ranges, warmup, stride=1, time_shift=False, call=None, dtype=None):
    pipe = _workers.tiny_pipeline(dtype)
    AsyncReference(pipe, ranges, warmup, stride, time_shift).install()
    kwargs = dict(_workers.CALL, **(call or {}))
    return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames


def maxdiff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


SPLIT2 = [["conv_in", "down_blocks", "mid_block", "up_blocks.0"], ["up_blocks.1", "conv_out"]]
TWO = dict(stages=2, warmup=1, split=SPLIT2)
REBUILT = dict(callback_on_step_end=_workers.ScalePromptEmbeds(), callback_on_step_end_tensor_inputs=["prompt_embeds"],
               num_inference_steps=5)
SHAPES = [{}, dict(num_frames=6, height=48, width=40)]
HALF = dict(num_frames=4)
#: every multi-rank run of this module, by world size; each world size is one group of ranks
JOBS = {
    2: {
        "two": ("render", (TWO,)),
        "stride2-5": ("render", (dict(TWO, stride=2), dict(num_inference_steps=5))),
        "stride2-6": ("render", (dict(TWO, stride=2), dict(num_inference_steps=6))),
        "time_shift": ("render", (dict(TWO, time_shift=True),)),
        "shapes": ("render_calls", (TWO, SHAPES)),
        "rebuilt": ("render", (TWO, REBUILT)),
        "plain5": ("render", (TWO, dict(num_inference_steps=5))),
        "processors": ("render_after_processor_change", (TWO,)),
        # half precision is slow on CPUs: fewer frames and steps
        "float16": ("render", (TWO, dict(HALF, num_inference_steps=3), 1, "float16")),
        "float16-exact": ("render", (dict(TWO, warmup=3), dict(HALF, num_inference_steps=3), 1, "float16")),
        "bfloat16-stride2": ("render", (dict(TWO, stride=2), dict(HALF, num_inference_steps=4), 1, "bfloat16")),
    },
    3: {
        "warmup-all": ("render", (dict(stages=3, warmup=4, split="auto"),)),
        "auto3": ("render", (dict(stages=3, warmup=1, split="auto"),)),
    },
}


@pytest.fixture(scope="module")
def runs():
    out = {}
    for world, jobs in JOBS.items():
        results = launch_local(_workers.run_many, world, list(jobs.values()), timeout=900)
        out.update(zip(jobs, results))
    return out


def test_one_stage_equals_untouched_pipeline(one_thread):
    out = launch_local(_workers.render, 1, dict(stages=1, warmup=1))
    assert maxdiff(out["frames"][0], sequential_frames()) <= 1e-5


def test_warmup_covering_all_steps_is_exact_with_three_stages(runs, one_thread):
    out = runs["warmup-all"]
    assert maxdiff(out["frames"][0], sequential_frames()) <= 1e-5


def test_two_stages_match_reference_recurrence_and_differ_from_sequential(runs, one_thread):
    out = runs["two"]
    ranges = out["stats"][0]["ranges"]
    ref = reference_frames(ranges, warmup=1)
    assert maxdiff(out["frames"][0], ref) <= 1e-4
    assert maxdiff(out["frames"][0], sequential_frames()) > 1e-3  # the asynchrony is real


def test_three_stages_auto_split_match_reference(runs, one_thread):
    out = runs["auto3"]
    ranges = out["stats"][0]["ranges"]
    assert len(ranges) == 3 and ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert maxdiff(out["frames"][0], reference_frames(ranges, warmup=1)) <= 1e-4
    assert maxdiff(out["frames"][0], sequential_frames()) > 1e-3


@pytest.mark.parametrize("steps,warmup", [(5, 1), (6, 1)])  # odd and even number of post-warm-up steps
def test_stride_two_matches_reference(runs, one_thread, steps, warmup):
    call = dict(num_inference_steps=steps)
    out = runs[f"stride2-{steps}"]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"][0], reference_frames(ranges, warmup, stride=2, call=call)) <= 1e-4
    assert maxdiff(out["frames"][0], reference_frames(ranges, warmup, stride=1, call=call)) > 1e-4
    # rounds executed: warm-up steps plus one per pair of remaining steps
    assert out["stats"][1]["steps_executed"] == warmup + (steps - warmup + 1) // 2


def test_time_shift_matches_reference(runs, one_thread):
    out = runs["time_shift"]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"][0], reference_frames(ranges, 1, time_shift=True)) <= 1e-4
    assert maxdiff(out["frames"][0], reference_frames(ranges, 1, time_shift=False)) > 1e-4


def test_parameters_and_bytes_per_rank(runs):
    out = runs["two"]
    pipe = build_animatediff_pipeline("tiny", seed=0)
    unet = pipe.unet
    shared = sum(p.numel() for n, p in unet.named_parameters() if n.startswith(("time_proj", "time_embedding")))
    stage1_prefixes = ("up_blocks.1.", "conv_norm_out.", "conv_out.")
    stage1 = sum(p.numel() for n, p in unet.named_parameters() if n.startswith(stage1_prefixes))
    total = sum(p.numel() for p in unet.parameters())
    held = [s["unet_params_held"] for s in out["stats"]]
    assert held == [total - stage1, stage1 + shared]
    # bytes on the wire per step = the carried state at the cut (hidden + skip stack) / the prediction
    b, f = 2, _workers.CALL["num_frames"]
    h = w = _workers.CALL["height"] // 2  # the tiny VAE downsamples by 2
    hidden = b * f * 64 * h * w * 4  # up_blocks.0 output: 64 channels, upsampled to full latent size
    skips = 2 * (b * f * 32 * h * w * 4)  # conv_in output and down_blocks.0's layer output
    eps = b * 4 * f * h * w * 4
    steps = _workers.CALL["num_inference_steps"]
    assert out["stats"][0]["traffic"]["activation_bytes_per_step"] == [hidden + skips] * (steps - 1) + [0]
    assert out["stats"][1]["traffic"]["activation_bytes_per_step"] == [eps] * steps
    assert out["stats"][0]["cut_bytes_at_call_shape"] == [hidden + skips]


def test_second_call_and_changed_shape_just_work(runs, one_thread):
    calls = SHAPES
    out = runs["shapes"]
    ranges = out["stats"][0]["ranges"]
    for frames, call in zip(out["frames"], calls):
        assert frames.shape[1:4] == (call.get("num_frames", 8), call.get("height", 32), call.get("width", 32))
        assert maxdiff(frames, reference_frames(ranges, 1, call=call)) <= 1e-4


def test_conditioning_rebuilt_every_step_reaches_the_workers(runs, one_thread):
    """The loop's callback replaces the prompt embeddings by a new tensor with new values each step;
    the workers must embed exactly those (a check by id() could keep the stale ones)."""
    call = REBUILT
    out = runs["rebuilt"]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"][0], reference_frames(ranges, 1, call=call)) <= 1e-4
    plain = dict(num_inference_steps=5)
    assert maxdiff(reference_frames(ranges, 1, call=call), reference_frames(ranges, 1, call=plain)) > 1e-3
    # the driver sent the conditioning at every executed step
    sent = out["stats"][0]["traffic"]["conditioning_bytes"]
    once = runs["plain5"]["stats"][0]["traffic"]
    assert sent == 5 * once["conditioning_bytes"]


@pytest.mark.parametrize("key,dtype,stride,steps", [("float16", "float16", 1, 3), ("bfloat16-stride2", "bfloat16", 2, 4)])
def test_half_precision_matches_the_reference_in_the_same_dtype(runs, one_thread, key, dtype, stride, steps):
    out, call = runs[key], dict(HALF, num_inference_steps=steps)
    ranges = out["stats"][0]["ranges"]
    ref = reference_frames(ranges, 1, stride=stride, call=call, dtype=dtype)
    assert maxdiff(out["frames"][0], ref) <= 1e-4
    assert maxdiff(out["frames"][0], sequential_frames(call, dtype=dtype)) > 1e-3
    # half-precision states travel: half the float32 bytes at the cut (float32 run: 8 frames, here 4)
    fp32 = runs["two"]["stats"][0]["traffic"]["activation_bytes_per_step"][0]
    assert out["stats"][0]["traffic"]["activation_bytes_per_step"][0] == fp32 // 2 // 2


def test_half_precision_with_warmup_covering_every_step_equals_the_untouched_pipeline(runs, one_thread):
    call = dict(HALF, num_inference_steps=3)
    assert maxdiff(runs["float16-exact"]["frames"][0], sequential_frames(call, dtype="float16")) <= 1e-5


def test_module_change_on_the_driver_after_parallelize_is_refused_in_one_line(runs, one_thread):
    """diffusers' own processors travel to the workers (tests/pipelines/test_every_pipeline.py: PAG);
    a processor class of the user's own cannot be rebuilt there: refused in one line naming it, and
    the next call with the original processors works."""
    out = runs["processors"]
    assert "\n" not in out["error"] and "changed after parallelize" in out["error"]
    assert "UsersOwnProcessor" in out["error"]
    assert maxdiff(out["frames"], runs["two"]["frames"][0]) <= 1e-6

"""Every diffusers pipeline that drives a motion or spatio-temporal UNet, through ``parallelize``.

For each: with warm-up covering every step the output equals the untouched pipeline; with warm-up 1
it equals the independent reference recurrence (``tests/helpers/reference.py``, ControlNet residuals
of the current call included) and differs from the sequential output. ControlNet residuals reach
exactly the stage holding the mid block; PAG's processors, a LoRA's scale and an IP-Adapter's scale
reach every rank.
"""

from __future__ import annotations

import pytest

import _variants
from asyncvid.catalog.variants import KINDS

pytestmark = pytest.mark.multiprocess

#: the mid block (where ControlNet residuals join) and PAG's layers (``up_blocks.1``) on the worker
SPLIT_MID = [["conv_in", "down_blocks"], ["mid_block", "up_blocks", "conv_out"]]
SPLIT3 = [["conv_in", "down_blocks"], ["mid_block"], ["up_blocks", "conv_out"]]
EXACT = dict(stages=2, warmup=_variants.STEPS, split=SPLIT_MID)
ASYNC = dict(stages=2, warmup=1, split=SPLIT_MID)
LORA_CHANGES = (None, "lora-scale", "lora-off")
#: ControlNet only over the first half of the steps, at another scale. (guess_mode with guidance fails in
#: diffusers' own AnimateDiffControlNetPipeline: its residuals cover half the batch)
WINDOW = dict(control_guidance_start=0.0, control_guidance_end=0.5, controlnet_conditioning_scale=0.6)
IP_CHANGES = (None, "ip-scale")


def jobs(lora_dir: str) -> dict:
    two = {}
    for kind in KINDS:
        two[f"{kind}-exact"] = ("_variants.render_variant", (kind, EXACT))
        two[f"{kind}-async"] = ("_variants.render_variant", (kind, ASYNC))
    two["lora"] = ("_variants.render_variant", ("t2v", EXACT, "lora", lora_dir, LORA_CHANGES))
    two["lora-async"] = ("_variants.render_variant", ("t2v", ASYNC, "lora", lora_dir))
    two["ip-adapter"] = ("_variants.render_variant", ("t2v", EXACT, "ip-adapter", None, IP_CHANGES))
    two["controlnet-window"] = ("_variants.render_variant", ("controlnet", ASYNC, None, None, (None,), None, WINDOW))
    two["controlnet-bf16"] = ("_variants.render_variant", ("controlnet", ASYNC, None, None, (None,), "bfloat16"))
    three = {"controlnet-3": ("_variants.render_variant", ("controlnet", dict(stages=3, warmup=1, split=SPLIT3)))}
    return {2: two, 3: three}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return _variants.lora_file(str(tmp_path_factory.mktemp("lora")))


@pytest.fixture(scope="module")
def runs(lora_dir):
    return _variants.run_groups(jobs(lora_dir))


maxdiff = _variants.maxdiff


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_covering_every_step_equals_the_untouched_pipeline(runs, kind, one_thread):
    assert maxdiff(runs[f"{kind}-exact"]["frames"][0], _variants.sequential(kind)[0]) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_1_equals_the_reference_recurrence_and_is_asynchronous(runs, kind, one_thread):
    out = runs[f"{kind}-async"]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"][0], _variants.reference(kind, ranges, warmup=1)[0]) <= 1e-4
    assert maxdiff(out["frames"][0], _variants.sequential(kind)[0]) > 1e-3


@pytest.mark.parametrize("kind", ["controlnet", "sparsectrl", "v2v-controlnet"])
def test_control_residuals_reach_only_the_stage_holding_the_mid_block(runs, kind):
    driver, worker = runs[f"{kind}-async"]["stats"]
    assert worker["calls_with_extras"] == worker["steps_executed"] > 0  # every step (v2v: strength x steps)
    assert driver["calls_with_extras"] == 0
    assert driver["traffic"]["extras_bytes"] > 0


@pytest.mark.parametrize("kind", ["t2v", "sdxl", "v2v", "pag", "svd"])
def test_pipelines_without_control_send_no_extras(runs, kind):
    assert all(s["calls_with_extras"] == 0 and s["traffic"]["extras_bytes"] == 0 for s in runs[f"{kind}-async"]["stats"])


def test_three_stages_route_residuals_to_the_middle_stage_only(runs, one_thread):
    out = runs["controlnet-3"]
    assert [s["calls_with_extras"] for s in out["stats"]] == [0, _variants.STEPS, 0]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"][0], _variants.reference("controlnet", ranges, warmup=1)[0]) <= 1e-4


def test_control_guidance_window_and_scale_are_the_pipeline_s(runs, one_thread):
    """``control_guidance_start/end`` and the conditioning scale shape the residuals the pipeline
    passes; the stage holding the mid block gets exactly those, so the reference recurrence holds."""
    out = runs["controlnet-window"]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"][0], _variants.reference("controlnet", ranges, 1, overrides=WINDOW)[0]) <= 1e-4
    assert maxdiff(out["frames"][0], runs["controlnet-async"]["frames"][0]) > 1e-3  # the window changed the video


def test_controlnet_in_bfloat16_equals_the_bfloat16_reference(runs, one_thread):
    out = runs["controlnet-bf16"]
    ref = _variants.reference("controlnet", out["stats"][0]["ranges"], warmup=1, dtype="bfloat16")[0]
    assert maxdiff(out["frames"][0], ref) <= 1e-4
    # the residuals travelled in bfloat16: half the float32 bytes
    assert out["stats"][0]["traffic"]["extras_bytes"] * 2 == runs["controlnet-async"]["stats"][0]["traffic"]["extras_bytes"]


def test_lora_scale_changes_between_calls_reach_every_rank(runs, lora_dir, one_thread):
    expected = _variants.sequential("t2v", "lora", lora_dir, LORA_CHANGES)
    frames = runs["lora"]["frames"]
    assert all(maxdiff(a, b) <= 1e-5 for a, b in zip(frames, expected))
    assert maxdiff(expected[0], expected[1]) > 1e-3 and maxdiff(expected[1], expected[2]) > 1e-3
    # the LoRA matters at all: without it the output is another
    assert maxdiff(expected[0], _variants.sequential("t2v")[0]) > 1e-3


def test_lora_with_warmup_1_equals_the_reference(runs, lora_dir, one_thread):
    out = runs["lora-async"]
    ref = _variants.reference("t2v", out["stats"][0]["ranges"], 1, "lora", lora_dir)[0]
    assert maxdiff(out["frames"][0], ref) <= 1e-4


def test_ip_adapter_scale_changes_between_calls_reach_every_rank(runs, one_thread):
    expected = _variants.sequential("t2v", "ip-adapter", None, IP_CHANGES)
    frames = runs["ip-adapter"]["frames"]
    assert all(maxdiff(a, b) <= 1e-5 for a, b in zip(frames, expected))
    assert maxdiff(expected[0], expected[1]) > 1e-3


def test_pag_perturbs_layers_of_the_worker_stage(runs):
    """The exact PAG run above is only meaningful if PAG's layers (``up_blocks.1``) ran on the worker."""
    from asyncvid.catalog.variants import build_variant
    from asyncvid.models import adapter_for

    pipe = build_variant("pag")
    names = [u.name for u in adapter_for(pipe.unet).units()]
    (_, _), (a, b) = runs["pag-exact"]["stats"][0]["ranges"]
    assert any(n.startswith("up_blocks.1.attentions") for n in names[a:b])
    assert pipe.pag_applied_layers == ["up_blocks.1"]

"""Classifier-free-guidance parallelism: ``cfg`` stage groups side by side, one per part of the
guidance batch (``engine/guidance.py``).

cfg with one stage per group is exact: it equals the untouched pipeline. With two stages per group
each group runs the asynchronous recurrence on its part; the branches are independent, so the whole
equals the reference recurrence applied to the whole batch. PAG's processors cut the batch into
their own branches: each group gets processors for the branches it holds (``models/pag_parts.py``).
"""

from __future__ import annotations

import pytest

import _variants
from asyncvid.catalog.variants import build_variant

pytestmark = pytest.mark.multiprocess

NO_GUIDANCE = {"guidance_scale": 1.0}
SPLIT_MID = [["conv_in", "down_blocks"], ["mid_block", "up_blocks", "conv_out"]]
ONE_STAGE = dict(stages=1, cfg=2)
TWO_STAGES = dict(stages=2, cfg=2, warmup=1, split=SPLIT_MID)
EXACT_KINDS = ("t2v", "sdxl", "controlnet", "svd", "pag")
ASYNC_KINDS = ("t2v", "controlnet", "svd", "pag")


LORA_CHANGES = (None, "lora-scale")


def jobs(lora_dir: str) -> dict:
    two = {f"{kind}-cfg2": ("_variants.render_variant", (kind, ONE_STAGE)) for kind in EXACT_KINDS}
    # module state reaches the other group too: an IP-Adapter (its image embeddings cut with the batch)
    # and a LoRA whose scale changes between calls
    two["ip-adapter-cfg2"] = ("_variants.render_variant", ("t2v", ONE_STAGE, "ip-adapter"))
    two["lora-cfg2"] = ("_variants.render_variant", ("t2v", ONE_STAGE, "lora", lora_dir, LORA_CHANGES))
    two["pag-unguided-cfg2"] = ("_variants.render_variant", ("pag", ONE_STAGE, None, None, (None,), None, NO_GUIDANCE))
    two["no-guidance"] = ("_variants.render_without_guidance", ("t2v", ONE_STAGE))
    two["undo"] = ("_variants.undo_after", ("t2v", ONE_STAGE))
    three = {"pag-cfg3": ("_variants.render_variant", ("pag", dict(stages=1, cfg=3)))}
    four = {f"{kind}-2x2": ("_variants.render_variant", (kind, TWO_STAGES)) for kind in ASYNC_KINDS}
    four["t2v-2x2-stride2"] = ("_variants.render_variant", ("t2v", dict(TWO_STAGES, stride=2)))
    return {2: two, 3: three, 4: four}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return _variants.lora_file(str(tmp_path_factory.mktemp("lora")))


@pytest.fixture(scope="module")
def runs(lora_dir):
    return _variants.run_groups(jobs(lora_dir))


maxdiff = _variants.maxdiff


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_cfg2_with_one_stage_equals_the_untouched_pipeline(runs, kind, one_thread):
    out = runs[f"{kind}-cfg2"]
    assert maxdiff(out["frames"][0], _variants.sequential(kind)[0]) <= 1e-5
    # both groups computed every step: rank 1 really ran its part
    assert [s["steps_executed"] for s in out["stats"]] == [_variants.STEPS] * 2


def test_ip_adapter_embeddings_are_cut_with_the_batch(runs, one_thread):
    expected = _variants.sequential("t2v", "ip-adapter")[0]
    assert maxdiff(runs["ip-adapter-cfg2"]["frames"][0], expected) <= 1e-5
    assert maxdiff(expected, _variants.sequential("t2v")[0]) > 1e-3  # the adapter matters


def test_a_lora_scale_change_reaches_the_other_group(runs, lora_dir, one_thread):
    expected = _variants.sequential("t2v", "lora", lora_dir, LORA_CHANGES)
    frames = runs["lora-cfg2"]["frames"]
    assert all(maxdiff(a, b) <= 1e-5 for a, b in zip(frames, expected))
    assert maxdiff(expected[0], expected[1]) > 1e-3


def test_pag_with_guidance_on_two_groups_puts_the_perturbed_branch_alone(runs, one_thread):
    assert runs["pag-cfg2"]["stats"][0]["shares"] == [2, 1]  # (unconditional, conditional) | (perturbed)


def test_pag_with_guidance_on_three_groups_is_one_branch_each(runs, one_thread):
    out = runs["pag-cfg3"]
    assert out["stats"][0]["shares"] == [1, 1, 1]
    assert maxdiff(out["frames"][0], _variants.sequential("pag")[0]) <= 1e-5


def test_pag_without_guidance_splits_conditional_and_perturbed(runs, one_thread):
    out = runs["pag-unguided-cfg2"]
    assert out["stats"][0]["shares"] == [1, 1]
    expected = _variants.sequential("pag", overrides=NO_GUIDANCE)[0]
    assert maxdiff(out["frames"][0], expected) <= 1e-5
    assert maxdiff(expected, _variants.sequential("pag")[0]) > 1e-3  # guidance on or off: another video


@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_cfg2_with_two_stages_equals_the_reference_recurrence_of_each_part(runs, kind, one_thread):
    out = runs[f"{kind}-2x2"]
    ranges = out["stats"][0]["ranges"]
    assert maxdiff(out["frames"][0], _variants.reference(kind, ranges, warmup=1)[0]) <= 1e-4
    assert maxdiff(out["frames"][0], _variants.sequential(kind)[0]) > 1e-3


def test_stride_2_reuses_the_merged_prediction(runs, one_thread):
    from reference import AsyncReference

    out = runs["t2v-2x2-stride2"]
    pipe = _variants.prepared("t2v")
    AsyncReference(pipe, out["stats"][0]["ranges"], warmup=1, stride=2).install()
    expected = _variants.frames_of(pipe, "t2v")[0]
    assert maxdiff(out["frames"][0], expected) <= 1e-4
    executed = [s["steps_executed"] for s in out["stats"]]
    assert executed[0] == executed[2] < _variants.STEPS  # both groups skipped the same steps


def test_guidance_bytes_are_the_parts_latents_and_predictions(runs):
    pipe = build_variant("t2v")
    call = _variants.call_of("t2v")
    side = call["height"] // pipe.vae_scale_factor
    half_latent = pipe.unet.config.in_channels * call["num_frames"] * side * side * 4  # float32, batch 1
    for name, ranks in (("t2v-cfg2", (0, 1)), ("t2v-2x2", (0, 2))):
        stats = runs[name]["stats"]
        driver, peer = stats[ranks[0]], stats[ranks[1]]
        assert driver["traffic"]["guidance_bytes"] == _variants.STEPS * half_latent  # latent part out
        assert peer["traffic"]["guidance_bytes"] == _variants.STEPS * half_latent  # prediction part back
    # stage workers never see guidance traffic; in 2x2 the activations cross each group's cut
    stats = runs["t2v-2x2"]["stats"]
    assert stats[1]["traffic"]["guidance_bytes"] == stats[3]["traffic"]["guidance_bytes"] == 0
    assert stats[0]["traffic"]["activation_bytes"] == stats[2]["traffic"]["activation_bytes"] > 0


def test_svd_parts_carry_the_image_latents(runs):
    """SVD's denoiser input is the latent with the image latents concatenated (8 channels); its
    prediction has 4: what goes out is twice what comes back."""
    stats = runs["svd-cfg2"]["stats"]
    assert stats[0]["traffic"]["guidance_bytes"] == 2 * stats[1]["traffic"]["guidance_bytes"] > 0


def test_each_group_holds_one_copy_of_its_stage(runs):
    stats = runs["t2v-2x2"]["stats"]
    held = [s["held"] for s in stats]
    assert held[0] == held[2] and held[1] == held[3] and held[0] != held[1]


def test_a_call_without_a_guidance_batch_is_one_line_and_the_pipeline_serves_on(runs, one_thread):
    out = runs["no-guidance"]
    assert "cfg=2" in out["error"] and "batch 1" in out["error"] and "\n" not in out["error"]
    assert maxdiff(out["frames"][0], _variants.sequential("t2v")[0]) <= 1e-5


def test_undo_gives_rank_0_the_plain_pipeline_back(runs, one_thread):
    expected = _variants.sequential("t2v")[0]
    parallel, alone = runs["undo"]["frames"]
    assert maxdiff(parallel, expected) <= 1e-5 and maxdiff(alone, expected) <= 1e-5

"""Wan pipelines (``WanTransformer3DModel``) through ``parallelize``: text-to-video, Wan 2.1
image-to-video (CLIP image tokens) and Wan 2.2 TI2V (one timestep per token).

Wan calls its transformer twice per step (prompt, then negative prompt), so every step has call tags
0 and 1, each with its own stale stage outputs. With warm-up covering every step the output equals
the untouched pipeline; with warm-up 1 it equals an independent reference recurrence that keeps the
two calls apart (``tests/helpers/reference_tags.py``) and differs from the sequential output. Each
rank holds only its stage's blocks plus the shared modules, and sends exactly the token sequence
(or, the last stage, the prediction) per call.
"""

from __future__ import annotations

import math

import pytest

import _variants
import _wan
from asyncvid.catalog.wan import build_wan_pipeline, wan_call
from asyncvid.models import adapter_for

pytestmark = pytest.mark.multiprocess

KINDS = ("t2v", "i2v", "ti2v", "experts")
SPLIT2 = [["patch_embedding", "blocks.0", "blocks.1"], ["blocks.2", "blocks.3", "proj_out"]]
SPLIT3 = [["patch_embedding", "blocks.0"], ["blocks.1", "blocks.2"], ["blocks.3", "norm_out"]]
STEPS = _wan.STEPS
CALLS = [(s, c) for s in range(STEPS) for c in (0, 1)]  # (step, call position): prompt, then negative prompt
EXPERT_CALLS = [(s, c) for s in range(4) for c in (0, 1)]  # experts: steps 0-1 the first, 2-3 the second
#: the auto split profiled at the call's own latent (1 x 3 frames x 4x4): the plan's cut sizes are the call's
PROFILE = dict(frames=3, height=4, width=4, batch=1)


def jobs(folders: dict) -> dict:
    two = {}
    for kind in KINDS:
        two[f"{kind}-exact"] = ("_wan.render", (kind, dict(stages=2, warmup=STEPS, split=SPLIT2)))
        two[f"{kind}-async"] = ("_wan.render", (kind, dict(stages=2, warmup=1, split=SPLIT2)))
    two["t2v-stride2"] = ("_wan.render", ("t2v", dict(stages=2, warmup=1, stride=2, time_shift=True, split=SPLIT2)))
    two["undo"] = ("_wan.render_then_undo", ("t2v", dict(stages=2, warmup=STEPS, split=SPLIT2)))
    two["experts-exact"] = ("_wan.render", ("experts", dict(stages=2, warmup=4, split=SPLIT2)))
    two["experts-async"] = ("_wan.render", ("experts", dict(stages=2, warmup=1, split=SPLIT2)))
    two["experts-undo"] = ("_wan.render_then_undo", ("experts", dict(stages=2, warmup=1, split=SPLIT2)))
    # CFG groups: the prompt's call on rank 0, the negative prompt's on rank 1, side by side
    two["t2v-cfg"] = ("_wan.render", ("t2v", dict(stages=1, cfg=2)))
    two["i2v-cfg"] = ("_wan.render", ("i2v", dict(stages=1, cfg=2)))
    for kind, folder in folders.items():  # stage-only loading from a saved folder, the "-async" options
        two[f"{kind}-stage-only"] = ("_wan.render_stage_only", (kind, folder, dict(stages=2, warmup=1, split=SPLIT2)))
    three = {"t2v-async-3": ("_wan.render", ("t2v", dict(stages=3, warmup=1, split=SPLIT3))),
             "t2v-auto-3": ("_wan.render", ("t2v", dict(stages=3, warmup=1, split="auto", profile_shape=PROFILE))),
             "experts-async-3": ("_wan.render", ("experts", dict(stages=3, warmup=1, split=SPLIT3)))}
    return {2: two, 3: three}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folders = {}
    for kind in ("t2v", "i2v"):
        folders[kind] = str(tmp_path_factory.mktemp(f"wan-{kind}"))
        build_wan_pipeline(kind, seed=0).save_pretrained(folders[kind], safe_serialization=True)
    return _variants.run_groups(jobs(folders))


maxdiff = _variants.maxdiff


def sizes(kind: str = "t2v") -> dict:
    """Bytes of the token sequence (what crosses a cut) and of the prediction, for the tests' call."""
    pipe = build_wan_pipeline(kind)
    call, cfg = wan_call(kind, pipe), pipe.transformer.config
    latent = ((call["num_frames"] - 1) // 4 + 1, call["height"] // 8, call["width"] // 8)
    tokens = math.prod(n // p for n, p in zip(latent, cfg.patch_size))
    return {"hidden": tokens * cfg.num_attention_heads * cfg.attention_head_dim * 4,
            "sample": cfg.in_channels * math.prod(latent) * 4,
            "eps": cfg.out_channels * math.prod(latent) * 4, "text": call["max_sequence_length"] * cfg.text_dim * 4}


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_covering_every_step_equals_the_untouched_pipeline(runs, kind, one_thread):
    assert maxdiff(runs[f"{kind}-exact"]["frames"], _wan.sequential(kind)) <= 1e-5


@pytest.mark.parametrize("name", ["t2v-async", "i2v-async", "ti2v-async", "t2v-async-3", "t2v-auto-3", "experts-async",
                                  "experts-async-3"])
def test_warmup_1_equals_the_two_call_reference_and_is_asynchronous(runs, name, one_thread):
    """Two experts: each its own recurrence, the second with a fresh warm-up from the switch."""
    out, kind = runs[name], name.split("-")[0]
    expected, calls = _wan.reference(kind, out["stats"][0]["ranges"], warmup=1)
    assert calls == (EXPERT_CALLS if kind == "experts" else CALLS)  # two calls per step, kept apart
    assert maxdiff(out["frames"], expected) <= 1e-4
    assert maxdiff(out["frames"], _wan.sequential(kind)) > 1e-4


def test_stride_2_with_time_shift_equals_the_reference(runs, one_thread):
    """Stride 2: one round serves two steps; the second step reuses each call's own last prediction."""
    out = runs["t2v-stride2"]
    expected, _ = _wan.reference("t2v", out["stats"][0]["ranges"], warmup=1, stride=2, time_shift=True)
    assert maxdiff(out["frames"], expected) <= 1e-4
    assert maxdiff(out["frames"], runs["t2v-async"]["frames"]) > 1e-4
    assert [s["steps_executed"] for s in out["stats"]] == [4, 4]  # steps 0 and 1 run, step 2 reuses: 2 calls each


def test_undo_gives_back_the_whole_plain_pipeline(runs, one_thread):
    out = runs["undo"]
    expected = _wan.sequential("t2v")
    assert maxdiff(out["frames"][0], expected) <= 1e-5 and maxdiff(out["frames"][1], expected) <= 1e-5
    assert out["held"] == sum(p.numel() for p in build_wan_pipeline("t2v").transformer.parameters())


def test_mixing_the_two_calls_up_would_give_another_video(runs, one_thread):
    """The reference comparison above tells the calls apart: one stream for both calls (the negative
    prompt's call consuming the prompt's stale outputs) is another recurrence, another video."""
    out = runs["t2v-async"]
    mixed, _ = _wan.reference("t2v", out["stats"][0]["ranges"], warmup=1, one_stream=True)
    assert maxdiff(out["frames"], mixed) > 1e-4


def test_each_call_of_a_step_has_its_own_stream_on_every_rank(runs):
    for name in ("t2v-async", "t2v-async-3"):
        assert [s["streams"] for s in runs[name]["stats"]] == [[0, 1]] * len(runs[name]["stats"])
        assert [s["steps_executed"] for s in runs[name]["stats"]] == [len(CALLS)] * len(runs[name]["stats"])


@pytest.mark.parametrize("name", ["t2v-async", "t2v-async-3", "i2v-async"])
def test_each_rank_holds_its_stage_and_the_shared_modules_only(runs, name):
    model = build_wan_pipeline(name.split("-")[0]).transformer
    adapter = adapter_for(model)
    count = lambda path: sum(p.numel() for p in model.get_submodule(path).parameters())  # noqa: E731
    shared = sum(count(m) for m in adapter.shared_modules) + model.scale_shift_table.numel()  # head table: loose
    units = adapter.units()
    stats = runs[name]["stats"]
    for stage, (a, b) in enumerate(stats[0]["ranges"]):
        assert stats[stage]["held"] == shared + sum(count(m) for u in units[a:b] for m in u.modules)
    # every block's parameters are held by exactly one rank
    assert sum(s["held"] - shared for s in stats) == sum(p.numel() for p in model.parameters()) - shared


@pytest.mark.parametrize("name", ["t2v-async", "t2v-async-3", "t2v-exact"])
def test_bytes_per_call_are_the_token_sequence_per_cut(runs, name):
    """Stage k < N-1 sends the (tokens x width) sequence every call but those of the last parallel
    round (nobody consumes them); the last stage sends the prediction every call."""
    size, stats = sizes(), runs[name]["stats"]
    last_round = len(CALLS) - 2 if name.endswith(("async", "async-3")) else len(CALLS)
    senders = [[size["hidden"] if i < last_round else 0 for i in range(len(CALLS))]] * (len(stats) - 1)
    assert [s["traffic"]["activation_bytes_per_step"] for s in stats] == senders + [[size["eps"]] * len(CALLS)]
    assert all(s["traffic"]["activation_bytes"] == sum(s["traffic"]["activation_bytes_per_step"]) for s in stats)


def test_each_call_s_text_embedding_travels_once_per_pipeline_call(runs):
    """The prompt's and the negative prompt's embeddings (call tags 0 and 1) reach each worker once,
    not once per step."""
    stats = runs["t2v-async-3"]["stats"]
    assert stats[0]["traffic"]["conditioning_bytes"] == 2 * (len(stats) - 1) * sizes()["text"]


def test_auto_split_plans_the_cut_sizes_it_then_sends(runs):
    stats = runs["t2v-auto-3"]["stats"]
    assert stats[0]["plan_cut_bytes"] == [sizes()["hidden"]] * 2
    assert [s["traffic"]["activation_bytes_per_step"][0] for s in stats[:2]] == stats[0]["plan_cut_bytes"]


@pytest.mark.parametrize("name", ["experts-async", "experts-async-3"])
def test_two_experts_each_rank_holds_its_stage_of_both_and_runs_both(runs, name):
    pipe = build_wan_pipeline("experts")
    stats = runs[name]["stats"]
    for model, which in ((pipe.transformer, 0), (pipe.transformer_2, 1)):
        adapter = adapter_for(model)
        count = lambda path: sum(p.numel() for p in model.get_submodule(path).parameters())  # noqa: E731
        shared = sum(count(m) for m in adapter.shared_modules) + model.scale_shift_table.numel()
        units = adapter.units()
        for stage, (a, b) in enumerate(stats[0]["ranges"]):
            assert stats[stage]["held_each"][which] == shared + sum(count(m) for u in units[a:b] for m in u.modules)
    assert all(s["steps_each"] == [4, 4] for s in stats)  # two steps x two calls per expert, on every rank


def test_two_experts_undo_gives_back_both(runs, one_thread):
    out = runs["experts-undo"]
    expected, _ = _wan.reference("experts", [(0, 3), (3, 6)], warmup=1)
    assert maxdiff(out["frames"][0], expected) <= 1e-4
    assert maxdiff(out["frames"][1], _wan.sequential("experts")) <= 1e-5


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_cfg_2_runs_the_two_calls_side_by_side_exactly(runs, kind, one_thread):
    """cfg=2, one stage per group: each call whole on its own rank, the second started while the
    first runs (every step but the first of the pass, whose negative prompt is not known yet)."""
    out = runs[f"{kind}-cfg"]
    assert maxdiff(out["frames"], _wan.sequential(kind)) <= 1e-5
    driver, other = out["stats"]
    assert driver["started_early"] == STEPS - 1
    assert driver["streams"] == [0] and other["streams"] == [1]  # each rank computed one call of every step
    assert driver["steps_executed"] == other["steps_executed"] == STEPS
    # what went to rank 1 and back: the latent out and the prediction back per step, the negative
    # prompt's embedding once
    size = sizes(kind)
    assert driver["traffic"]["guidance_bytes"] == STEPS * size["sample"]
    assert other["traffic"]["guidance_bytes"] == STEPS * size["eps"]
    if kind == "t2v":
        assert driver["traffic"]["conditioning_bytes"] == size["text"]


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_stage_only_loading_reads_only_the_stage_and_renders_the_same_video(runs, kind):
    """``AsyncWanPipeline.from_pretrained``: every rank materialises its stage, the shared modules and
    the head's table, nothing else, and the video is the one
    ``parallelize`` gives on the whole pipeline with the same options."""
    out, same = runs[f"{kind}-stage-only"], runs[f"{kind}-async"]
    assert [s["held"] for s in out["stats"]] == [s["held"] for s in same["stats"]]
    total = sum(p.numel() for p in build_wan_pipeline(kind).transformer.parameters())
    assert all(s["held"] < total for s in out["stats"])
    assert maxdiff(out["frames"], same["frames"]) <= 1e-6

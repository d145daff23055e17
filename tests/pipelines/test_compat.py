"""What users stack on a pipeline, through parallelize (``docs/compatibility.md``): torch.compile in its
three forms, exact and without recompilation; diffusers' FirstBlockCache run across the stages (exact
with sequential steps, decisions travelling with the state otherwise); the other caches and
offloading refused in one line before any work, on every rank."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

import _compat as C
from asyncvid import launch_local
from asyncvid.catalog.wan import build_wan_pipeline
from asyncvid.errors import AsyncVidError, RankFailure
from asyncvid.pipelines.parallel import parallelize
from reference import memo

EXACT = dict(stages=2, warmup=3)  # warm-up >= the 3 steps: every step sequential, so equal to one process
COMPILE = {"backend": C.BACKEND}
JOBS = {
    "unet whole": ("_compat.staged", ("animatediff", "whole", EXACT)),
    "unet option": ("_compat.staged", ("animatediff", "none", dict(EXACT, compile=COMPILE))),
    "unet async": ("_compat.staged", ("animatediff", "none", dict(stages=2, warmup=1, compile=COMPILE))),
    "unet async eager": ("_compat.staged", ("animatediff", "none", dict(stages=2, warmup=1))),
    "wan repeated": ("_compat.staged", ("wan", "repeated", EXACT)),
    "fbc exact": ("_compat.cached_staged", (C.FBC, dict(stages=2, warmup=C.CACHE_STEPS))),
    "fbc async": ("_compat.cached_staged", (C.FBC, dict(stages=2, warmup=1))),
    "mag exact": ("_compat.cached_staged", (C.MAG, dict(stages=2, warmup=C.CACHE_STEPS))),
    "mag async": ("_compat.cached_staged", (C.MAG, dict(stages=2, warmup=1))),
    "layerwise": ("_compat.layerwise_staged", (EXACT,)),
}


multiprocess = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    import _variants

    return _variants.lora_file(str(tmp_path_factory.mktemp("lora")))


@pytest.fixture(scope="module")
def runs(lora_dir):
    import _workers

    jobs = dict(JOBS, lora=("_compat.lora_changes_after_parallelize", (lora_dir, dict(stages=2, warmup=1))))
    return dict(zip(jobs, launch_local(_workers.run_many, 2, list(jobs.values()), timeout=900)))


@memo
def sequential(kind: str, how: str):
    torch.set_num_threads(1)
    return C.sequential(kind, how)


@multiprocess
@pytest.mark.parametrize("name, kind, how", [("unet whole", "animatediff", "whole"),
                                             ("unet option", "animatediff", "whole"),
                                             ("wan repeated", "wan", "repeated")])
def test_compiled_stages_equal_the_compiled_pipeline(runs, name, kind, how):
    expected = sequential(kind, how)
    for got, want in zip(runs[name]["frames"], expected):
        assert float(np.abs(np.asarray(got) - np.asarray(want)).max()) <= 1e-4


@multiprocess
@pytest.mark.parametrize("name", ["unet whole", "unet option", "unet async", "wan repeated"])
def test_every_rank_compiles_once_and_never_again(runs, name):
    for rank, (before, first, second) in enumerate(runs[name]["graphs"]):
        assert first > before, f"rank {rank} compiled nothing"
        assert second == first, f"rank {rank} recompiled in its second call ({first} -> {second} graphs)"


@multiprocess
def test_eager_stages_compile_nothing(runs):
    assert all(before == first == second for before, first, second in runs["unet async eager"]["graphs"])


@multiprocess
def test_compiled_asynchronous_stages_equal_eager_ones(runs):
    """compile= changes how each rank computes, not what: the asynchronous recurrence is the same."""
    for got, want in zip(runs["unet async"]["frames"], runs["unet async eager"]["frames"]):
        assert float(np.abs(np.asarray(got) - np.asarray(want)).max()) <= 1e-4
    assert float(np.abs(np.asarray(runs["unet async"]["frames"][0]) - np.asarray(sequential("animatediff", "whole")[0])).max()) > 1e-3


CACHES = ["TaylorSeerCacheConfig", "PyramidAttentionBroadcastConfig",
          "FasterCacheConfig"]


def _cache_config(name: str):
    if name == "PyramidAttentionBroadcastConfig":
        return diffusers.PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: 500)
    if name == "FasterCacheConfig":
        return diffusers.FasterCacheConfig(current_timestep_callback=lambda: 500)
    return getattr(diffusers, name)()


@pytest.mark.parametrize("name", CACHES)
def test_a_cache_is_refused_in_one_line_before_any_work(name):
    pipe = build_wan_pipeline("t2v", seed=0)
    pipe.transformer.enable_cache(_cache_config(name))
    with pytest.raises(AsyncVidError, match=rf"^{name} on pipe.transformer \(WanTransformer3DModel\) does not combine") as err:
        parallelize(pipe, stages=2)  # raises before the process group is even created
    assert "\n" not in str(err.value) and "disable_cache()" in str(err.value)


def test_group_offloading_is_refused_in_one_line():
    pipe = build_wan_pipeline("t2v", seed=0)
    cpu = torch.device("cpu")
    pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level",
                                          num_blocks_per_group=1)
    with pytest.raises(AsyncVidError, match=r"^group offloading \(enable_group_offload\) on pipe.transformer"):
        parallelize(pipe, stages=2)


@multiprocess
def test_a_cache_on_two_ranks_stops_both_with_one_line():
    with pytest.raises(RankFailure, match=r"TaylorSeerCacheConfig on pipe.transformer") as err:
        launch_local(C.with_cache, 2, "TaylorSeerCacheConfig", timeout=120)
    assert "\n" not in str(err.value) and "GLHF" not in str(err.value)


@memo
def cached_sequential(threshold):
    torch.set_num_threads(1)
    return C.cached_sequential(threshold)


@multiprocess
def test_first_block_cache_with_sequential_stages_equals_the_cache_alone(runs):
    cached, full_calls = cached_sequential(C.FBC)
    plain, _ = cached_sequential(None)
    assert float(np.abs(cached - plain).max()) > 1e-4  # the cache skipped something
    run = runs["fbc exact"]
    assert float(np.abs(run["frames"] - cached).max()) <= 1e-4
    calls = 2 * C.CACHE_STEPS  # Wan: the prompt's call and the negative prompt's, per step
    for counts in run["counts"]:  # every stage skips exactly where diffusers' cache skipped the blocks
        assert (counts["skipped"], counts["computed"]) == (calls - full_calls, full_calls)
    assert run["restored"] is True  # undo gives the cache back to diffusers


@multiprocess
def test_first_block_cache_stages_skip_together_in_parallel_rounds(runs):
    """Asynchronous: the warm-up round applies its own decision; every later round, on every stage,
    the one the driver's first block measured in the round before (carried by the step message)."""
    driver, worker = runs["fbc async"]["counts"]
    assert set(driver["decisions"]) == {0, 1}
    for tag, measured in driver["measured"].items():
        assert len(measured) == C.CACHE_STEPS and any(measured[:-1]) and not measured[0]
        assert driver["decisions"][tag] == (measured[0], *measured[:-1])
        assert worker["decisions"][tag] == driver["decisions"][tag]
    assert worker["skipped"] == driver["skipped"] > 0
    assert float(np.abs(runs["fbc async"]["frames"] - cached_sequential(C.FBC)[0]).max()) > 1e-4


@multiprocess
def test_lora_weights_changed_after_parallelize_are_refused_in_one_line_and_the_next_call_works(runs):
    """set_adapters scales travel to every rank (tests/pipelines/test_every_pipeline.py); fused or newly
    loaded LoRA weights would not: the call after such a change is refused, the workers stay in step."""
    out = runs["lora"]
    for change, what in (("fused", "['motion']"), ("loaded", "")):
        assert isinstance(out[change], str) and "\n" not in out[change]
        assert "changed after parallelize" in out[change] and what in out[change]
    for later in ("unfused", "deleted"):
        assert float(np.abs(np.asarray(out[later]) - np.asarray(out["first"])).max()) <= 1e-4


@multiprocess
def test_layerwise_casting_runs_on_every_rank_and_equals_the_cast_pipeline(runs):
    """enable_layerwise_casting's hooks sit on the blocks' own layers, so each rank's stage keeps them:
    float8 weights held on every rank, computed in float32, equal to the one-process run."""
    torch.set_num_threads(1)
    run = runs["layerwise"]
    assert float(np.abs(run["frames"] - C.layerwise_sequential()).max()) <= 1e-4
    for held_bytes, held_params in run["held"]:
        assert held_bytes < 4 * held_params  # some of it float8 (1 byte per weight), not all float32 (4)


@multiprocess
def test_first_block_cache_on_one_stage_equals_the_cache_alone():
    """One stage has no one to skip with: it applies what it measures in every round, as diffusers does."""
    cached, full_calls = cached_sequential(C.FBC)
    run = launch_local(C.cached_staged, 1, C.FBC, dict(stages=1))
    assert float(np.abs(run["frames"] - cached).max()) <= 1e-4
    assert run["counts"][0]["computed"] == full_calls and run["restored"] is True


def test_a_cache_with_two_experts_is_refused_in_one_line():
    from asyncvid.catalog.wan import build_wan_pipeline as build

    pipe = build("experts", seed=0)
    pipe.transformer.enable_cache(diffusers.FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(AsyncVidError, match=r"^FirstBlockCacheConfig with two experts .* disable_cache\(\) on both"):
        parallelize(pipe, stages=2)


def test_accelerate_hooks_are_refused_in_one_line():
    from accelerate.hooks import ModelHook, add_hook_to_module

    pipe = build_wan_pipeline("t2v", seed=0)
    add_hook_to_module(pipe.transformer.blocks[1], ModelHook())  # what cpu offloading and device maps attach
    with pytest.raises(AsyncVidError, match=r"^accelerate hooks .* on pipe.transformer \(WanTransformer3DModel\) at blocks.1 "):
        parallelize(pipe, stages=2)


def test_quantized_weights_are_refused_in_one_line():
    pipe = build_wan_pipeline("t2v", seed=0)
    pipe.transformer.hf_quantizer = object()  # what diffusers' quantized loading sets on the model
    with pytest.raises(AsyncVidError, match=r"^quantized weights on pipe.transformer"):
        parallelize(pipe, stages=2)


@multiprocess
def test_mag_cache_with_sequential_stages_equals_the_cache_alone(runs):
    cached, full_calls = cached_sequential(C.MAG)
    assert full_calls < 2 * C.CACHE_STEPS  # it skipped some calls' blocks
    run = runs["mag exact"]
    assert float(np.abs(run["frames"] - cached).max()) <= 1e-4
    for counts in run["counts"]:
        assert (counts["skipped"], counts["computed"]) == (2 * C.CACHE_STEPS - full_calls, full_calls)


@multiprocess
def test_mag_cache_stages_decide_alike_in_every_round(runs):
    """MagCache's rule reads the call count only: every stage takes the same decision for the same
    round by itself (the first step kept, then three skipped, one computed, per call tag)."""
    driver, worker = runs["mag async"]["counts"]
    for tag in (0, 1):
        assert driver["decisions"][tag] == worker["decisions"][tag] == (False, True, True, True, False, True)
    assert float(np.abs(runs["mag async"]["frames"] - cached_sequential(C.MAG)[0]).max()) > 1e-4


def test_mag_cache_calibration_is_refused_in_one_line():
    pipe = build_wan_pipeline("t2v", seed=0)
    pipe.transformer.enable_cache(diffusers.MagCacheConfig(calibrate=True, num_inference_steps=3))
    with pytest.raises(AsyncVidError, match=r"^MagCacheConfig\(calibrate=True\) with asyncvid: calibrate on the untouched"):
        parallelize(pipe, stages=2)

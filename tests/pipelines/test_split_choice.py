"""Choosing a split does not depend on the model's config giving a sample size."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from asyncvid.catalog.presets import build_svd_pipeline
from asyncvid.distributed.topology import Topology
from asyncvid.models import adapter_for
from asyncvid.pipelines.parallel import ProfileShape, choose_split

SPLIT2 = [["conv_in", "down_blocks", "mid_block", "up_blocks.0"], ["up_blocks.1", "conv_out"]]


@pytest.mark.parametrize("sample_size,expected", [(None, (64, 64)), (16, (16, 16)), ((12, 20), (12, 20))])
def test_svd_unet_with_any_sample_size(sample_size, expected):
    config = dict(build_svd_pipeline("tiny", seed=0).unet.config, sample_size=sample_size)
    unet = UNetSpatioTemporalConditionModel.from_config(config)
    assert ProfileShape().latent_size(unet.config.sample_size) == expected
    topo = Topology(stages=2, cfg_degree=1, rank=0, world_size=1)
    shape = ProfileShape(frames=2, batch=1)
    plan = choose_split(adapter_for(unet), SPLIT2, 2, topo, torch.device("cpu"), shape, torch.float32)
    h, w = expected
    # the cut after up_blocks.0: its upsampled output (64 ch) and two skips (32 ch) at full latent size
    assert plan.cut_bytes == [2 * (64 + 2 * 32) * h * w * 4]


@pytest.mark.parametrize("kind", ["controlnet", "sparsectrl", "v2v-controlnet"])
def test_the_auto_split_counts_the_driver_controlnet(kind, one_thread):
    from asyncvid.catalog.variants import build_variant
    from asyncvid.pipelines.driver_work import controlnet_seconds, driver_seconds

    pipe = build_variant(kind)
    assert controlnet_seconds(pipe, 2, 4, 8, 8, torch.device("cpu"), torch.float32) > 0
    assert controlnet_seconds(build_variant("t2v"), 2, 4, 8, 8, torch.device("cpu"), torch.float32) == 0
    topo = Topology(stages=2, cfg_degree=1, rank=0, world_size=1)
    shape = ProfileShape(frames=4, height=8, width=8, batch=2)
    adapter = adapter_for(pipe.unet)

    def work(*shape_args):
        return driver_seconds(pipe, adapter, *shape_args)

    plan = choose_split(adapter, "auto", 2, topo, torch.device("cpu"), shape, torch.float32, driver_work=work)
    assert "ControlNet" in plan.source and "counted on stage 0" in plan.source
    # a driver busy for as long as the whole UNet gets the smallest stage
    heavy = choose_split(adapter, "auto", 2, topo, torch.device("cpu"), shape, torch.float32,
                         driver_work=lambda *a: (10.0, "a slow driver"))
    assert heavy.ranges[0] == (0, 1)


@pytest.mark.parametrize("kind", ["t2v", "svd"])
def test_the_pipeline_s_own_step_is_timed_without_the_denoiser(kind, one_thread):
    """The driver's own per-step work (scheduler, guidance, callbacks) is measured with the denoiser
    replaced by a zero prediction through a named hook, which is gone afterwards; the caller's random
    state is untouched. The auto split then counts it on stage 0."""
    from diffusers.hooks import HookRegistry

    from asyncvid.catalog.variants import build_variant
    from asyncvid.pipelines.driver_work import driver_seconds, pipeline_step_seconds

    pipe = build_variant(kind)
    adapter = adapter_for(pipe.unet)
    calls = []
    pipe.unet.conv_in.register_forward_pre_hook(lambda *a: calls.append(1))  # runs in any real forward
    rng = torch.random.get_rng_state()
    step = pipeline_step_seconds(pipe, adapter, frames=4, h=8)
    assert step > 0 and calls == []  # the denoiser never ran
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert "asyncvid.zero_denoiser" not in HookRegistry.check_if_exists_or_initialize(pipe.unet).hooks
    seconds, what = driver_seconds(pipe, adapter, 2, 4, 8, 8, torch.device("cpu"), torch.float32)
    assert seconds > 0 and what.startswith("pipeline step") and "ControlNet" not in what
    # pipelines it cannot call without more inputs are not timed (a ControlNet's own time still is)
    assert pipeline_step_seconds(build_variant("controlnet"), adapter, frames=4, h=8) == 0.0

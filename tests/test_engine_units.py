"""The motion adapter's units reproduce UNetMotionModel.forward; plans and schedules in isolation."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from asyncvid.engine.split import SplitPlan, balanced_ranges, compress_names, ranges_from_names
from asyncvid.engine.schedule import PARALLEL, REUSE, SEQUENTIAL, step_action
from asyncvid.distributed.transport import layout_of, pack, unpack
from asyncvid.models import adapter_for
from asyncvid.catalog.presets import build_animatediff_pipeline


@pytest.fixture(scope="module")
def unet():
    return build_animatediff_pipeline("tiny", seed=0).unet


@pytest.mark.parametrize("shape", [(2, 4, 8, 16, 16), (1, 4, 3, 10, 14)])  # odd sizes force upsample sizes
def test_units_chain_is_bit_exact(unet, shape):
    torch.manual_seed(1)
    x = torch.randn(*shape)
    ehs = torch.randn(shape[0] * shape[2], 7, 32)
    with torch.no_grad():
        ref = unet(x, torch.tensor(500), encoder_hidden_states=ehs).sample
        out = adapter_for(unet).full_forward(x, torch.tensor(500), encoder_hidden_states=ehs).sample
    assert torch.equal(ref, out)


def test_every_cut_survives_pack_unpack(unet):
    adapter = adapter_for(unet)
    x, ehs = torch.randn(2, 4, 8, 16, 16), torch.randn(16, 7, 32)
    call = adapter.split_call((x, torch.tensor(10)), dict(encoder_hidden_states=ehs))
    ctx = adapter.context(x.shape, call.timestep, call.cond)
    with torch.no_grad():
        ref = adapter.full_forward(x, torch.tensor(10), encoder_hidden_states=ehs).sample
        for cut in range(1, len(adapter.units())):
            state = adapter.input_state(x)
            for i, unit in enumerate(adapter.units()):
                if i == cut:
                    tensors = state.tensors()
                    layout = layout_of(tensors)
                    state = type(state).from_tensors(unpack([b.clone() for b in pack(tensors, layout)], layout))
                state = unit.run(ctx, state)
            assert torch.equal(state.h, ref)


def test_conv_in_output_travels_once(unet):
    adapter = adapter_for(unet)
    x = torch.randn(1, 4, 2, 8, 8)
    call = adapter.split_call((x, torch.tensor(10)), dict(encoder_hidden_states=torch.randn(2, 7, 32)))
    ctx = adapter.context(x.shape, call.timestep, call.cond)
    state = adapter.units()[0].run(ctx, adapter.input_state(x))
    assert layout_of(state.tensors()).nbytes() == state.h.numel() * 4


def test_names_resolve_to_contiguous_ranges(unet):
    names = [u.name for u in adapter_for(unet).units()]
    split = [["conv_in", "down_blocks.0"], ["down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1.resnets.0"],
             ["up_blocks.1.attentions.0", "up_blocks.1.motion_modules.0", "up_blocks.1.resnets.1",
              "up_blocks.1.attentions.1", "up_blocks.1.motion_modules.1", "conv_norm_out"]]
    ranges = ranges_from_names(names, split, {"conv_norm_out": "conv_out"})
    assert ranges[0] == (0, 5) and ranges[-1][1] == len(names)
    plan = SplitPlan(names, ranges)
    assert compress_names(plan.stage_units(1), names) == ["down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1.resnets.0"]


def test_balanced_ranges_is_optimal():
    rng = random.Random(0)
    for _ in range(200):
        costs = [rng.random() for _ in range(rng.randint(2, 9))]
        n = rng.randint(1, len(costs))
        best = min(
            max(sum(costs[a:b]) for a, b in zip((0,) + cuts, cuts + (len(costs),)))
            for cuts in itertools.combinations(range(1, len(costs)), n - 1)
        )
        got = balanced_ranges(costs, n)
        assert len(got) == n and all(b > a for a, b in got)
        assert max(sum(costs[a:b]) for a, b in got) == pytest.approx(best)


def test_schedule_stride_two_pairs_steps_and_skips():
    kinds = [step_action(s, 7, warmup=2, stride=2).kind for s in range(7)]
    assert kinds == [SEQUENTIAL, SEQUENTIAL, PARALLEL, REUSE, PARALLEL, REUSE, PARALLEL]
    assert [step_action(s, 7, 2, 2).t_index for s in (2, 4, 6)] == [3, 5, 6]
    assert [step_action(s, 7, 2, 2, time_shift=True).t_index for s in (2, 4, 6)] == [2, 4, 5]
    assert step_action(4, 7, 2, 2).last_round is False and step_action(6, 7, 2, 2).last_round is True
    assert [step_action(s, 4, 1, 1, time_shift=True).t_index for s in range(4)] == [0, 0, 1, 2]

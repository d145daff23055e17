"""The motion adapter's units reproduce UNetMotionModel.forward; every cut survives transport."""

from __future__ import annotations

import pytest
import torch

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

"""AnimateDiff SDXL's motion UNet (added text and time-id conditioning): units bit-exact, cuts sized."""

from __future__ import annotations

import torch
from diffusers import UNetMotionModel

from asyncvid.models import adapter_for
from asyncvid.planner.profile import cut_bytes


def sdxl_motion_unet():
    torch.manual_seed(0)
    return UNetMotionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        cross_attention_dim=32, num_attention_heads=(2, 4), motion_max_seq_length=32,
        motion_num_attention_heads=2,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
        use_linear_projection=True,
    ).eval()


def test_added_conditioning_reaches_every_unit_bit_exactly(one_thread):
    unet = sdxl_motion_unet()
    adapter = adapter_for(unet)
    call = adapter.example_call(2, 4, 8, 8, torch.device("cpu"), torch.float32)
    added = call.cond["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, 32) and added["time_ids"].shape == (2, 6)
    with torch.no_grad():
        ref = unet(call.sample, call.timestep, encoder_hidden_states=call.cond["encoder_hidden_states"],
                   added_cond_kwargs=added).sample
        out = adapter.run_all(call)
        # the added embedding matters: without it the UNet's output is another
        plain = adapter.run_all(type(call)(call.sample, call.timestep, dict(call.cond, added_cond_kwargs={
            "text_embeds": torch.zeros_like(added["text_embeds"]), "time_ids": added["time_ids"]})))
    assert torch.equal(out, ref)
    assert not torch.equal(out, plain)


def test_cut_bytes_of_an_sdxl_motion_unet():
    unet = sdxl_motion_unet()
    adapter = adapter_for(unet)
    sizes = cut_bytes(type(adapter), unet, adapter.example_call(2, 4, 8, 8, torch.device("cpu"), torch.float32))
    assert len(sizes) == len(adapter.units())
    assert sizes[-1] == 2 * 4 * 4 * 8 * 8 * 4  # the prediction

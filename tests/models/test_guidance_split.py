"""Splitting a denoiser call along its guidance batch (the ground work of CFG-parallel stage groups):
the parts' predictions, concatenated, equal the whole call's, for the real calls every pipeline makes."""

from __future__ import annotations

import pytest
import torch

from asyncvid.catalog.variants import build_variant, variant_call
from asyncvid.errors import AsyncVidError
from asyncvid.models import adapter_for


def first_denoiser_call(kind: str):
    """The arguments the ``kind`` pipeline passes to its denoiser at its first step."""
    pipe = build_variant(kind)
    seen = []

    def grab(module, args, kwargs):
        if not seen:
            seen.append((args, kwargs))
        raise StopIteration  # one call is enough

    pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    with pytest.raises(StopIteration):
        pipe(**variant_call(kind, steps=2), generator=torch.Generator().manual_seed(0))
    adapter = adapter_for(pipe.unet)
    return adapter, adapter.split_call(*seen[0])


# Not PAG: its perturbed-attention processors cut the batch into its three branches themselves, so
# a part of one branch cannot run with them; PAG needs per-part processors (issue 13).
@pytest.mark.parametrize("kind,parts", [("t2v", 2), ("sdxl", 2), ("controlnet", 2), ("sparsectrl", 2),
                                        ("v2v-controlnet", 2), ("svd", 2)])
def test_guidance_parts_together_equal_the_whole_batch(kind, parts, one_thread):
    adapter, call = first_denoiser_call(kind)
    assert call.sample.shape[0] == parts  # guidance on: one batch entry per branch
    pieces = adapter.split_batch(call, parts)
    assert [p.sample.shape[0] for p in pieces] == [1] * parts
    with torch.no_grad():
        whole = adapter.run_all(call)
        merged = adapter.merge_predictions([adapter.run_all(p) for p in pieces])
    assert merged.shape == whole.shape
    assert float((merged - whole).abs().max()) <= 1e-5
    # the branches differ: a wrong cut (e.g. the same half twice) would show
    halves = merged.chunk(parts)
    assert float((halves[0] - halves[-1]).abs().max()) > 1e-4
    if call.extras:  # ControlNet residuals are cut with the batch
        assert all(r.shape[0] * parts == w.shape[0] for r, w in zip(
            pieces[0].extras["down_block_additional_residuals"], call.extras["down_block_additional_residuals"]))


def test_an_uneven_split_is_one_line(one_thread):
    adapter, call = first_denoiser_call("t2v")
    with pytest.raises(AsyncVidError, match="cannot be split into 3 equal guidance parts"):
        adapter.split_batch(call, 3)

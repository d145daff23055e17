"""Splitting a denoiser call along its guidance batch (the ground work of CFG-parallel stage groups):
the parts' predictions, concatenated, equal the whole call's, for the real calls every pipeline makes."""

from __future__ import annotations

import pytest
import torch

from asyncvid.catalog.variants import build_variant, variant_call
from asyncvid.errors import AsyncVidError
from asyncvid.models import adapter_for


def first_denoiser_call(kind: str, overrides: dict | None = None):
    """The arguments the ``kind`` pipeline passes to its denoiser at its first step."""
    pipe = build_variant(kind)
    seen = []

    def grab(module, args, kwargs):
        if not seen:
            seen.append((args, kwargs))
        raise StopIteration  # one call is enough

    pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    with pytest.raises(StopIteration):
        pipe(**dict(variant_call(kind, steps=2), **(overrides or {})), generator=torch.Generator().manual_seed(0))
    adapter = adapter_for(pipe.unet)
    return adapter, adapter.split_call(*seen[0])


# PAG is below: its perturbed-attention processors cut the batch into its branches themselves.
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
    with pytest.raises(AsyncVidError, match="cannot be split into 3 guidance parts"):
        adapter.split_batch(call, 3)


@pytest.mark.parametrize("guidance,degree,shares", [(7.5, 2, [2, 1]), (7.5, 3, [1, 1, 1]), (1.0, 2, [1, 1])])
def test_pag_parts_with_their_own_processors_equal_the_whole_batch(guidance, degree, shares, one_thread):
    """Each part runs with processors for the branches it holds (plain attention, or identity attention
    for the perturbed branch alone); together they equal PAG's own processors on the whole batch."""
    seen = {}
    adapter, call = first_denoiser_call("pag", {"guidance_scale": guidance})
    setup = adapter.module_setup()  # PAG's processors were in place at the first call; the hook kept them
    layout_shares, setups = adapter.guidance_layout(setup, degree)
    assert layout_shares == shares and call.sample.shape[0] == sum(shares)
    with torch.no_grad():
        whole = adapter.run_all(call)
        parts = []
        for part, part_setup in zip(adapter.split_batch(call, shares), setups):
            with adapter.module_setup_applied(part_setup):
                parts.append(adapter.run_all(part))
            seen.setdefault("restored", adapter.module_setup() == setup)
        merged = adapter.merge_predictions(parts)
    assert float((merged - whole).abs().max()) <= 1e-5
    assert seen["restored"]  # the pipeline's processors are back after each part
    # the perturbed part alone, with plain attention, would be another prediction
    with torch.no_grad(), adapter.module_setup_applied(setups[0]):
        plain_last = adapter.run_all(adapter.split_batch(call, shares)[-1])
    assert float((plain_last - parts[-1]).abs().max()) > 1e-4


def test_more_groups_than_pag_branches_is_one_line():
    from asyncvid.models.pag_parts import branch_shares

    with pytest.raises(AsyncVidError, match="cfg=3 needs 3 guidance branches"):
        branch_shares(("conditional", "perturbed"), 3)

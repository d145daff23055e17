"""The CUDA/NCCL path (skipped without CUDA): the same engine, another backend and device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _gpu_workers
import _workers
from asyncvid.launch import launch_local

pytestmark = [pytest.mark.gpu, pytest.mark.multiprocess]
SPLIT2 = [["conv_in", "down_blocks", "mid_block", "up_blocks.0"], ["up_blocks.1", "conv_out"]]


def _sequential(dtype, steps):
    pipe = _workers.tiny_pipeline(dtype).to("cuda")
    call = dict(_workers.CALL, num_inference_steps=steps)
    return pipe(**call, generator=torch.Generator().manual_seed(0)).frames


def _maxdiff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_one_stage_on_cuda_equals_the_untouched_pipeline(dtype):
    out = launch_local(_gpu_workers.render_cuda, 1, dict(stages=1), dtype)
    assert out["backend"] == "nccl"
    assert _maxdiff(out["frames"], _sequential(dtype, 4)) <= 1e-3


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two stages over NCCL need two GPUs")
def test_two_stages_over_nccl_with_warmup_covering_every_step(tmp_path):
    out = launch_local(_gpu_workers.render_cuda, 2, dict(stages=2, warmup=4, split=SPLIT2), "float16")
    assert _maxdiff(out["frames"], _sequential("float16", 4)) <= 1e-3


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two stages over NCCL need two GPUs")
def test_two_stages_over_nccl_asynchronous_runs_and_differs():
    out = launch_local(_gpu_workers.render_cuda, 2, dict(stages=2, warmup=1, split=SPLIT2), "float16")
    assert np.isfinite(out["frames"]).all()
    assert _maxdiff(out["frames"], _sequential("float16", 4)) > 1e-3


@pytest.mark.parametrize("kind", ["t2v", "sdxl", "controlnet", "sparsectrl", "v2v", "v2v-controlnet", "pag", "svd"])
def test_every_pipeline_kind_on_cuda_in_float16(kind):
    """Each diffusers pipeline of these UNets on one GPU in fp16 equals the untouched pipeline there;
    with two GPUs, two stages with warm-up covering every step do too (ControlNet residuals over NCCL)."""
    import _variants

    def untouched():
        pipe = _variants.prepared(kind, dtype="float16").to("cuda")
        return pipe(**_variants.call_of(kind, dtype="float16"), generator=torch.Generator().manual_seed(0)).frames

    expected = untouched()
    out = launch_local(_gpu_workers.render_variant_cuda, 1, kind, dict(stages=1))
    assert _maxdiff(out["frames"], expected) <= 1e-3
    if torch.cuda.device_count() >= 2:
        split = [["conv_in", "down_blocks"], ["mid_block", "up_blocks", "conv_out"]]
        out = launch_local(_gpu_workers.render_variant_cuda, 2, kind, dict(stages=2, warmup=4, split=split))
        assert _maxdiff(out["frames"], expected) <= 1e-3

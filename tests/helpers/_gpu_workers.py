"""Rank functions of the GPU checks (tests/gpu): the tiny pipeline on CUDA in half precision."""

from __future__ import annotations

import torch

import asyncvid
from _workers import CALL, tiny_pipeline


def render_cuda(options: dict, dtype: str = "float16", steps: int = 4):
    """Every rank: the tiny pipeline on its GPU in ``dtype``, parallelized over NCCL; rank 0's frames."""
    device = torch.device("cuda", torch.cuda.current_device())
    pipe = tiny_pipeline(dtype).to(device)
    ppipe = asyncvid.parallelize(pipe, **options)
    out = ppipe(**dict(CALL, num_inference_steps=steps), generator=torch.Generator().manual_seed(0))
    backend = torch.distributed.get_backend()
    return {"frames": out.frames, "backend": backend} if ppipe.is_driver else None


def render_variant_cuda(kind: str, options: dict, dtype: str = "float16"):
    """Every rank: one of the eight pipeline kinds on its GPU in ``dtype``, parallelized; rank 0's frames."""
    import _variants

    device = torch.device("cuda", torch.cuda.current_device())
    ppipe = asyncvid.parallelize(_variants.prepared(kind, dtype=dtype).to(device), **options)
    out = ppipe(**_variants.call_of(kind, dtype=dtype), generator=torch.Generator().manual_seed(0))
    return {"frames": out.frames} if ppipe.is_driver else None

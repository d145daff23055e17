"""Stage-only loading from a local diffusers folder gives the same frames as parallelize()."""

from __future__ import annotations

import numpy as np
import pytest

import _workers
from asyncvid.launch import launch_local
from asyncvid.catalog.presets import build_animatediff_pipeline
from reference import AsyncReference

SPLIT2 = [["conv_in", "down_blocks", "mid_block", "up_blocks.0"], ["up_blocks.1", "conv_out"]]


pytestmark = pytest.mark.multiprocess
BF16_CALL = dict(num_frames=4, num_inference_steps=3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny pipeline saved as a merged folder, and as the hub's layout: a 2D ``unet/`` beside
    ``motion_adapter/``."""
    from diffusers import AnimateDiffPipeline

    from asyncvid.catalog.presets import animatediff_components

    root = tmp_path_factory.mktemp("loading")
    build_animatediff_pipeline("tiny", seed=0).save_pretrained(root / "model", safe_serialization=True)
    parts = animatediff_components("tiny", seed=0)
    AnimateDiffPipeline(**parts).save_pretrained(root / "hub", safe_serialization=True)
    parts["unet"].save_pretrained(root / "hub" / "unet", safe_serialization=True)  # 2D UNet
    return root


@pytest.fixture(scope="module")
def runs(folders):
    """Every case's ranks in one group (spawning ranks costs seconds)."""
    import torch

    model, hub = str(folders / "model"), str(folders / "hub")
    jobs = {"stage-only": ("render_from_folder", (model, dict(stages=2, warmup=1, split=SPLIT2))),
            "undo": ("render_then_undo", (dict(stages=2, warmup=1, split=SPLIT2),)),
            "hub": ("render_from_folder", (hub, dict(stages=2, warmup=1, split=SPLIT2))),
            "bfloat16": ("render_from_folder", (model, dict(stages=2, warmup=1, split=SPLIT2, torch_dtype=torch.bfloat16),
                                                BF16_CALL))}
    return dict(zip(jobs, launch_local(_workers.run_many, 2, list(jobs.values()), timeout=600)))


def test_from_pretrained_loads_only_the_stage(runs, one_thread):
    import torch

    pipe = build_animatediff_pipeline("tiny", seed=0)
    out = runs["stage-only"]
    unet = pipe.unet
    shared = sum(p.numel() for n, p in unet.named_parameters() if n.startswith(("time_proj", "time_embedding")))
    stage1 = sum(p.numel() for n, p in unet.named_parameters() if n.startswith(("up_blocks.1.", "conv_norm_out.", "conv_out.")))
    total = sum(p.numel() for p in unet.parameters())
    assert out["held"] == [total - stage1, stage1 + shared]
    ref_pipe = build_animatediff_pipeline("tiny", seed=0)
    AsyncReference(ref_pipe, out["ranges"], warmup=1).install()
    ref = ref_pipe(**_workers.CALL, generator=torch.Generator().manual_seed(0)).frames
    assert float(np.abs(out["frames"] - ref).max()) <= 1e-4


def test_undo_gives_back_the_plain_pipeline(runs, one_thread):
    import torch

    out = runs["undo"]
    pipe = build_animatediff_pipeline("tiny", seed=0)
    assert out["held"] == sum(p.numel() for p in pipe.unet.parameters())
    seq = pipe(**_workers.CALL, generator=torch.Generator().manual_seed(0)).frames
    assert float(np.abs(out["frames"] - seq).max()) <= 1e-5


def test_hub_layout_2d_unet_plus_motion_adapter(folders, runs, one_thread):
    """A folder whose unet/ is a 2D UNet beside motion_adapter/ (how hub checkpoints ship) loads
    stage-only to the same model as the merged UNetMotionModel folder."""
    import torch

    assert '"UNet2DConditionModel"' in (folders / "hub" / "unet" / "config.json").read_text()
    out = runs["hub"]
    ref_pipe = build_animatediff_pipeline("tiny", seed=0)
    AsyncReference(ref_pipe, out["ranges"], warmup=1).install()
    ref = ref_pipe(**_workers.CALL, generator=torch.Generator().manual_seed(0)).frames
    assert float(np.abs(out["frames"] - ref).max()) <= 1e-4


def test_from_pretrained_in_bfloat16_equals_the_bfloat16_reference(folders, runs, one_thread):
    """``torch_dtype``: planned, loaded and run in bfloat16 on every rank (states travel in bfloat16)."""
    import torch

    call = BF16_CALL
    out = runs["bfloat16"]
    from diffusers import AnimateDiffPipeline

    def plain_load():  # what the same folder gives through diffusers' own from_pretrained
        pipe = AnimateDiffPipeline.from_pretrained(folders / "model", torch_dtype=torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    ref_pipe = plain_load()
    assert ref_pipe.unet.dtype == torch.bfloat16
    AsyncReference(ref_pipe, out["ranges"], warmup=1).install()
    ref = ref_pipe(**dict(_workers.CALL, **call), generator=torch.Generator().manual_seed(0)).frames
    assert float(np.abs(out["frames"] - ref).max()) <= 1e-4
    seq = plain_load()(**dict(_workers.CALL, **call), generator=torch.Generator().manual_seed(0)).frames
    assert float(np.abs(out["frames"] - seq).max()) > 1e-3

"""What the open-loop diagnostics (``forecast_diagnostic.py``, ``remodulation_diagnostic.py``) share:
their command line and the untouched pipeline with its denoiser's adapter."""

from __future__ import annotations

import argparse

import torch


def parser(doc: str, model: str, frames: int) -> argparse.ArgumentParser:
    """The shared options; each script adds its ``--cut`` (and more)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", default=model)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--size", type=int, default=32, help="frame height = width in pixels")
    p.add_argument("--prompt", default="a red circle moving left on a black background")
    return p


def pipeline(model_name: str):
    """The untouched pipeline (one thread, no progress bar), its denoiser, adapter and units."""
    from asyncvid.catalog.pipelines import build_pipeline, denoiser_of
    from asyncvid.models import adapter_for

    torch.set_num_threads(1)
    pipe = build_pipeline(model_name)
    pipe.set_progress_bar_config(disable=True)
    model = denoiser_of(pipe)
    adapter = adapter_for(model)
    return pipe, model, adapter, adapter.units()

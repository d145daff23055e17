"""How alike are a denoiser's hidden states at neighbouring denoising steps? (AsyncDiff's premise.)

AsyncDiff feeds stage k the output stage k-1 produced one step earlier; that only works when a
block's output changes little from one step to the next. :func:`step_similarity` records a block's
output at every step of a real pipeline call (a removable forward hook) and reports, over
consecutive pairs, the mean and minimum per-sample cosine similarity and the mean relative change
``|h_{s+1} - h_s| / |h_s|``. Raw cosine is high even for random weights (biases and the time
embedding are shared by all steps); the relative change separates trained from random better.

The block is a UNet's ``mid_block`` or the middle block of a transformer's ``blocks``. A pipeline that
calls its denoiser more than once a step (Wan: the prompt's call, then the negative prompt's) is
compared call for call: the first call of each step with the first of the next.
"""

from __future__ import annotations

import torch


def middle_module(denoiser) -> str:
    """The block whose output is measured: ``mid_block`` of a UNet, else the middle of ``blocks``."""
    if hasattr(denoiser, "mid_block"):
        return "mid_block"
    return f"blocks.{len(denoiser.blocks) // 2}"


@torch.no_grad()
def step_similarity(pipe, module_name: str | None = None, **call) -> dict:
    """Call ``pipe(**call)`` and measure how the denoiser's ``module_name`` output moves between steps."""
    from ..catalog.pipelines import denoiser_of

    denoiser = denoiser_of(pipe)
    module_name = module_name or middle_module(denoiser)
    module = denoiser.get_submodule(module_name)
    outputs: list[torch.Tensor] = []

    def record(_module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        outputs.append(out.detach().float().flatten(1).clone())

    handle = module.register_forward_hook(record)
    try:
        pipe(**call)
    finally:
        handle.remove()
    steps = call.get("num_inference_steps") or len(outputs)
    outputs = outputs[:: max(1, len(outputs) // steps)]  # one call per step
    cosines, changes = [], []
    for a, b in zip(outputs, outputs[1:]):
        cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=1))
        changes.append((b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12))
    cos = torch.stack(cosines)
    change = torch.stack(changes)
    return {"module": module_name, "steps": len(outputs), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "mean_relative_change": float(change.mean())}

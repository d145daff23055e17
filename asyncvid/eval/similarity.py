"""How alike are a UNet's hidden states at neighbouring denoising steps? (AsyncDiff's premise.)

AsyncDiff feeds stage k the output stage k-1 produced one step earlier; that only works when a
block's output changes little from one step to the next. :func:`step_similarity` records a block's
output at every step of a real pipeline call (a removable forward hook) and reports, over
consecutive pairs, the mean and minimum per-sample cosine similarity and the mean relative change
``|h_{s+1} - h_s| / |h_s|``. Raw cosine is high even for random weights (biases and the time
embedding are shared by all steps); the relative change separates trained from random better.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def step_similarity(pipe, module_name: str = "mid_block", **call) -> dict:
    """Call ``pipe(**call)`` and measure how ``pipe.unet.<module_name>``'s output moves between steps."""
    module = pipe.unet.get_submodule(module_name)
    outputs: list[torch.Tensor] = []

    def record(_module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        outputs.append(out.detach().float().flatten(1).clone())

    handle = module.register_forward_hook(record)
    try:
        pipe(**call)
    finally:
        handle.remove()
    cosines, changes = [], []
    for a, b in zip(outputs, outputs[1:]):
        cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=1))
        changes.append((b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12))
    cos = torch.stack(cosines)
    change = torch.stack(changes)
    return {"module": module_name, "steps": len(outputs), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "mean_relative_change": float(change.mean())}

"""Work the driver does per denoiser call besides its stage: the ControlNet (or SparseCtrl, or a
``MultiControlNetModel``'s nets), which the pipeline runs on rank 0 before every UNet call. The
auto split adds its measured time to stage 0's cost, so the driver gets fewer units."""

from __future__ import annotations

import torch

from ..planner.clock import now


def _example(net, batch: int, frames: int, h: int, w: int, scale: int, device, dtype) -> dict:
    """Inputs of one call of ``net`` as AnimateDiff's ControlNet pipelines make them."""
    cfg = net.config
    ehs = torch.randn(batch * frames, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    if type(net).__name__ == "SparseControlNetModel":
        size = (h, w) if cfg.use_simplified_condition_embedding else (h * scale, w * scale)
        return dict(sample=torch.randn(batch, cfg.in_channels, frames, h, w, device=device, dtype=dtype), timestep=t,
                    encoder_hidden_states=ehs,
                    controlnet_cond=torch.randn(batch, cfg.conditioning_channels, frames, *size, device=device, dtype=dtype),
                    conditioning_mask=torch.ones(batch, 1, frames, *size, device=device, dtype=dtype), return_dict=False)
    return dict(sample=torch.randn(batch * frames, cfg.in_channels, h, w, device=device, dtype=dtype), timestep=t,
                encoder_hidden_states=ehs,
                controlnet_cond=torch.randn(batch * frames, 3, h * scale, w * scale, device=device, dtype=dtype),
                return_dict=False)


@torch.no_grad()
def controlnet_seconds(pipe, batch: int, frames: int, h: int, w: int, device, dtype, reps: int = 2) -> float:
    """Seconds of the pipeline's ControlNet work per denoiser call at this latent shape (0 without one)."""
    net = getattr(pipe, "controlnet", None)
    if net is None:
        return 0.0
    nets = list(getattr(net, "nets", [net]))
    scale = getattr(pipe, "vae_scale_factor", 8)
    total = 0.0
    for one in nets:
        if any(p.is_meta for p in one.parameters()):
            continue
        kwargs = _example(one, batch, frames, h, w, scale, device, dtype)
        one(**kwargs)  # warm-up
        start = now(device)
        for _ in range(reps):
            one(**kwargs)
        total += (now(device) - start) / reps
    return total

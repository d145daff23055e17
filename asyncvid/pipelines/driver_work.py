"""Work the driver does per denoiser call besides its stage: the pipeline's own step (scheduler,
guidance mixing, callbacks, the latent bookkeeping) and the ControlNet (or SparseCtrl, or a
``MultiControlNetModel``'s nets), which the pipeline runs on rank 0 before every UNet call. The
auto split adds their measured time to stage 0's cost, so the driver gets fewer units."""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook

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


ZERO_HOOK = "asyncvid.zero_denoiser"


class ZeroDenoiserHook(ModelHook):
    """Stands in for the denoiser: a zero prediction of the right shape, no compute (what is left of
    a pipeline step is the driver's own work)."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter

    def new_forward(self, module, *args, **kwargs):
        call = self.adapter.split_call(args, kwargs)
        return self.adapter.wrap_output(self.adapter.zero_prediction(call), call.return_dict)


@torch.no_grad()
def pipeline_step_seconds(pipe, adapter, frames: int, h: int, steps: int = 5) -> float:
    """Seconds per denoising step of the pipeline itself, its denoiser replaced by a zero prediction
    (0 for pipelines this cannot call without extra inputs: ControlNet, video-to-video ...)."""
    from ..catalog.pipelines import call_kwargs
    from ..planner.clock import timed_call

    if not any(c.__name__ in ("AnimateDiffPipeline", "StableVideoDiffusionPipeline", "WanPipeline")
               for c in type(pipe).__mro__):
        return 0.0
    registry = HookRegistry.check_if_exists_or_initialize(adapter.model)
    registry.register_hook(ZeroDenoiserHook(adapter), ZERO_HOOK)
    try:
        kwargs = call_kwargs(pipe, frames, h, steps)  # square latents: the per-step work is elementwise
        timed_call(pipe, kwargs)  # one-off set-up
        marks = timed_call(pipe, kwargs)  # its own generator: the caller's random state is not touched
    finally:
        registry.remove_hook(ZERO_HOOK)
    return (marks[-1] - marks[1]) / (len(marks) - 2)


def driver_seconds(pipe, adapter, batch: int, frames: int, h: int, w: int, device, dtype) -> tuple[float, str]:
    """The driver's own work per denoiser call, and what it consists of (for the plan's description)."""
    step = pipeline_step_seconds(pipe, adapter, frames, h)
    control = controlnet_seconds(pipe, batch, frames, h, w, device, dtype)
    parts = [f"pipeline step {1000 * step:.1f} ms"] if step else []
    parts += [f"ControlNet {1000 * control:.1f} ms"] if control else []
    return step + control, ", ".join(parts)

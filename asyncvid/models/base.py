"""The contract between the engine and one UNet family.

An adapter answers four questions about a UNet, and nothing else in asyncvid knows the model:

* :meth:`UNetAdapter.units` -- the ordered units of the forward pass;
* :attr:`UNetAdapter.shared_modules` -- small modules every rank needs for its own context
  (time embedding, added-condition embeddings);
* :meth:`UNetAdapter.split_call` -- which forward arguments are the latent, the timestep, and the
  step-invariant conditioning that each rank receives once per call;
* :meth:`UNetAdapter.context` / :meth:`input_state` / :meth:`output` -- per-step context built on
  every rank, the state entering the first unit, and the pipeline-facing output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.units import Carried, Unit


@dataclass
class UNetCall:
    """One denoiser call, split into what changes every step and what does not."""

    sample: torch.Tensor
    timestep: torch.Tensor
    cond: dict[str, Any] = field(default_factory=dict)
    return_dict: bool = True


def as_timestep_tensor(timestep, device) -> torch.Tensor:
    """The timestep as a 1-element tensor, dtype kept as the UNets' own forward does."""
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if device.type == "mps" and dtype == torch.float64:
            dtype = torch.float32
        return torch.tensor([timestep], dtype=dtype, device=device)
    if timestep.ndim == 0:
        return timestep[None].to(device)
    return timestep.to(device)


class UNetAdapter:
    """Base class; subclasses set ``unet_class`` and implement the methods below."""

    unet_class: type | None = None
    shared_modules: tuple[str, ...] = ()

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    @classmethod
    def matches(cls, unet: torch.nn.Module) -> bool:
        return cls.unet_class is not None and isinstance(unet, cls.unet_class)

    def units(self) -> list[Unit]:
        raise NotImplementedError

    def split_call(self, args: tuple, kwargs: dict) -> UNetCall:
        raise NotImplementedError

    def context(self, sample_shape: torch.Size, timestep: torch.Tensor, cond: dict[str, Any]) -> Any:
        raise NotImplementedError

    def input_state(self, sample: torch.Tensor) -> Carried:
        return Carried(sample, ())

    def output(self, eps: torch.Tensor, return_dict: bool) -> Any:
        raise NotImplementedError

    def example_inputs(self, batch: int, frames: int, height: int, width: int, device, dtype) -> tuple[tuple, dict]:
        """Representative forward arguments for a latent of this size (profiling, traffic estimates)."""
        raise NotImplementedError

    def full_forward(self, *args, **kwargs):
        """Run every unit in one process; equals the UNet's own forward (used by tests and stage=1)."""
        call = self.split_call(args, kwargs)
        ctx = self.context(call.sample.shape, call.timestep, call.cond)
        state = self.input_state(call.sample)
        for unit in self.units():
            state = unit.run(ctx, state)
        return self.output(state.h, call.return_dict)

"""The vocabulary shared by model adapters and the engine.

A denoiser's forward pass is a chain of *units* (for a UNet: a conv, one resnet, one attention
layer, a down/upsampler, a whole mid block ...; for a transformer: one block). Between two units
the only live data is the :class:`Carried` state: the hidden state plus the stack of skip
connections that later layers will pop (empty for a transformer). A stage is a contiguous run of units, so a cut between stages ships exactly one
``Carried``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Carried:
    """State that crosses a cut: hidden state ``h`` and the skip stack (bottom first)."""

    h: torch.Tensor
    skips: tuple[torch.Tensor, ...] = ()
    skipped: bool | None = None  # the block cache's decision for this state (``engine/block_cache.py``)

    def tensors(self) -> list[torch.Tensor]:
        return [self.h, *self.skips]

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor]) -> "Carried":
        return cls(tensors[0], tuple(tensors[1:]))


@dataclass(frozen=True)
class Unit:
    """One schedulable piece of the forward pass.

    ``name`` is the module path relative to the model (``"up_blocks.3.attentions.1"``); ``modules``
    lists every module path whose parameters the unit needs; ``run(ctx, state) -> state``;
    ``consumes`` names the per-call extra inputs (see ``DenoiserCall.extras``) the unit reads, so
    that only the stage holding it receives them.
    """

    name: str
    modules: tuple[str, ...]
    run: Callable[[Any, Carried], Carried]
    consumes: tuple[str, ...] = ()


def run_units(units: list[Unit], ctx: Any, state: Carried) -> Carried:
    for unit in units:
        state = unit.run(ctx, state)
    return state

"""The contract between the engine and one model family.

A family adapter (one file in ``asyncvid/models/``) subclasses :class:`StageAdapter`. The engine
uses only the first group of methods; the hook layer (``asyncvid/pipelines/``) uses the second to
turn a framework call into tensors and the prediction back into the framework's output:

run on every rank, by the engine
    :meth:`units` (the ordered pieces of the forward pass), :attr:`shared_modules` (small modules
    every rank needs for its own per-step context), :meth:`context` (that context, from the
    sample's shape, the timestep and the conditioning), :meth:`input_state` (the state entering
    the first unit) and :meth:`prediction` (the tensor the last unit's state stands for).

call signature, used by the hook layer
    :meth:`split_call` (forward arguments -> :class:`DenoiserCall`), :meth:`wrap_output`
    (prediction -> what the model's forward returns) and :meth:`example_call` (a representative
    call for profiling and traffic estimates).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import AsyncVidError
from .units import Carried, Unit


@dataclass
class DenoiserCall:
    """One denoiser call as tensors: the latent, the timestep (1 element), the conditioning (an
    opaque tree of tensors and plain values that changes rarely: sent to a stage when its content
    changes) and the per-call extras (inputs that change every call, such as ControlNet residuals:
    sent every call, only to the stages whose units name them in ``Unit.consumes``)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    cond: dict[str, Any] = field(default_factory=dict)
    return_dict: bool = True
    extras: dict[str, Any] = field(default_factory=dict)


def as_timestep_tensor(timestep, device) -> torch.Tensor:
    """The timestep as a 1-element tensor, dtype kept (a Python float becomes float64, an int int64)."""
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if device.type == "mps" and dtype == torch.float64:
            dtype = torch.float32
        return torch.tensor([timestep], dtype=dtype, device=device)
    if timestep.ndim == 0:
        return timestep[None].to(device)
    return timestep.reshape(-1)[:1].to(device)


class StageAdapter:
    """Base class of the family adapters; ``model`` is the denoiser module."""

    model_class: type | None = None
    shared_modules: tuple[str, ...] = ()
    #: the family's pipelines run the guidance branches as separate denoiser calls of one step (call
    #: tags 0, 1: a conditional then an unconditional pass) instead of one batch; CFG groups then
    #: take whole calls (``engine/guidance.py``)
    guidance_in_calls: bool = False

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        return cls.model_class is not None and isinstance(model, cls.model_class)

    # ----- what the engine runs ----------------------------------------------------------
    def units(self) -> list[Unit]:
        raise NotImplementedError

    def context(self, sample_shape: torch.Size, timestep: torch.Tensor, cond: dict[str, Any]) -> Any:
        raise NotImplementedError

    def input_state(self, sample: torch.Tensor) -> Carried:
        return Carried(sample, ())

    def prediction(self, state: Carried) -> torch.Tensor:
        return state.h

    def module_setup(self) -> Any:
        """Driver, at the start of each denoising pass: the state of the model's modules that the
        caller may change between calls (a tree of plain values), or None. Workers receive it when
        it changes and pass it to :meth:`apply_module_setup` before they compute."""
        return None

    def apply_module_setup(self, setup: Any) -> None:
        """Worker: make this rank's modules match ``setup`` (see :meth:`module_setup`)."""

    # ----- the call signature (hook layer) -----------------------------------------------
    def split_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        raise NotImplementedError

    def wrap_output(self, eps: torch.Tensor, return_dict: bool) -> Any:
        raise NotImplementedError

    def zero_prediction(self, call: DenoiserCall) -> torch.Tensor:
        """A prediction of the right shape and dtype, all zeros, computed from nothing (timing the
        pipeline around the denoiser)."""
        raise NotImplementedError

    def example_call(self, batch: int, frames: int, height: int, width: int, device, dtype) -> DenoiserCall:
        """A representative call for a latent of this size (profiling, traffic estimates)."""
        raise NotImplementedError

    # ----- the guidance batch (classifier-free guidance over several stage groups) -------------
    def guidance_layout(self, setup: Any, degree: int) -> tuple[list[int], list[Any]]:
        """How ``degree`` stage groups share the guidance batch of a pass whose module setup is
        ``setup``: the branches each group takes (``split_batch`` shares) and the module setup each
        group computes with. By default the batch is cut into ``degree`` equal parts that all use the
        pass's setup; a family whose modules themselves cut the batch (PAG's processors) overrides it."""
        return [1] * degree, [setup] * degree

    def split_batch(self, call: DenoiserCall, shares) -> list[DenoiserCall]:
        """``call`` as consecutive slices of its batch (the guidance branches), in order: ``shares``
        is a number of equal parts or a list of relative sizes (``[2, 1]``: two thirds, one third).
        Every tensor of the conditioning and extras is batch-major in the families so far (``(B, ...)``
        or ``(B*F, ...)``), so each is cut along dim 0; a family with other layouts overrides this.
        The timestep is shared."""
        from torch.utils._pytree import tree_map

        shares = [1] * shares if isinstance(shares, int) else list(shares)
        total, batch = sum(shares), call.sample.shape[0]
        if not shares or min(shares) < 1 or batch % total:
            raise AsyncVidError(f"a denoiser batch of {batch} cannot be split into {len(shares)} guidance parts "
                                f"of {':'.join(map(str, shares))}")
        bounds = [sum(shares[:i]) for i in range(len(shares) + 1)]

        def piece(i):
            def cut(x):
                if not torch.is_tensor(x):
                    return x
                if x.ndim == 0 or x.shape[0] % total:
                    raise AsyncVidError(f"cannot split a conditioning tensor of shape {tuple(x.shape)} into "
                                        f"{len(shares)} guidance parts along its batch")
                unit = x.shape[0] // total
                return x[bounds[i] * unit:bounds[i + 1] * unit]
            return cut

        return [DenoiserCall(piece(i)(call.sample), call.timestep, tree_map(piece(i), call.cond), call.return_dict,
                             tree_map(piece(i), call.extras)) for i in range(len(shares))]

    def merge_predictions(self, predictions: list[torch.Tensor]) -> torch.Tensor:
        """The predictions of :meth:`split_batch`'s parts, back as one batch."""
        return torch.cat(predictions, dim=0)

    @contextmanager
    def module_setup_applied(self, setup: Any):
        """This rank's modules with ``setup`` applied for the duration of the block, then as before
        (the driver computing its guidance part with other processors than the pipeline set)."""
        before = self.module_setup()
        self.apply_module_setup(setup)
        try:
            yield
        finally:
            self.apply_module_setup(before)

    # ----- convenience ---------------------------------------------------------------------
    def run_all(self, call: DenoiserCall) -> torch.Tensor:
        """Every unit in one process: equals the model's own forward (tests, one stage)."""
        ctx = self.context(call.sample.shape, call.timestep, {**call.cond, **call.extras})
        state = self.input_state(call.sample)
        for unit in self.units():
            state = unit.run(ctx, state)
        return self.prediction(state)

    def full_forward(self, *args, **kwargs):
        """The model's forward, unit by unit in one process (tests compare it with the model's own)."""
        call = self.split_call(args, kwargs)
        return self.wrap_output(self.run_all(call), call.return_dict)

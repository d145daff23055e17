"""Perturbed-attention guidance (PAG) over several CFG stage groups.

PAG's processors cut the attention batch into its branches themselves: with guidance,
``PAGCFGIdentitySelfAttnProcessor2_0`` takes (unconditional, conditional, perturbed) and runs plain
self-attention on the first two and *identity* attention (the value projection only) on the third;
without guidance ``PAGIdentitySelfAttnProcessor2_0`` takes (conditional, perturbed). A stage group
that holds only some branches cannot run those processors, so each group gets processors for the
branches it holds: plain ``AttnProcessor2_0`` where it holds no perturbed branch,
:class:`PerturbedAttnProcessor` where it holds only the perturbed one. Both compute, per sample,
exactly what PAG's processor computes for that branch.

How ``cfg`` maps onto the branches: the branches are dealt out in order, in contiguous runs, the
larger runs first, and the perturbed branch always gets a group of its own. So PAG with guidance
(3 branches) on ``cfg=3`` is one branch per group, on ``cfg=2`` (unconditional + conditional) and
(perturbed), a 2:1 load; PAG without guidance (2 branches) on ``cfg=2`` is one branch per group.
"""

from __future__ import annotations

from typing import Any

from ..errors import AsyncVidError

PAG_BRANCHES = {
    "PAGCFGIdentitySelfAttnProcessor2_0": ("unconditional", "conditional", "perturbed"),
    "PAGIdentitySelfAttnProcessor2_0": ("conditional", "perturbed"),
}
PLAIN = ("diffusers.models.attention_processor", "AttnProcessor2_0", {})
PERTURBED = (__name__, "PerturbedAttnProcessor", {})


class PerturbedAttnProcessor:
    """Identity self-attention for a batch made only of PAG's perturbed branch: the attention output
    is the value projection, as in the perturbed path of diffusers' PAG processors."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def pag_branches(setup: dict[str, Any] | None) -> tuple[str, ...] | None:
    """The branches PAG's processors in ``setup`` (``module_sync.synced_state``) cut the batch into."""
    if not setup:
        return None
    found = {PAG_BRANCHES[qualname] for _, qualname, _ in setup["processors"].values() if qualname in PAG_BRANCHES}
    if len(found) > 1:
        raise AsyncVidError("the denoiser holds PAG processors for and without guidance at once")
    return found.pop() if found else None


def branch_shares(branches: tuple[str, ...], degree: int) -> list[int]:
    """Branches per group: contiguous runs, larger first, the perturbed branch alone at the end."""
    if degree > len(branches):
        raise AsyncVidError(f"cfg={degree} needs {degree} guidance branches, but this PAG pass has "
                            f"{len(branches)} ({', '.join(branches)}); use cfg <= {len(branches)}")
    rest, groups = len(branches) - 1, degree - 1  # the perturbed branch takes the last group
    shares = [rest // groups + (1 if i < rest % groups else 0) for i in range(groups)] if groups else []
    return shares + [1] if groups else [len(branches)]


def pag_layout(setup: dict[str, Any] | None, degree: int) -> tuple[list[int], list[Any]] | None:
    """Shares and per-group module setups for a PAG pass on ``degree`` groups; None if not PAG."""
    branches = pag_branches(setup)
    if branches is None or degree == 1:
        return None
    shares = branch_shares(branches, degree)
    plain = _with_pag_processors(setup, PLAIN)
    return shares, [plain] * (len(shares) - 1) + [_with_pag_processors(setup, PERTURBED)]


def _with_pag_processors(setup: dict[str, Any], replacement: tuple) -> dict[str, Any]:
    processors = {name: (replacement if qualname in PAG_BRANCHES else (module, qualname, attrs))
                  for name, (module, qualname, attrs) in setup["processors"].items()}
    return {**setup, "processors": processors}

"""The step protocol: what the driver tells each worker, as one small int64 tensor per message.

Workers know the schedule (a pure function of steps, warm-up and stride), so the driver only sends
what they cannot know, point to point and without waiting for an answer:

* ``BEGIN`` once per denoising pass, followed by that pass's timesteps;
* ``STEP`` once per executed denoiser call: step index, the timestep index it embeds, a call tag
  (several denoiser calls in one step are told apart by it), the conditioning's version (a worker
  holding an older version receives the new conditioning right after this message), a bit mask of
  the stages that receive per-step extra inputs after it (e.g. ControlNet residuals, only for the
  stages whose units consume them), the embedded timestep's exact value and dtype, and in a
  parallel round with the block cache on, whether every stage skips its blocks
  (``engine/block_cache.py``);
* ``END_CALL``, ``SHUTDOWN``, ``UNDO`` to end a pipeline call, release the workers, or gather the
  weights back.

Messages go to the ranks of one stage group, addressed by global rank, so a classifier-free
guidance dimension (several stage groups side by side) needs no renumbering: each group's driver
talks to its own stages. The first field is the protocol version; a mismatch is one clear error.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import torch

from ..errors import AsyncVidError

PROTOCOL_VERSION = 2
FIELDS = 11
CACHE_NONE, CACHE_COMPUTE, CACHE_SKIP = 0, 1, 2  # the ``cache`` field
_DTYPES = (torch.int64, torch.int32, torch.float32, torch.float64, torch.float16, torch.bfloat16)


class Op(enum.IntEnum):
    BEGIN = 1
    STEP = 2
    END_CALL = 3
    SHUTDOWN = 4
    UNDO = 5


def dtype_code(dtype: torch.dtype) -> int:
    try:
        return _DTYPES.index(dtype)
    except ValueError:
        raise AsyncVidError(f"timestep dtype {dtype} is not supported (supported: {', '.join(map(str, _DTYPES))})") from None


def _float_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(bits)))[0]


@dataclass(frozen=True)
class StepMessage:
    op: Op
    step: int = -1
    t_index: int = -1
    call_tag: int = 0
    cond_version: int = 0
    extras: int = 0  # bit k set: stage k receives extra inputs for this call
    timestep: float = 0.0
    timestep_dtype: torch.dtype = torch.float64
    total: int = 0  # BEGIN: steps in the pass
    cache: int = CACHE_NONE  # parallel rounds with the block cache: CACHE_COMPUTE or CACHE_SKIP

    def encode(self, device=None, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """The message as int64[FIELDS]. With ``timestep`` (a 1-element tensor, possibly on the GPU),
        its value is written on the device, so the driver never waits for the GPU to read it."""
        ints = [PROTOCOL_VERSION, int(self.op), self.step, self.t_index, self.call_tag, self.cond_version,
                self.extras, _float_bits(self.timestep), dtype_code(self.timestep_dtype), self.total, self.cache]
        msg = torch.tensor(ints, dtype=torch.int64)
        if device is not None and torch.device(device).type == "cuda":  # no host sync on the driver
            msg = msg.pin_memory().to(device, non_blocking=True)
        if timestep is not None:
            msg[7] = timestep.reshape(-1)[0].to(torch.float64).view(torch.int64)
        return msg

    @classmethod
    def decode(cls, tensor: torch.Tensor) -> "StepMessage":
        v = tensor.tolist()
        if len(v) != FIELDS or v[0] != PROTOCOL_VERSION:
            raise AsyncVidError(f"step message of protocol version {v[0] if v else '?'} received; this rank speaks "
                                f"version {PROTOCOL_VERSION}: every rank must run the same asyncvid")
        return cls(Op(v[1]), v[2], v[3], v[4], v[5], v[6], _bits_float(v[7]), _DTYPES[v[8]], v[9], v[10])

    @property
    def skips_blocks(self) -> bool | None:
        """The block cache's decision for a parallel round (None: not told; it came with the state)."""
        return None if self.cache == CACHE_NONE else self.cache == CACHE_SKIP

    def timestep_tensor(self, device) -> torch.Tensor:
        """The embedded timestep, exactly as the driver had it (value and dtype)."""
        return torch.tensor([self.timestep], dtype=torch.float64, device=device).to(self.timestep_dtype)

    def routes_extras_to(self, stage: int) -> bool:
        return bool(self.extras >> stage & 1)


def extras_mask(stages) -> int:
    """The ``extras`` bit mask for a set of stage indices."""
    mask = 0
    for k in stages:
        mask |= 1 << k
    return mask

"""The step message encodes and decodes itself; versions must agree."""

from __future__ import annotations

import pytest
import torch

from asyncvid.distributed.protocol import FIELDS, PROTOCOL_VERSION, Op, StepMessage, extras_mask
from asyncvid.errors import AsyncVidError


@pytest.mark.parametrize("dtype,value", [(torch.int64, 981), (torch.float32, -1.2345678), (torch.float64, 0.1),
                                         (torch.bfloat16, 0.75), (torch.float16, 999.0)])
def test_round_trip_keeps_every_field_and_the_exact_timestep(dtype, value):
    t = torch.tensor([value], dtype=dtype)
    msg = StepMessage(Op.STEP, step=7, t_index=8, call_tag=1, cond_version=3, extras=extras_mask([0, 2]),
                      timestep_dtype=dtype, total=25)
    encoded = msg.encode(timestep=t)
    assert encoded.dtype == torch.int64 and encoded.shape == (FIELDS,)
    back = StepMessage.decode(encoded)
    assert (back.op, back.step, back.t_index, back.call_tag, back.cond_version, back.total) == (Op.STEP, 7, 8, 1, 3, 25)
    assert back.timestep_dtype == dtype
    assert torch.equal(back.timestep_tensor("cpu"), t)  # bit for bit, in the driver's dtype
    assert [back.routes_extras_to(k) for k in range(4)] == [True, False, True, False]


def test_other_protocol_version_is_one_clear_error():
    encoded = StepMessage(Op.END_CALL).encode()
    encoded[0] = PROTOCOL_VERSION + 1
    with pytest.raises(AsyncVidError, match="protocol version .* every rank must run the same asyncvid"):
        StepMessage.decode(encoded)


def test_unsupported_timestep_dtype_is_refused():
    with pytest.raises(AsyncVidError, match="timestep dtype"):
        StepMessage(Op.STEP, timestep_dtype=torch.complex64).encode()

"""``launch_local``: which rank's ending is reported when several end at once."""

from __future__ import annotations

import pytest

from asyncvid.errors import RankFailure
from asyncvid.launch import launch_local

from _launch_workers import end_together

pytestmark = pytest.mark.multiprocess


def test_a_killed_rank_is_named_even_when_its_peer_fails_in_the_same_instant():
    """The launcher polls every 50 ms; both ranks end inside one poll. The killed rank is the cause
    (its peer's error follows from it), so the report names the signal, not the peer's error."""
    with pytest.raises(RankFailure, match=r"^rank 1 was killed by SIGKILL .*the other ranks stopped with it"):
        launch_local(end_together, 2, 1)

"""``launch_local``: which rank's ending is reported when several end at once."""

from __future__ import annotations

import pytest

from asyncvid.errors import AsyncVidError, RankFailure
from asyncvid.launch import launch_local

from _launch_workers import end_together, environment

pytestmark = pytest.mark.multiprocess


def test_a_killed_rank_is_named_even_when_its_peer_fails_in_the_same_instant():
    """The launcher polls every 50 ms; both ranks end inside one poll. The killed rank is the cause
    (its peer's error follows from it), so the report names the signal, not the peer's error."""
    with pytest.raises(RankFailure, match=r"^rank 1 was killed by SIGKILL .*the other ranks stopped with it"):
        launch_local(end_together, 2, 1)


def test_ranks_see_the_launchers_environment_of_now(monkeypatch):
    """Ranks fork from a server started once, with the environment of then: each rank is handed
    the launcher's of now, and a variable read only at import (huggingface_hub's HF_HUB_OFFLINE)
    starts the server again when it changed."""
    monkeypatch.setenv("ASYNCVID_TEST_GONE", "there")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = launch_local(environment, 1, ["ASYNCVID_TEST_GONE", "ASYNCVID_TEST_NEW"])
    assert first == dict(env={"ASYNCVID_TEST_GONE": "there", "ASYNCVID_TEST_NEW": None}, hub_offline=True, forked=True,
                         threads=1)
    monkeypatch.delenv("ASYNCVID_TEST_GONE")
    monkeypatch.setenv("ASYNCVID_TEST_NEW", "here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    second = launch_local(environment, 2, ["ASYNCVID_TEST_GONE", "ASYNCVID_TEST_NEW"], threads_per_rank=2)
    assert second == dict(env={"ASYNCVID_TEST_GONE": None, "ASYNCVID_TEST_NEW": "here"}, hub_offline=False, forked=True,
                          threads=2)


def test_spawn_can_be_asked_for(monkeypatch):
    monkeypatch.setenv("ASYNCVID_START_METHOD", "spawn")
    monkeypatch.setenv("ASYNCVID_TEST_NEW", "here")
    assert launch_local(environment, 1, ["ASYNCVID_TEST_NEW"]) == dict(env={"ASYNCVID_TEST_NEW": "here"},
                                                                       hub_offline=True, forked=False, threads=1)
    monkeypatch.setenv("ASYNCVID_START_METHOD", "fork")
    with pytest.raises(AsyncVidError, match="ASYNCVID_START_METHOD must be forkserver or spawn, got 'fork'"):
        launch_local(environment, 1, [])


@pytest.mark.parametrize("state", [dict(launches=1, stuck=False), dict(launches=0, stuck=True)], ids=["in-use", "stuck"])
def test_a_server_that_cannot_be_restarted_leaves_the_launch_to_spawn(monkeypatch, state):
    """The import-time environment changed, but another launch's ranks still run from the server
    (restarting it would cut them off), or stopping it once hung: this launch spawns instead."""
    from asyncvid import _start

    monkeypatch.delenv("ASYNCVID_START_METHOD", raising=False)
    monkeypatch.setattr(_start, "_server", dict(state, env={"HF_HUB_OFFLINE": "not this"}))
    with _start.start_context() as ctx:
        assert ctx.get_start_method() == "spawn"
    assert _start._server["launches"] == state["launches"]

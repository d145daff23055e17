"""Faults that used to hang or mislead: a rank that stops answering is named within the watchdog's
limit, a slow but healthy rank is not, a rank that raised is reported by the others as the cause,
and a script that makes one call and exits never cuts off its last message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _fault_workers
import _workers
from asyncvid.distributed.watchdog import FIRST_STEP_FACTOR, STEP_FACTOR, Watchdog, floor_from
from asyncvid.errors import AsyncVidError, RankFailure
from asyncvid.launch import launch_local
from asyncvid.utils import free_port

HELPERS = Path(__file__).parents[1] / "helpers"
ROOT = Path(__file__).parents[2]


def test_the_limit_grows_with_the_slowest_step_and_only_binds_inside_a_pass():
    watch = Watchdog(60.0)
    assert watch.limit() is None  # idle: between calls a rank may wait for hours
    with watch.watching():
        assert watch.limit() == FIRST_STEP_FACTOR * 60.0  # the first step: compilation, lazy set-up
        watch.step_done(0.5)
        assert watch.limit() == 60.0
        watch.step_done(10.0)
        assert watch.limit() == STEP_FACTOR * 10.0
        with watch.watching(False):
            assert watch.limit() is None
    assert watch.limit() is None
    watch.configure(0.0)
    with watch.watching():
        assert watch.limit() is None  # 0 turns it off


def test_the_floor_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.delenv("ASYNCVID_RANK_TIMEOUT", raising=False)
    assert floor_from(None) == 60.0
    monkeypatch.setenv("ASYNCVID_RANK_TIMEOUT", "7.5")
    assert floor_from(None) == 7.5 and floor_from(3) == 3.0
    for bad in ("soon", -1):
        with pytest.raises(AsyncVidError, match="rank timeout"):
            floor_from(bad)


def test_an_optional_measurement_that_fails_logs_one_line_and_falls_back(caplog):
    from asyncvid.optional import optional

    def broken():
        raise ValueError("Input image size (224*224) doesn't match model (32*32).")

    assert optional("the driver's own work per step", broken, (0.0, ""), "the split counts none") == (0.0, "")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["asyncvid: could not measure the driver's own work per step (ValueError: Input image size "
                     "(224*224) doesn't match model (32*32).); the split counts none"]


OPTIONS = dict(stages=2, warmup=1, split="auto", rank_timeout=2)


@pytest.mark.multiprocess
def test_slow_but_healthy_ranks_do_not_trip_the_watchdog():
    """Floor 2 s: a first step of 4 s on the worker (over the floor, under the first step's 5 x), then
    a unit of 1.5 s on each rank mid-call (far longer than any step of this model, under the floor)."""
    jobs = [("_fault_workers.sleepy_render", (OPTIONS, {1: {1: 4.0}})),
            ("_fault_workers.sleepy_render", (OPTIONS, {0: {3: 1.5}, 1: {4: 1.5}}))]
    results = launch_local(_workers.run_many, 2, jobs, timeout=300)
    assert [r["frames"].shape[:2] for r in results] == [(1, 8)] * 2
    assert results[0]["limit_floor"] == 2.0


@pytest.mark.multiprocess
def test_a_worker_idle_between_calls_waits_past_every_limit(monkeypatch):
    """Between calls no limit applies: not the watchdog's (2 s here), nor the group's own timeout,
    which bounded every receive before (8 s here)."""
    monkeypatch.setenv("ASYNCVID_TIMEOUT", "8")
    assert launch_local(_fault_workers.idle_between_calls, 2, OPTIONS, 12.0, timeout=240) == 2


CFG2 = dict(stages=1, cfg=2, rank_timeout=2)  # two stage groups side by side, one per guidance branch


@pytest.mark.multiprocess
@pytest.mark.parametrize("stopped,options", [(1, OPTIONS), (0, OPTIONS), (1, CFG2)], ids=["worker", "driver", "cfg"])
def test_a_rank_that_stops_answering_is_named_within_the_limit(stopped, options):
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        launch_local(_fault_workers.stop_mid_call, 2, options, stopped, timeout=240)
    elapsed = time.monotonic() - start
    message = str(info.value)
    other = 1 - stopped
    assert "\n" not in message
    assert re.match(rf"rank {other} failed: rank {stopped} did not answer for \d+ s while rank {other} waited "
                    rf"for .* \(its process, pid \d+ on this host, is stopped", message), message
    assert elapsed < 90, elapsed  # loading both ranks and a 4-step call take most of it; the limit is ~2-10 s


@pytest.mark.multiprocess
def test_a_raising_driver_under_torchrun_is_named_by_the_worker(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HELPERS / "_raise_script.py")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stderr
    worker = [line for line in err.splitlines() if "rank 1" in line or line.startswith("[rank1]")]
    assert len(worker) == 1, err[-3000:]
    assert re.fullmatch(r"asyncvid: error: rank 1: rank 0 failed: RuntimeError: injected failure in \S+", worker[0])
    assert "GLHF" not in err and "Connection closed" not in err


@pytest.mark.multiprocess
def test_one_call_scripts_never_lose_their_last_message():
    """Each rank makes one call and exits at once; before the driver drained its END_CALL send, about
    one launch in eight ended with the worker's "Connection closed/reset by peer". The 20 launches are
    forked from one process that imported torch (each rank still leaves through the interpreter's
    exit); without the drain, 13 of 20 failed that way."""
    import json

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HELPERS / "_one_call.py"), "--launches", "20"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launches = json.loads(proc.stdout.splitlines()[-1])
    assert len(launches) == 20
    failures = [(launch, run["codes"], run["outs"][1][-300:]) for launch, run in enumerate(launches)
                if any(run["codes"]) or any("done" not in out for out in run["outs"])]
    assert failures == []

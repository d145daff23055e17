"""``asyncvid render --devices 2``: text- and image-to-video jobs in one file, two stages each."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyncvid.cli.main import main
from asyncvid.video import read_video_info

pytestmark = [pytest.mark.multiprocess]

JOBS = """\
defaults: {frames: 8, width: 32, height: 32, steps: 2, stages: 2, fps: 8}
jobs:
  - {name: circle, prompt: "a red circle", format: gif}
  - {name: drift, model: tiny-random-svd, image: cond.png, fps: 6, decode_chunk: 4}
  - {name: square, prompt: "a blue square", seed: 1, width: 48}
"""


def test_three_jobs_on_two_devices(tmp_path):
    Image.fromarray((np.random.RandomState(0).rand(24, 40, 3) * 255).astype("uint8")).save(tmp_path / "cond.png")
    (tmp_path / "jobs.yaml").write_text(JOBS)
    out = tmp_path / "out"
    assert main(["render", str(tmp_path / "jobs.yaml"), "--out", str(out), "--devices", "2", "--quiet",
                 "--timings"]) == 0
    expected = {"circle.gif": (32, 8.0), "drift.mp4": (32, 6.0), "square.mp4": (48, 8.0)}
    for name, (width, fps) in expected.items():
        info = read_video_info(out / name)
        assert (info["frames"], info["height"], info["width"]) == (8, 32, width), name
        assert info["fps"] == pytest.approx(fps, rel=0.1)  # a GIF's frame delay is in 1/100 s
        manifest = json.loads((out / (name.rsplit(".", 1)[0] + ".json")).read_text())
        assert manifest["devices"] == 2 and manifest["frames"] == 8 and manifest["output"] == name
        assert manifest["config"]["task"] == ("i2v" if name == "drift.mp4" else "t2v")
    drift = json.loads((out / "drift.json").read_text())
    assert drift["image"] == str(tmp_path / "cond.png") and len(drift["config"]["image_sha256"]) == 64
    assert drift["model_dir"] == str(tmp_path / "cache" / "models" / "tiny-random-svd")  # built once, cached
    profile = json.loads((out / "render_profile.json").read_text())
    assert profile["jobs"] == 3 and profile["devices"] == 2


UNPINNED = """\
defaults: {frames: 4, width: 32, height: 32, steps: 2, fps: 8}
jobs:
  - {name: whole, prompt: "a red circle"}
  - {name: pinned, prompt: "a blue square", stages: 1}
"""


def test_devices_alone_parallelise_jobs_that_do_not_pin_stages(tmp_path, capsys):
    (tmp_path / "jobs.yaml").write_text(UNPINNED)
    out = tmp_path / "out"
    assert main(["render", str(tmp_path / "jobs.yaml"), "--out", str(out), "--devices", "2", "--quiet"]) == 0
    whole, pinned = (json.loads((out / f"{n}.json").read_text()) for n in ("whole", "pinned"))
    assert (whole["config"]["stages"], whole["devices"]) == (2, 2)  # one stage per device
    assert (pinned["config"]["stages"], pinned["devices"]) == (1, 1)
    for name in ("whole", "pinned"):
        assert read_video_info(out / f"{name}.mp4")["frames"] == 4


def test_a_dry_run_fails_like_the_real_run_would(tmp_path, capsys):
    (tmp_path / "jobs.yaml").write_text(UNPINNED + '  - {name: big, prompt: "x", stages: 2, cfg: 2}\n')
    assert main(["render", str(tmp_path / "jobs.yaml"), "--devices", "2", "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "job 'big' would fail: needs 4 devices (stages 2 x cfg 2) but the group has 2" in captured.err
    assert "whole" not in captured.err and "stages: 2" in captured.out  # the listing shows the resolved stages


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_killed_rank_is_named_with_its_signal(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "jobs.yaml").write_text(
        "defaults: {frames: 8, width: 32, height: 32, stages: 2}\njobs:\n"
        "  - {name: first, prompt: x, steps: 2}\n  - {name: second, prompt: y, steps: 400}\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "asyncvid.cli.main", "render", str(tmp_path / "jobs.yaml"),
                             "--out", str(out), "--devices", "2", "--quiet"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, ASYNCVID_CACHE=str(tmp_path / "cache")))
    try:
        def last_rank():
            ranks = _ranks_of(proc.pid)
            assert len(ranks) >= 2, ranks
            return max(ranks)

        _stop_once_first_is_done(proc, out, last_rank, signal.SIGKILL)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if "second" in line]
    assert len(lines) == 1 and re.search(r"rank \d was killed by SIGKILL", lines[0]), err
    assert "gloo" not in err and "GLHF" not in err
    assert read_video_info(out / "first.mp4")["frames"] == 8  # finished work kept
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def test_a_rank_killed_under_torchrun_is_named(tmp_path):
    """torchrun owns the ranks (asyncvid cannot see the signal): the survivor names the rank whose
    process is gone, from the (host, pid) table the group exchanged when it formed."""
    import os
    import signal
    import subprocess
    import sys

    from asyncvid.utils import free_port

    (tmp_path / "jobs.yaml").write_text(
        "defaults: {model: tiny-random, frames: 8, width: 32, height: 32, stages: 2}\njobs:\n"
        "  - {name: first, prompt: x, steps: 2}\n  - {name: second, prompt: y, steps: 400}\n")
    out = tmp_path / "out"
    log = open(tmp_path / "stdout.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "asyncvid",
                             "render", str(tmp_path / "jobs.yaml"), "--out", str(out), "--quiet"],
                            stdout=log, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, ASYNCVID_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1"))
    def rank1() -> int:
        return int(re.search(r"rank 1/2 local \d+ host \S+ pid (\d+)", (tmp_path / "stdout.txt").read_text()).group(1))

    try:
        _stop_once_first_is_done(proc, out, rank1, signal.SIGKILL)
        pid = rank1()
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        log.close()
    assert proc.returncode != 0
    # rank 0 notices the lost connection, or torchrun's SIGTERM (sent once rank 1 died) comes first
    ours = [line for line in err.splitlines() if line.startswith("asyncvid: ")]
    assert ours in ([f"asyncvid: error: rank 0: the render group stopped: rank 1 (pid {pid}) on this host died or "
                     "was killed (its launcher's log names the signal)"],
                    [f"asyncvid: interrupted after rank 1 (pid {pid}) on this host died or was killed"]), err
    assert "GLHF" not in err
    assert read_video_info(out / "first.mp4")["frames"] == 8  # finished work kept
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ranks_of(pid: int) -> list[int]:
    """The ranks launch_local started under a process: the children of its forkserver (or, under
    ASYNCVID_START_METHOD=spawn, its spawned children), not multiprocessing's resource tracker."""
    ranks = []
    for child in _children(pid):
        cmdline = _cmdline(child)
        if b"spawn_main" in cmdline:
            ranks.append(child)
        elif b"multiprocessing.forkserver" in cmdline:
            ranks += _children(child)
    return sorted(ranks)


STOP_JOBS = ("defaults: {model: tiny-random, frames: 8, width: 32, height: 32, stages: 2}\njobs:\n"
             "  - {name: first, prompt: x, steps: 2}\n  - {name: second, prompt: y, steps: 400}\n")


def _alive(pid: int) -> bool:
    """The process runs (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_once_first_is_done(proc, out: Path, pid_of_rank1, sig=None) -> float:
    """Wait for the first job's manifest, let the second one denoise a while, send rank 1 ``sig``
    (SIGSTOP by default); the time of the signal."""
    import os
    import signal
    import time

    sig = signal.SIGSTOP if sig is None else sig
    deadline = time.monotonic() + 180
    while not (out / "first.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the first job never finished"
        time.sleep(0.05)
    time.sleep(1.0)  # the second job is being denoised
    os.kill(pid_of_rank1(), sig)
    return time.monotonic()


def _nothing_partial_and_resumable(tmp_path, out: Path, capsys) -> None:
    import yaml

    assert read_video_info(out / "first.mp4")["frames"] == 8  # finished work kept
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    capsys.readouterr()
    main(["render", str(tmp_path / "jobs.yaml"), "--out", str(out), "--dry-run"])  # in this process: no new imports
    done = {j["name"]: j["up_to_date"] for j in yaml.safe_load(capsys.readouterr().out)["jobs"]}
    assert done == {"first": True, "second": False}  # a new run renders only what is missing


def test_a_stopped_rank_is_named_by_the_watchdog(tmp_path, capsys):
    """SIGSTOP of a rank mid-render: no exit status, no closed connection, only silence."""
    import os
    import subprocess
    import sys
    import time

    (tmp_path / "jobs.yaml").write_text(STOP_JOBS)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "asyncvid.cli.main", "render", str(tmp_path / "jobs.yaml"),
                             "--out", str(out), "--devices", "2", "--quiet", "--rank-timeout", "3"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, ASYNCVID_CACHE=str(tmp_path / "cache")))
    try:
        stopped = _stop_once_first_is_done(proc, out, lambda: _ranks_of(proc.pid)[-1])
        err = proc.communicate(timeout=120)[1]
        took = time.monotonic() - stopped
    finally:
        proc.kill()
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if "second" in line]
    assert len(lines) == 1 and re.search(r"rank (\d) did not answer for \d+ s while rank (?!\1)\d waited for .* "
                                         r"\(step \d+ of 400\) \(its process, pid \d+ on this host, is stopped", lines[0]), err
    assert "GLHF" not in err and "Traceback" not in err
    print(f"SIGSTOP to the render's exit: {took:.1f} s")
    assert took < 60, took  # the limit: max(3 s, 20 x the slowest step seen), then the launcher's clean-up
    _nothing_partial_and_resumable(tmp_path, out, capsys)


def test_a_rank_stopped_under_torchrun_is_named(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    from asyncvid.utils import free_port

    (tmp_path / "jobs.yaml").write_text(STOP_JOBS)
    out = tmp_path / "out"
    log = open(tmp_path / "stdout.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "asyncvid",
                             "render", str(tmp_path / "jobs.yaml"), "--out", str(out), "--quiet", "--rank-timeout", "3"],
                            stdout=log, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, ASYNCVID_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1"))

    def pid_of(rank: int) -> int:
        text = (tmp_path / "stdout.txt").read_text()
        return int(re.search(rf"rank {rank}/2 local \d+ host \S+ pid (\d+)", text).group(1))

    try:
        stopped = _stop_once_first_is_done(proc, out, lambda: pid_of(1))
        # rank 0 names the stopped rank and exits; then end the stopped one as torchrun would after its
        # 30 s grace period (SIGTERM cannot reach a stopped process), without the wait
        while _alive(pid_of(0)) and time.monotonic() - stopped < 120:
            time.sleep(0.1)
        took = time.monotonic() - stopped
        os.kill(pid_of(1), signal.SIGKILL)
        err = proc.communicate(timeout=180)[1]
    finally:
        proc.kill()
        log.close()
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("asyncvid: ")]
    assert len(ours) == 1 and re.fullmatch(
        r"asyncvid: error: rank 0: the render group stopped: rank 1 did not answer for \d+ s while rank 0 waited for "
        r".* \(step \d+ of 400\) \(its process, pid \d+ on this host, is stopped.*", ours[0]), err
    assert "GLHF" not in err
    print(f"SIGSTOP to rank 0's exit under torchrun: {took:.1f} s")
    assert took < 60, took  # the limit (3 s x 5 before a first step: under 20 s), with room for a loaded machine
    _nothing_partial_and_resumable(tmp_path, out, capsys)

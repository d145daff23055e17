"""``asyncvid render --devices D`` with jobs that need fewer devices: ``D // (stages x cfg)`` replicas
render side by side, each job exactly once; a killed run resumes; ``cfg: 2`` jobs use two devices
per job and render the video of ``cfg: 1``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from asyncvid.catalog.builtin import ensure_builtin
from asyncvid.cli.main import main
from asyncvid.video import read_video_info

pytestmark = [pytest.mark.multiprocess]

NAMES = ["j1", "j2", "j3", "j4"]
JOBS = "defaults: {frames: 8, width: 32, height: 32, steps: 12, stages: 1}\njobs:\n" + "".join(
    f"  - {{name: {n}, prompt: 'a red circle', seed: {i}}}\n" for i, n in enumerate(NAMES))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("ASYNCVID_CACHE", str(folder))
    ensure_builtin("tiny-random")
    return folder


def test_four_single_device_jobs_on_two_devices_render_as_two_replicas(tmp_path, cache, capfd):
    jobs, out = tmp_path / "jobs.yaml", tmp_path / "out"
    jobs.write_text(JOBS)
    assert main(["render", str(jobs), "--out", str(out), "--devices", "2", "--profile"]) == 0
    text = capfd.readouterr().out  # the replicas' processes write to the file descriptor
    assert "4 job(s) of 1 device(s) each: 2 replica(s) side by side" in text
    assert "4 rendered, 0 skipped, 0 failed" in text
    for name in NAMES:
        assert read_video_info(out / f"{name}.mp4")["frames"] == 8
        assert json.loads((out / f"{name}.json").read_text())["devices"] == 1
    profile = json.loads((out / "render_profile.json").read_text())
    assert profile["replicas"] == 2 and profile["devices"] == 2 and profile["jobs"] == 4
    timings = profile["jobs_timings"]
    assert sorted(t["name"] for t in timings) == NAMES  # each job once
    assert {t["replica"] for t in timings} == {0, 1}  # both replicas rendered
    # jobs of different replicas ran at the same time: their wall-clock spans overlap
    assert len([line for line in text.splitlines() if line.startswith("[replica ")]) == 4
    spans = [(t["started_at"], t["finished_at"], t["replica"]) for t in timings]
    assert any(a[0] < b[1] and b[0] < a[1] for a in spans for b in spans if a[2] != b[2])


def test_a_killed_replica_run_resumes(tmp_path, cache):
    jobs, out = tmp_path / "jobs.yaml", tmp_path / "out"
    jobs.write_text(JOBS)
    proc = subprocess.Popen([sys.executable, "-m", "asyncvid.cli.main", "render", str(jobs), "--out", str(out),
                             "--devices", "2", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, ASYNCVID_CACHE=str(cache)), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob("*.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no manifest after 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, replicas included (as Ctrl-C would)
        proc.wait()
    done = sorted(p.stem for p in out.glob("*.json"))
    assert 1 <= len(done) < 4, "the run finished before it was killed"
    kept = {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in done}
    assert main(["render", str(jobs), "--out", str(out), "--devices", "2", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{e}" for n in NAMES for e in ("mp4", "json"))
    assert {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in done} == kept  # finished videos not redone
    for name in NAMES:
        assert read_video_info(out / f"{name}.mp4")["frames"] == 8


def test_a_cfg_job_renders_the_video_of_its_stages_alone(tmp_path, cache, capsys):
    one = "defaults: {frames: 4, width: 32, height: 32, steps: 3, format: png}\njobs:\n  - {name: c, prompt: 'a red circle'}\n"
    (tmp_path / "one.yaml").write_text(one)
    (tmp_path / "two.yaml").write_text(one.replace("format: png}", "format: png, cfg: 2}"))
    assert main(["render", str(tmp_path / "one.yaml"), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["render", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "b"), "--devices", "2", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "b" / "c.json").read_text())
    assert manifest["devices"] == 2 and manifest["config"]["cfg"] == 2
    frames = [np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / d / "c").glob("frame_*.png"))])
              for d in ("a", "b")]
    assert frames[0].shape == frames[1].shape == (4, 32, 32, 3)
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= 1
    # cfg does not change the video, so it is not in the config hash: the cfg 1 output is up to date
    capsys.readouterr()
    assert main(["render", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "a"), "--devices", "2"]) == 0
    assert "1 skipped" in capsys.readouterr().out


def test_a_job_needing_more_devices_than_given_fails_in_one_line(tmp_path, cache, capsys):
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {name: c, prompt: 'x', stages: 2, cfg: 2, frames: 2}\n")
    assert main(["render", str(tmp_path / "jobs.yaml"), "--out", str(tmp_path / "o"), "--devices", "2"]) == 1
    err = capsys.readouterr().err
    assert "needs 4 devices (stages 2 x cfg 2) but the group has 2" in err


def test_cfg_without_guidance_is_a_job_file_error(tmp_path, capsys):
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {name: c, prompt: 'x', cfg: 2, guidance: 1.0}\n")
    assert main(["render", str(tmp_path / "jobs.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cfg: 2 splits the guidance batch" in err and "guidance is 1" in err


def test_render_bench_times_one_device_against_replicas(tmp_path, cache, capsys):
    jobs, report = tmp_path / "jobs.yaml", tmp_path / "bench.json"
    jobs.write_text("defaults: {frames: 4, width: 32, height: 32, steps: 3, stages: 1}\njobs:\n"
                    "  - {name: a, prompt: x}\n  - {name: b, prompt: y, seed: 1}\n")
    assert main(["bench", "--render", str(jobs), "--devices", "2", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert [(r["devices"], r["replicas"], r["jobs"]) for r in result["runs"]] == [(1, 1, 2), (2, 2, 2), (1, 1, 2)]
    mean = (result["runs"][0]["command_wall_s"] + result["runs"][2]["command_wall_s"]) / 2
    assert result["speedup_command"] == pytest.approx(mean / result["runs"][1]["command_wall_s"])
    assert not (tmp_path / "out").exists()  # the bench renders into its own temporary folders

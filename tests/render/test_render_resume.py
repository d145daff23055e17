"""``asyncvid render`` killed part way (SIGKILL) and run again: nothing half-written carries a final
name, leftovers are cleaned, finished jobs are kept and the missing ones are made."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from asyncvid.cli.main import main
from asyncvid.catalog.builtin import ensure_builtin
from asyncvid.video import read_video_info

pytestmark = [pytest.mark.multiprocess]  # the CLI in a subprocess

NAMES = ["j1", "j2", "j3", "j4"]
# ~1 s of denoising per job on 2 CPU cores
JOBS = "defaults: {frames: 8, width: 32, height: 32, steps: 12}\njobs:\n" + "".join(
    f"  - {{name: {n}, prompt: 'a red circle', seed: {i}}}\n" for i, n in enumerate(NAMES))


def test_kill_then_resume(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ASYNCVID_CACHE", str(cache))
    ensure_builtin("tiny-random")  # built up front: the killed run should spend its time rendering
    jobs, out = tmp_path / "jobs.yaml", tmp_path / "out"
    jobs.write_text(JOBS)
    proc = subprocess.Popen([sys.executable, "-m", "asyncvid.cli.main", "render", str(jobs), "--out", str(out),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, ASYNCVID_CACHE=str(cache)))
    try:
        deadline = time.monotonic() + 90
        while not (out / "j1.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no manifest after 90 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    manifests = sorted(p.stem for p in out.glob("*.json"))
    assert "j1" in manifests and len(manifests) < 4, "the run finished before it was killed"
    for video in (out / f"{n}.mp4" for n in NAMES):  # whatever has a final name is a whole video
        assert not video.exists() or read_video_info(video)["frames"] == 8, video.name
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert all(".partial" in name for name in leftovers), leftovers  # hidden, never under a final name
    # a leftover of an interrupted writer, as if the kill had come while j4 was being encoded
    (out / ".j4.partial.mp4").write_bytes(b"half a video")
    kept = {n: ((out / f"{n}.mp4").stat().st_mtime_ns, (out / f"{n}.json").stat().st_mtime_ns) for n in manifests}

    assert main(["render", str(jobs), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{e}" for n in NAMES for e in ("mp4", "json"))
    for name in NAMES:
        assert read_video_info(out / f"{name}.mp4")["frames"] == 8
        assert json.loads((out / f"{name}.json").read_text())["config"]["seed"] == NAMES.index(name)
    for name, mtimes in kept.items():  # finished before the kill: not rendered again
        assert ((out / f"{name}.mp4").stat().st_mtime_ns, (out / f"{name}.json").stat().st_mtime_ns) == mtimes

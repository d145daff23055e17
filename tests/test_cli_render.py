"""``asyncvid render``: renders, manifests, skipping up-to-date jobs, and per-job failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asyncvid.cli.main import main
from asyncvid.video import read_video_info

ENTRY = """\
  - name: {name}
    prompt: "a red circle moving left"
    model: {model}
    seed: 0
    frames: 8
    width: 32
    height: 32
    fps: 8
    steps: 2
    stages: {stages}
"""


def entry(name="circle", model="tiny-random", stages=1) -> str:
    return ENTRY.format(name=name, model=model, stages=stages)


def job_yaml(name="circle", **kwargs) -> str:
    return "jobs:\n" + entry(name, **kwargs)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def env(monkeypatch, cache):
    monkeypatch.setenv("ASYNCVID_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets it; monkeypatch restores it afterwards


def test_render_then_skip_then_force(tmp_path, cache, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_yaml())
    out = tmp_path / "out"
    assert main(["render", str(jobs), "--out", str(out), "--quiet"]) == 0
    video, manifest_path = out / "circle.mp4", out / "circle.json"
    assert read_video_info(video)["frames"] == 8
    assert read_video_info(video)["width"] == 32
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["steps"] == 2 and manifest["seed"] == 0
    assert len(manifest["config_hash"]) == 64
    assert set(manifest["versions"]) >= {"asyncvid", "torch", "diffusers"}
    assert manifest["timings"]["total_s"] >= manifest["timings"]["denoise_s"] > 0
    assert (cache / "models" / "tiny-random" / "model_index.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["circle.json", "circle.mp4"]
    before = video.stat()

    capsys.readouterr()
    assert main(["render", str(jobs), "--out", str(out)]) == 0
    assert "skip circle" in capsys.readouterr().out
    after = video.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)

    assert main(["render", str(jobs), "--out", str(out), "--force", "--quiet"]) == 0
    assert video.stat().st_ino != before.st_ino  # a new file was moved into place
    assert read_video_info(video)["frames"] == 8


def test_changed_config_is_not_up_to_date(tmp_path):
    from asyncvid.cli.render import _write_manifest, is_done, make_task
    from asyncvid.jobs import load_job_file

    (tmp_path / "jobs.yaml").write_text(job_yaml())
    jf = load_job_file(tmp_path / "jobs.yaml")
    task = make_task(jf.jobs[0], "tiny-random", tmp_path)
    (tmp_path / "circle.mp4").write_bytes(b"video")
    _write_manifest(task, 1, 8, {})
    assert is_done(task)
    (tmp_path / "jobs.yaml").write_text(job_yaml().replace("steps: 2", "steps: 3"))
    changed = make_task(load_job_file(tmp_path / "jobs.yaml").jobs[0], "tiny-random", tmp_path)
    assert changed.config_hash != task.config_hash and not is_done(changed)


def test_failed_job_does_not_stop_the_others(tmp_path, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_yaml("a", model=str(broken)) + entry("b", model="missing-model") + entry("c", stages=2)
                    + entry("d"))
    assert main(["render", str(jobs), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3  # one line per failed job
    assert any("'a' failed" in e and "cannot load model" in e for e in err)
    assert any("'b' failed" in e and str(tmp_path / "missing-model") in e for e in err)
    assert any("'c' failed" in e and "--devices" in e for e in err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d.json", "d.mp4"]


def test_dry_run_prints_resolved_jobs(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("defaults: {steps: 3}\n" + job_yaml().replace("    steps: 2\n", ""))
    assert main(["render", str(jobs), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "name: circle" in text and "steps: 3" in text and str(tmp_path / "out" / "circle.mp4") in text
    assert not (tmp_path / "out").exists()


def test_only_unknown_name(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_yaml())
    assert main(["render", str(jobs), "--only", "nope", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("asyncvid: error: --only: no job named 'nope'")


def test_bad_file_exits_2_with_one_line(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_yaml().replace("frames: 8", "frames: 0"))
    proc = subprocess.run([sys.executable, "-m", "asyncvid.cli.main", "render", str(jobs)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncvid: error: ")
    assert "jobs.yaml:6:" in lines[0] and "frames" in lines[0]


def test_render_on_two_devices(tmp_path, capfd):
    """Two local ranks: a bad explicit split fails only its own job; the next job still renders."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_yaml("bad", stages=2) + "    split: [[nope], [conv_out]]\n" + entry("good", stages=2))
    assert main(["render", str(jobs), "--out", str(tmp_path / "out"), "--devices", "2", "--quiet"]) == 1
    err = capfd.readouterr().err  # rank 0 is a child process: capture at the file descriptor
    assert "job 'bad' failed: split:" in err and "nope" in err
    assert read_video_info(tmp_path / "out" / "good.mp4")["frames"] == 8
    assert json.loads((tmp_path / "out" / "good.json").read_text())["devices"] == 2

"""``asyncvid render``: renders, manifests, skipping up-to-date jobs, and per-job failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asyncvid.cli.main import main
from asyncvid.render.jobfile import JobFileError, load_job_file
from asyncvid.video import read_video_info

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
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
    timings = manifest["timings"]
    assert timings["wall_s"] >= timings["denoise_s"] + timings["decode_s"] and timings["denoise_s"] > 0
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
    from asyncvid.render.tasks import is_done, make_task, write_manifest

    (tmp_path / "jobs.yaml").write_text(job_yaml())
    jf = load_job_file(tmp_path / "jobs.yaml")
    task = make_task(jf.jobs[0], "tiny-random", tmp_path)
    (tmp_path / "circle.mp4").write_bytes(b"video")
    write_manifest(task, 1, 8, {})
    assert is_done(task)
    (tmp_path / "jobs.yaml").write_text(job_yaml().replace("steps: 2", "steps: 3"))
    changed = make_task(load_job_file(tmp_path / "jobs.yaml").jobs[0], "tiny-random", tmp_path)
    assert changed.config_hash != task.config_hash and not is_done(changed)


def test_partial_leftovers_are_cleaned(tmp_path, capsys):
    """What a killed run left beside a job's video and manifest goes; other files stay."""
    from asyncvid.render.batch import clean_partials
    from asyncvid.render.tasks import make_task

    (tmp_path / "jobs.yaml").write_text(job_yaml())
    task = make_task(load_job_file(tmp_path / "jobs.yaml").jobs[0], "tiny-random", tmp_path)
    leftovers = [".circle.partial.mp4", ".circle.json.123.0a1b2c3d.partial", ".circle.json.partial"]
    for name in leftovers + ["circle.mp4", ".other.json.partial"]:
        (tmp_path / name).write_text("")
    clean_partials([task], quiet=False)
    assert capsys.readouterr().out == "removed 3 partial file(s) left by an interrupted run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.partial", "circle.mp4", "jobs.yaml"]


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


def test_only_before_the_file_does_not_swallow_it(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  - {name: a, prompt: x}\n  - {name: b, prompt: y}\n  - {name: c, prompt: z}\n")
    assert main(["render", "--only", "a", str(jobs), "--only", "c", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "name: a" in listed and "name: c" in listed and "name: b" not in listed
    assert main(["render", str(jobs), "--only", "a,b", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "name: a" in listed and "name: b" in listed and "name: c" not in listed


@pytest.mark.multiprocess  # the CLI in a subprocess
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


@pytest.mark.multiprocess
def test_render_on_two_devices(tmp_path, capfd):
    """Two local ranks: a bad explicit split fails only its own job; the next job still renders."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_yaml("bad", stages=2) + "    split: [[nope], [conv_out]]\n" + entry("good", stages=2))
    assert main(["render", str(jobs), "--out", str(tmp_path / "out"), "--devices", "2", "--quiet"]) == 1
    err = capfd.readouterr().err  # rank 0 is a child process: capture at the file descriptor
    assert "job 'bad' failed: split:" in err and "nope" in err
    assert read_video_info(tmp_path / "out" / "good.mp4")["frames"] == 8
    assert json.loads((tmp_path / "out" / "good.json").read_text())["devices"] == 2


def test_gpu_example_dry_run_names_the_missing_model_folder(capsys):
    """examples/gpu.yaml validates; its checkpoints are not downloaded here, which --dry-run reports."""
    assert main(["render", str(EXAMPLES / "gpu.yaml"), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    line = (EXAMPLES / "gpu.yaml").read_text().splitlines().index("    model: models/epiCRealism") + 1
    assert err.startswith(f"asyncvid: error: {EXAMPLES / 'gpu.yaml'}:{line}: job 1 'lighthouse': model: "
                          "model not found: 'models/epiCRealism' is neither a folder")
    assert "`hf download models/epiCRealism`" in err


def test_i2v_example_dry_run(capsys):
    import yaml

    assert main(["render", str(EXAMPLES / "i2v.yaml"), "--dry-run", "--out", "/nonexistent/out"]) == 0
    listed = yaml.safe_load(capsys.readouterr().out)["jobs"]
    assert [(j["name"], j["task"], j["model"]) for j in listed] == [("green-square-left", "i2v", "shapes-i2v"),
                                                                     ("yellow-triangle-up", "i2v", "shapes-i2v")]
    assert listed[0]["motion_bucket_id"] == 32 and listed[1]["motion_bucket_id"] == 160  # left, up
    assert "prompt" not in listed[0] and len(listed[0]["image_sha256"]) == 64
    assert all((EXAMPLES / "assets" / f).stat().st_size < 10_000 for f in ("green-square.png", "yellow-triangle.png"))


def test_base_model_plus_motion_adapter(tmp_path):
    """The hub layout of gpu.yaml's text-to-video jobs: a StableDiffusionPipeline folder and a
    separate MotionAdapter folder."""
    from diffusers import StableDiffusionPipeline

    from asyncvid.catalog.presets import animatediff_components

    parts = animatediff_components("tiny", seed=0)
    adapter = parts.pop("motion_adapter")
    StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "base", safe_serialization=True)
    adapter.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(job_yaml(model="base") + "    motion_adapter: adapter\n" + entry("no-adapter", model="base"))
    with pytest.raises(JobFileError, match=r"jobs.yaml:15: job 2 'no-adapter': model: .* set motion_adapter"):
        load_job_file(jobs)
    jobs.write_text(job_yaml(model="base") + "    motion_adapter: adapter\n")
    assert main(["render", str(jobs), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert read_video_info(tmp_path / "out" / "circle.mp4")["frames"] == 8
    manifest = json.loads((tmp_path / "out" / "circle.json").read_text())
    assert manifest["motion_adapter_dir"] == str(tmp_path / "adapter")


def test_a_hub_id_in_the_local_cache_renders_offline(tmp_path, cache, monkeypatch, capsys):
    from asyncvid.catalog.builtin import ensure_builtin
    from jobfiles import hub_cache_with

    hub = hub_cache_with(tmp_path, "someone/tiny-video", ensure_builtin("tiny-random"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "jobs.yaml").write_text("jobs:\n  - {name: a, model: someone/tiny-video, prompt: x, frames: 2, "
                                        "width: 32, height: 32, steps: 2}\n"
                                        "  - {name: b, model: someone/absent, prompt: x, frames: 2}\n")
    assert main(["render", str(tmp_path / "jobs.yaml"), "--only", "a", "--out", str(tmp_path / "o")]) == 0
    manifest = json.loads((tmp_path / "o" / "a.json").read_text())
    assert manifest["model_dir"].startswith(str(hub / "models--someone--tiny-video" / "snapshots"))
    assert read_video_info(tmp_path / "o" / "a.mp4")["frames"] == 2
    capsys.readouterr()
    assert main(["render", str(tmp_path / "jobs.yaml"), "--only", "b", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'someone/absent' is neither a folder" in err and "hf download someone/absent" in err

"""asyncvid.render.stream: chunked decoding equals the pipelines' own output, the background
encoder, and the renderer's timings and --profile."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from asyncvid.cli.main import main
from asyncvid.catalog.presets import build_animatediff_pipeline, build_svd_pipeline
from asyncvid.render.stream import EncodeJob, Encoder, decode_chunk, decode_chunks, denoise
from asyncvid.video import read_video_info

T2V = dict(task="t2v", prompt="a red circle", negative_prompt="", guidance=7.5, seed=3, frames=8, width=32,
           height=32, steps=2)
I2V = dict(task="i2v", motion_bucket_id=100, noise_aug_strength=0.02, min_guidance=1.0, max_guidance=2.5, seed=3,
           frames=8, width=32, height=32, steps=2, fps=8.0)


def image():
    import PIL.Image

    return PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))


def chunked(pipe, cfg, chunk, cond=None):
    latents = denoise(pipe, cfg, cond)
    parts = list(decode_chunks(pipe, latents, cfg["task"], chunk))
    assert [len(p) for p in parts] == [min(chunk, cfg["frames"] - i) for i in range(0, cfg["frames"], chunk)]
    return np.concatenate(parts)


@pytest.mark.parametrize("chunk", [3, 16])
def test_chunked_animatediff_decode_equals_pipeline_np(chunk):
    pipe = build_animatediff_pipeline("tiny", seed=0)
    ref = pipe(prompt=T2V["prompt"], num_frames=8, height=32, width=32, num_inference_steps=2, guidance_scale=7.5,
               output_type="np", generator=torch.Generator().manual_seed(3)).frames[0]
    got = chunked(pipe, T2V, chunk)
    assert got.shape == ref.shape == (8, 32, 32, 3) and got.dtype == ref.dtype
    assert float(np.abs(got - ref).max()) <= 1e-5


@pytest.mark.parametrize("chunk", [3, 8])
def test_chunked_svd_decode_equals_pipeline_np(chunk):
    """SVD's temporal decoder sees each decode_chunk_size group at once: the chunks are those groups."""
    pipe = build_svd_pipeline("tiny", seed=0)
    cfg = dict(I2V, decode_chunk=chunk)
    ref = pipe(image=image(), num_frames=8, height=32, width=32, num_inference_steps=2, fps=8, motion_bucket_id=100,
               noise_aug_strength=0.02, min_guidance_scale=1.0, max_guidance_scale=2.5, decode_chunk_size=chunk,
               output_type="np", generator=torch.Generator().manual_seed(3)).frames[0]
    got = chunked(pipe, cfg, decode_chunk(cfg), image())
    assert got.shape == ref.shape == (8, 32, 32, 3)
    assert float(np.abs(got - ref).max()) <= 1e-5


def test_decode_chunk_defaults():
    assert decode_chunk(dict(T2V, frames=40)) == 16  # AnimateDiff's decode_chunk_size default
    assert decode_chunk(dict(I2V, frames=14)) == 14  # SVD decodes all frames at once by default
    assert decode_chunk(dict(I2V, decode_chunk=4)) == 4


# ----------------------------------------------------------------------------- the encoder thread
def gradient(frames, size=16):
    return np.tile(np.linspace(0, 1, size, dtype=np.float32)[None, None, :, None], (frames, size, 1, 3))


def test_encoder_writes_in_background_and_reports_each_job(tmp_path):
    done = []
    encoder = Encoder(lambda job, error: done.append((job.key, job.frames, error, job.path)), maxsize=1)
    encoder.begin(EncodeJob("a", str(tmp_path / "a.mp4"), 8, "mp4", 18))
    for _ in range(3):
        encoder.write(gradient(2))
    encoder.end()
    encoder.begin(EncodeJob("b", str(tmp_path / "b.gif"), 8, "gif", 18))  # size change: the writer fails
    encoder.write(gradient(2))
    encoder.write(gradient(2, size=8))
    encoder.write(gradient(2))
    encoder.end()
    encoder.begin(EncodeJob("c", str(tmp_path / "c.mp4"), 8, "mp4", 18))  # the driver gave up on it
    encoder.write(gradient(2))
    encoder.abort("RuntimeError: decode failed")
    encoder.begin(EncodeJob("d", str(tmp_path / "d.webm"), 8, "webm", 18))
    encoder.write(gradient(1))
    encoder.end()
    encoder.close()
    assert [(k, n, e) for k, n, e, _ in done[:1]] == [("a", 6, None)]
    assert done[1][0] == "b" and "size changed" in done[1][2]
    assert done[2][0] == "c" and done[2][2] == "RuntimeError: decode failed"
    assert done[3][:3] == ("d", 1, None)
    assert read_video_info(tmp_path / "a.mp4")["frames"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "d.webm"]  # no partial, nothing half-made


def test_encoder_queue_is_bounded(tmp_path):
    """write() blocks while the encoder is busy: at most maxsize chunks wait in memory."""
    release = threading.Event()
    encoder = Encoder(lambda job, error: release.wait(10), maxsize=2)
    encoder.begin(EncodeJob("x", str(tmp_path / "x.png"), 8, "png", 18))
    encoder.end()  # (no frames: a failed job) the callback now blocks the thread
    encoder.begin(EncodeJob("y", str(tmp_path / "y.png"), 8, "png", 18))
    encoder.write(gradient(1))
    blocked = threading.Thread(target=encoder.write, args=(gradient(1),), daemon=True)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive() and encoder.queue.qsize() == 2
    release.set()
    blocked.join(10)
    assert not blocked.is_alive()
    encoder.end()
    encoder.close()


# ----------------------------------------------------------------------------- timings and --profile
def test_timings_and_profile(tmp_path, monkeypatch, capsys):
    from asyncvid.render import loop

    loads = []
    real_load = loop.load_pipeline
    monkeypatch.setattr(loop, "load_pipeline", lambda *a: loads.append(a) or real_load(*a))
    image().save(tmp_path / "cond.png")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("defaults: {frames: 4, width: 32, height: 32, steps: 1, decode_chunk: 2}\njobs:\n"
                    "  - {name: a, prompt: x}\n  - {name: b, model: tiny-random-svd, image: cond.png}\n"
                    "  - {name: c, prompt: y, format: gif}\n  - {name: d, model: tiny-random-svd, image: cond.png, seed: 1}\n")
    assert main(["render", str(jobs), "--out", str(tmp_path / "out"), "--quiet", "--profile"]) == 0
    assert len(loads) == 2  # one load per model, reused by the jobs sharing it
    for name, ext in [("a", "mp4"), ("b", "mp4"), ("c", "gif"), ("d", "mp4")]:
        manifest = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        t = manifest["timings"]
        assert set(t) == {"denoise_s", "decode_s", "encode_s", "wall_s"}
        assert t["wall_s"] >= t["denoise_s"] + t["decode_s"] > 0 and t["encode_s"] > 0
        assert manifest["frames"] == 4 and read_video_info(tmp_path / "out" / f"{name}.{ext}")["frames"] == 4
    profile = json.loads((tmp_path / "out" / "render_profile.json").read_text())
    assert profile["jobs"] == 4 and len(profile["jobs_timings"]) == 4
    assert profile["wall_s"] >= profile["render_wall_s"] > 0 and profile["setup_s"] > 0
    assert profile["denoise_s"] == pytest.approx(sum(t["denoise_s"] for t in profile["jobs_timings"]), abs=1e-3)
    out = capsys.readouterr().out
    assert out.startswith("profile: 4 job(s) on 1 device(s): wall ") and "vs denoise" in out


def test_encoding_failure_fails_only_its_job(tmp_path, capsys):
    """The video cannot be moved onto its final name (a folder is in the way): that job fails on
    the encoder thread with one line and no manifest; the next job renders."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("defaults: {frames: 2, width: 16, height: 16, steps: 1}\njobs:\n"
                    "  - {name: blocked, prompt: x}\n  - {name: fine, prompt: y}\n")
    (tmp_path / "out" / "blocked.mp4").mkdir(parents=True)
    (tmp_path / "out" / "blocked.mp4" / "keep").write_text("")
    assert main(["render", str(jobs), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asyncvid: job 'blocked' failed: ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blocked.mp4", "fine.json", "fine.mp4"]
    assert read_video_info(tmp_path / "out" / "fine.mp4")["frames"] == 2


def test_denoise_reports_every_step(one_thread):
    pipe = build_animatediff_pipeline("tiny", seed=0)
    cfg = dict(task="t2v", seed=0, frames=2, height=32, width=32, steps=3, prompt="x", negative_prompt="",
               guidance=7.5)
    seen = []
    latents = denoise(pipe, cfg, on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and latents is not None

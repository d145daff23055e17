"""Fidelity metrics (PSNR, SSIM, temporal error, ST-LPIPS, CLIP score) and the Pareto plot."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from asyncvid.errors import AsyncVidError
from asyncvid.eval import fidelity
from asyncvid.eval.fidelity import (
    PerceptualDistance,
    clip_score,
    clip_similarity,
    compare_clips,
    finite,
    load_stlpips_weights,
    psnr,
    ssim,
    stlpips_weights_path,
    temporal_error,
)
from asyncvid.eval.plot import FRONT_COLOUR, POINT_COLOUR, SIZE, pareto_front, pareto_plot

HAS_STLPIPS = importlib.util.find_spec("stlpips_pytorch") is not None
needs_stlpips = pytest.mark.skipif(not HAS_STLPIPS, reason="stlpips-pytorch not installed")


def moving_square(frames: int = 8, size: int = 32, step: int = 2) -> np.ndarray:
    """A red square sliding right over a soft vertical gradient, float in [0, 1]."""
    clip = np.empty((frames, size, size, 3))
    clip[:] = np.linspace(0.2, 0.5, size)[None, :, None, None]
    for t in range(frames):
        x = 4 + step * t
        clip[t, 10:20, x:x + 8] = (0.9, 0.2, 0.1)
    return clip


def noisy(clip: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clip + rng.normal(0.0, sigma, clip.shape), 0.0, 1.0)


@pytest.fixture(scope="module")
def lpips():
    if not HAS_STLPIPS:
        pytest.skip("stlpips-pytorch not installed")
    return PerceptualDistance()


# ------------------------------------------------------------ pixel metrics

def test_identical_clips_are_perfect():
    clip = moving_square()
    assert psnr(clip, clip) == math.inf
    assert ssim(clip, clip) == 1.0
    assert temporal_error(clip, clip) == 0.0
    out = compare_clips(clip, clip)
    assert out == {"psnr": math.inf, "ssim": 1.0, "lpips": None, "temporal_error": 0.0}
    assert json.loads(json.dumps(finite(out)))["psnr"] == "inf"


@needs_stlpips
def test_identical_clips_lpips_zero(lpips):
    clip = moving_square()
    assert abs(lpips(clip, clip)) < 1e-6
    assert abs(compare_clips(clip, clip, lpips)["lpips"]) < 1e-6


def test_psnr_known_value():
    ref = np.zeros((2, 8, 8, 3))
    assert psnr(ref, ref + 0.1) == pytest.approx(20.0, abs=1e-9)


def test_metrics_worsen_with_noise():
    clip = moving_square()
    results = [compare_clips(clip, noisy(clip, s)) for s in (0.01, 0.03, 0.1)]
    p, s, t = ([r[k] for r in results] for k in ("psnr", "ssim", "temporal_error"))
    assert p[0] > p[1] > p[2]
    assert s[0] > s[1] > s[2]
    assert t[0] < t[1] < t[2]
    assert all(0.0 < v < 1.0 for v in s)


@needs_stlpips
def test_lpips_grows_with_noise(lpips):
    clip = moving_square()
    d = [lpips(clip, noisy(clip, s)) for s in (0.01, 0.03, 0.1)]
    assert 0.0 < d[0] < d[1] < d[2]


def test_temporal_error_ignores_offset_not_order():
    clip = moving_square() * 0.8
    assert temporal_error(clip, clip + 0.1) == pytest.approx(0.0, abs=1e-12)
    assert psnr(clip, clip + 0.1) == pytest.approx(20.0, abs=1e-6)  # yet per-frame error is there
    assert temporal_error(clip, clip[::-1]) > 0.01
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_error(clip[:1], clip[:1])
    assert compare_clips(clip[:1], clip[:1])["temporal_error"] is None


def test_uint8_and_float_agree():
    ref8 = np.round(moving_square() * 255).astype(np.uint8)
    test8 = np.round(noisy(moving_square(), 0.05) * 255).astype(np.uint8)
    ref, test = ref8 / 255.0, test8 / 255.0
    for metric in (psnr, ssim, temporal_error):
        assert metric(ref8, test8) == pytest.approx(metric(ref, test), rel=1e-12)
    assert psnr(ref8, test8) < 40.0  # really compared in [0, 1] units, not 0..255
    if HAS_STLPIPS:
        d = PerceptualDistance()
        assert d(ref8, test8) == pytest.approx(d(ref, test), rel=1e-5)


def test_bad_inputs_rejected():
    clip = moving_square()
    with pytest.raises(ValueError, match="shape"):
        psnr(clip, clip[:, :16])
    with pytest.raises(ValueError, match="dtype"):
        psnr(clip.astype(np.int64), clip.astype(np.int64))


def test_ssim_small_frames_shrink_window():
    clip = moving_square()[:, 12:18, 5:14]  # 6 x 9 px: window becomes 5
    value = ssim(clip, noisy(clip, 0.05))
    assert 0.0 < value < 1.0
    assert ssim(clip, clip) == 1.0


# ------------------------------------------------------------ ST-LPIPS

@needs_stlpips
def test_lpips_tolerates_shift(lpips):
    clip = moving_square()
    shifted = np.roll(clip, 1, axis=2)
    assert 0.0 < lpips(clip, shifted) < lpips(clip, noisy(clip, 0.1))


@needs_stlpips
def test_lpips_uses_trained_linear_heads(lpips):
    weights = load_stlpips_weights()
    lins = [weights[f"lin{i}.model.1.weight"] for i in range(5)]
    assert all(bool((w >= 0).all()) and float(w.sum()) > 0 for w in lins)
    clip = moving_square()
    test = noisy(clip, 0.1)
    zeroed = {k: v.clone() for k, v in weights.items()}
    zeroed["lin0.model.1.weight"].zero_()
    full, partial = lpips(clip, test), PerceptualDistance(weights=zeroed)(clip, test)
    assert 0.0 < partial < full
    assert load_stlpips_weights()["lin0.model.1.weight"].sum() > 0  # cache left untouched


def test_missing_stlpips_is_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "stlpips_pytorch" else real(name, *a))
    with pytest.raises(AsyncVidError, match=r"pip install .asyncvid\[eval\]. \(or stlpips-pytorch==0.0.2\)") as err:
        stlpips_weights_path()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------ CLIP score

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random 2-layer CLIP and the repo's offline byte-level tokenizer, saved as a folder."""
    from transformers import CLIPConfig, CLIPModel

    from asyncvid.catalog.presets import byte_level_tokenizer

    tok = byte_level_tokenizer()
    common = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(common, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(common, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_clip_score_on_random_weights(tiny_clip):
    clip = moving_square(frames=4)
    score = clip_score(clip, "a red square moving right", tiny_clip)
    assert math.isfinite(score) and 0.0 <= score <= 100.0
    assert clip_score(clip, "a red square moving right", tiny_clip) == score
    fidelity._CLIP_CACHE.clear()  # a fresh load gives the same number
    assert clip_score(clip, "a red square moving right", tiny_clip) == score
    a = clip_similarity(clip, "a red square moving right", tiny_clip)
    assert -1.0 <= a <= 1.0
    assert clip_similarity(clip, "a blue circle moving up", tiny_clip) != a
    assert clip_similarity(1.0 - clip, "a red square moving right", tiny_clip) != a
    wide = np.repeat(clip, 2, axis=2)[:, :20]  # 20 x 64: resize + centre-crop path
    assert -1.0 <= clip_similarity(wide, "a red square", tiny_clip) <= 1.0


def test_clip_missing_or_bad_folder(tmp_path):
    with pytest.raises(AsyncVidError, match="not found") as err:
        clip_score(moving_square(2), "x", tmp_path / "nope")
    assert "\n" not in str(err.value)
    with pytest.raises(AsyncVidError, match="cannot load") as err:
        clip_score(moving_square(2), "x", tmp_path)  # exists, but holds no model
    assert "\n" not in str(err.value)


# ------------------------------------------------------------ plot

POINTS = [
    dict(x=1.0, y=40.0, label="a"),
    dict(x=2.0, y=30.0, label="b"),
    dict(x=1.5, y=25.0, label="c"),  # dominated by b
    dict(x=3.0, y=20.0, label="d", hollow=True),
    dict(x=0.5, y=40.0, label="e"),  # dominated by a (same y, slower)
    dict(x=2.5, y=15.0, label="f"),  # dominated by d
]


def test_pareto_front():
    assert [p["label"] for p in pareto_front(POINTS)] == ["a", "b", "d"]
    exact = POINTS + [dict(x=1.0, y=math.inf, label="seq")]
    assert [p["label"] for p in pareto_front(exact)] == ["seq", "b", "d"]


def test_pareto_plot_writes_png(tmp_path):
    points = POINTS + [dict(x=1.0, y=math.inf, label="seq")]
    out = pareto_plot(points, tmp_path / "sub" / "pareto.png", "speedup", "PSNR (dB)", "title")
    assert out == tmp_path / "sub" / "pareto.png"
    assert [p.name for p in out.parent.iterdir()] == ["pareto.png"]  # no temp file left behind
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == SIZE
        colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert POINT_COLOUR in colours and FRONT_COLOUR in colours and (255, 255, 255) in colours

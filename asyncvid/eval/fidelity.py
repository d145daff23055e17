"""Fidelity of an accelerated video against the sequential reference rendered from the same seed.

Clips are numpy arrays ``(F, H, W, 3)``, uint8 (divided by 255) or float in [0, 1].

* :func:`psnr`, :func:`ssim`: per-pixel and local-structure agreement (data range 1).
* :func:`temporal_error`: disagreement of the frame-to-frame *changes*, i.e. flicker and motion
  errors. A clip that is uniformly brighter than the reference scores 0: this is not a per-frame
  error measure, use it next to PSNR/SSIM, not instead of them.
* :class:`PerceptualDistance`: ST-LPIPS (shift-tolerant AlexNet LPIPS), from the trained weights
  shipped in the ``stlpips-pytorch`` pip package, re-implemented here so that neither that package
  nor torchvision is imported.
* :func:`clip_score`: CLIPScore of frames against a prompt, from a local CLIP folder.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AsyncVidError
from ..video import to_float

_C1, _C2 = 0.01 ** 2, 0.03 ** 2  # SSIM constants (K1, K2) at data range 1
_SSIM_WIN, _SSIM_SIGMA = 11, 1.5
LPIPS_MIN_SIDE = 64
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pair(ref, test) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_float(ref, np.float64), to_float(test, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}")
    return a, b


def psnr(ref, test) -> float:
    """PSNR in dB over the whole clip; ``math.inf`` for identical clips."""
    a, b = _pair(ref, test)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gauss_1d(size: int, sigma: float) -> torch.Tensor:
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(k ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_frame(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """SSIM map of one frame, ``x``/``y`` shaped (3, H, W); separable Gaussian, valid region."""
    stack = torch.stack([x, y, x * x, y * y, x * y]).reshape(15, 1, *x.shape[1:])
    blur = F.conv2d(stack, g.view(1, 1, 1, -1))
    blur = F.conv2d(blur, g.view(1, 1, -1, 1))
    mx, my, exx, eyy, exy = blur.reshape(5, 3, *blur.shape[2:])
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    num = (2 * mx * my + _C1) * (2 * sxy + _C2)
    den = (mx * mx + my * my + _C1) * (sxx + syy + _C2)
    return num / den


def ssim(ref, test) -> float:
    """Mean SSIM over frames and channels (Gaussian 11x11, sigma 1.5, float64, no padding).

    Frames smaller than 11 px on a side use the largest odd window that fits."""
    a, b = _pair(ref, test)
    side = min(a.shape[1], a.shape[2])
    win = _SSIM_WIN if side >= _SSIM_WIN else (side if side % 2 else side - 1)
    g = _gauss_1d(win, _SSIM_SIGMA)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2)
    tb = torch.from_numpy(b).permute(0, 3, 1, 2)
    means = [float(_ssim_frame(x, y, g).mean()) for x, y in zip(ta, tb)]
    return min(1.0, float(np.mean(means)))


def temporal_error(ref, test) -> float:
    """``mean |(test[t+1] - test[t]) - (ref[t+1] - ref[t])|`` over t, pixels and channels.

    Measures how differently the clips change over time (flicker, wrong motion); a constant
    offset of the whole clip scores 0, so it says nothing about per-frame error."""
    a, b = _pair(ref, test)
    if a.shape[0] < 2:
        raise ValueError(f"temporal_error needs at least 2 frames, got {a.shape[0]}")
    return float(np.mean(np.abs(np.diff(b, axis=0) - np.diff(a, axis=0))))


# ---------------------------------------------------------------- ST-LPIPS

_STLPIPS_WEIGHTS: dict[str, torch.Tensor] | None = None


def stlpips_weights_path() -> Path:
    """The trained ST-LPIPS AlexNet file inside the installed ``stlpips_pytorch`` package.

    ``find_spec`` locates the package without executing it (its modules import torchvision)."""
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or spec.origin is None:
        raise AsyncVidError("ST-LPIPS weights not found: pip install 'asyncvid[eval]' (or stlpips-pytorch==0.0.2)")
    path = Path(spec.origin).parent / "weights" / "vST0.0" / "alex_shift_tolerant.pth"
    if not path.is_file():
        raise AsyncVidError(f"ST-LPIPS weights missing at {path}: pip install stlpips-pytorch==0.0.2")
    return path


def load_stlpips_weights() -> dict[str, torch.Tensor]:
    """The state dict, loaded once per process. Shared: copy before modifying."""
    global _STLPIPS_WEIGHTS
    if _STLPIPS_WEIGHTS is None:
        _STLPIPS_WEIGHTS = torch.load(stlpips_weights_path(), weights_only=True, map_location="cpu")
    return _STLPIPS_WEIGHTS


def _blurpool(x: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Anti-aliased downsampling: reflect-pad 2, depthwise binomial blur, stride 2."""
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), filt, stride=2, groups=x.shape[1])


def _alex_features(x: torch.Tensor, w: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The five ReLU outputs of the shift-tolerant AlexNet trunk for ``x`` in [-1, 1]."""
    x = (x - w["scaling_layer.shift"]) / w["scaling_layer.scale"]
    f1 = F.relu(_blurpool(F.conv2d(x, w["net.slice1.0.weight"], w["net.slice1.0.bias"], padding=2),
                          w["net.slice1.1.filt"]))
    h = _blurpool(F.max_pool2d(f1, 3, stride=1), w["net.slice2.4.filt"])
    f2 = F.relu(F.conv2d(h, w["net.slice2.5.weight"], w["net.slice2.5.bias"], padding=2))
    h = _blurpool(F.max_pool2d(f2, 3, stride=1), w["net.slice3.8.filt"])
    f3 = F.relu(F.conv2d(h, w["net.slice3.9.weight"], w["net.slice3.9.bias"], padding=1))
    f4 = F.relu(F.conv2d(f3, w["net.slice4.11.weight"], w["net.slice4.11.bias"], padding=1))
    f5 = F.relu(F.conv2d(f4, w["net.slice5.13.weight"], w["net.slice5.13.bias"], padding=1))
    return [f1, f2, f3, f4, f5]


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


class PerceptualDistance:
    """ST-LPIPS distance between clips (mean over frames; 0 for identical frames)."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 16,
                 weights: dict[str, torch.Tensor] | None = None):
        """``weights`` overrides the packaged state dict (tests, other checkpoints)."""
        src = load_stlpips_weights() if weights is None else weights
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.weights = {k: v.to(self.device, torch.float32) for k, v in src.items()}

    def _prepare(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) in [0, 1] -> (N, 3, H', W') in [-1, 1], short side at least 64 px, because
        the trunk shrinks its input about 8x and the deeper layers need a few pixels to work on."""
        x = torch.from_numpy(frames).to(self.device, torch.float32).permute(0, 3, 1, 2) * 2 - 1
        h, w = x.shape[2:]
        if min(h, w) < LPIPS_MIN_SIDE:
            s = LPIPS_MIN_SIDE / min(h, w)
            size = (max(LPIPS_MIN_SIDE, round(h * s)), max(LPIPS_MIN_SIDE, round(w * s)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(a.shape[0], device=a.device)
        feats = zip(_alex_features(a, self.weights), _alex_features(b, self.weights))
        for i, (fa, fb) in enumerate(feats):
            diff = (_unit(fa) - _unit(fb)) ** 2
            total += F.conv2d(diff, self.weights[f"lin{i}.model.1.weight"]).mean(dim=(1, 2, 3))
        return total.clamp_min(0.0)

    @torch.no_grad()
    def per_frame(self, ref, test) -> np.ndarray:
        """Distance of each frame pair, shape (F,)."""
        a, b = _pair(ref, test)
        out = []
        for i in range(0, a.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            out.append(self._distance(self._prepare(a[sl]), self._prepare(b[sl])).cpu())
        return torch.cat(out).double().numpy()

    def __call__(self, ref, test) -> float:
        return float(self.per_frame(ref, test).mean())


# ---------------------------------------------------------------- CLIP score

_CLIP_CACHE: dict[tuple[str, str], tuple] = {}


def _load_clip(model_dir, device: torch.device):
    path = Path(model_dir)
    if not path.is_dir():
        raise AsyncVidError(f"CLIP model folder not found: {path}")
    key = (str(path.resolve()), str(device))
    if key not in _CLIP_CACHE:
        from transformers import CLIPModel, CLIPTokenizer
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise AsyncVidError(f"cannot load a CLIP model from {path}: {first}") from err
        _CLIP_CACHE[key] = (model.to(device=device, dtype=torch.float32).eval(), tokenizer)
    return _CLIP_CACHE[key]


def _clip_pixels(frames: np.ndarray, size, device: torch.device) -> torch.Tensor:
    """CLIP preprocessing without torchvision: bicubic resize of the short side, centre crop,
    normalise with CLIP's mean/std."""
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.from_numpy(frames).to(device, torch.float32).permute(0, 3, 1, 2)
    h, w = x.shape[2:]
    s = max(th / h, tw / w)
    nh, nw = max(th, round(h * s)), max(tw, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - th) // 2, (nw - tw) // 2
    x = x[:, :, top:top + th, left:left + tw].clamp(0, 1)
    mean = torch.tensor(_CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_similarity(frames, prompt: str, model_dir, device: str | torch.device = "cpu",
                    batch_size: int = 32) -> float:
    """Mean over frames of the cosine between image and prompt embeddings, in [-1, 1]."""
    device = torch.device(device)
    model, tokenizer = _load_clip(model_dir, device)
    arr = to_float(frames, np.float64)
    text = tokenizer([prompt], padding=True, truncation=True, return_tensors="pt",
                     max_length=model.config.text_config.max_position_embeddings).to(device)
    size = model.config.vision_config.image_size
    cosines = []
    for i in range(0, arr.shape[0], batch_size):
        pixels = _clip_pixels(arr[i:i + batch_size], size, device)
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    pixel_values=pixels)
        cosines.append(F.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1).cpu())
    return float(torch.cat(cosines).double().mean())


def clip_score(frames, prompt: str, model_dir, device: str | torch.device = "cpu") -> float:
    """CLIPScore: ``100 * max(0, mean cosine)``, in [0, 100]."""
    return 100.0 * max(0.0, clip_similarity(frames, prompt, model_dir, device))


# ---------------------------------------------------------------- summary

def compare_clips(ref, test, perceptual: PerceptualDistance | None = None) -> dict:
    """PSNR, SSIM, ST-LPIPS (None without ``perceptual``) and temporal error (None for 1 frame)."""
    a, b = _pair(ref, test)
    return {
        "psnr": psnr(a, b),
        "ssim": ssim(a, b),
        "lpips": None if perceptual is None else perceptual(a, b),
        "temporal_error": temporal_error(a, b) if a.shape[0] >= 2 else None,
    }


def finite(x):
    """JSON-safe copy: infinities become "inf"/"-inf", NaN "nan"; recurses into dicts/lists."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x

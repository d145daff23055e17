"""Stable Video Diffusion inputs.

``StableVideoDiffusionPipeline`` resizes its conditioning image itself (to ``height`` x ``width``
for the VAE, to 224 x 224 for the CLIP image encoder), so any size works. It does not convert
modes: a grayscale, palette or RGBA PIL image fails deep inside the VAE or the CLIP processor with
an unrelated-looking error. :func:`conditioning_image` converts such images with PIL's
``convert("RGB")`` (an alpha channel is dropped, not composited), reads image files the way
``diffusers.utils.load_image`` does (EXIF orientation applied, then RGB), and rejects anything else
with one line. Parallel and plain pipelines are then called with the converted image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import AsyncVidError


def conditioning_image(image):
    """An image SVD can condition on: RGB PIL images pass, other PIL modes and local image files
    are converted to RGB, tensors pass through, lists are converted item by item."""
    import PIL.Image
    from diffusers.utils import load_image

    if isinstance(image, list):
        return [conditioning_image(item) for item in image]
    if torch.is_tensor(image):
        return image
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise AsyncVidError(f"conditioning image not found: {path}")
        try:
            return load_image(str(path))
        except PIL.UnidentifiedImageError:
            raise AsyncVidError(f"not an image file: {path}") from None
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    raise AsyncVidError(f"conditioning image must be a PIL image, an image file path or a tensor, got {type(image).__name__}")

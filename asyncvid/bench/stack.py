"""What ``asyncvid bench --stack`` puts on the pipeline before timing it: the accelerations users stack.

``none``; ``fbc[:THRESHOLD]`` (diffusers' FirstBlockCache on the transformer, default 0.05);
``compile`` (``torch.compile`` of the whole denoiser, with torch.compile's defaults: inductor). The
untouched pipeline with a stack is "the feature alone"; a configuration with it is "both"
(``docs/compatibility.md``).
"""

from __future__ import annotations

import torch

from ..errors import AsyncVidError


def parse_stack(text: str) -> tuple[str, float | None]:
    name, _, arg = text.partition(":")
    if name == "fbc":
        try:
            return name, float(arg) if arg else 0.05
        except ValueError:
            raise AsyncVidError(f"--stack fbc:THRESHOLD takes a number, got {text!r}") from None
    if name in ("none", "compile") and not arg:
        return name, None
    raise AsyncVidError(f"unknown --stack {text!r}: expected none, fbc[:THRESHOLD] or compile")


def apply_stack(pipe, text: str):
    """``pipe`` with the stack on (in place where diffusers does it in place)."""
    name, arg = parse_stack(text)
    if name == "fbc":
        from diffusers import FirstBlockCacheConfig

        transformer = getattr(pipe, "transformer", None)
        if transformer is None or not hasattr(transformer, "enable_cache"):
            raise AsyncVidError(f"--stack {text}: {type(pipe).__name__} has no transformer with diffusers' caches")
        transformer.enable_cache(FirstBlockCacheConfig(threshold=arg))
    elif name == "compile":
        attr = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        setattr(pipe, attr, torch.compile(getattr(pipe, attr)))
    return pipe

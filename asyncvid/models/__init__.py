"""Per-UNet-family adapters. ``adapter_for(unet)`` picks one by the UNet's class."""

from __future__ import annotations

from .base import UNetAdapter, UNetCall

_ADAPTERS: list[type[UNetAdapter]] = []


def register_adapter(cls: type[UNetAdapter]) -> type[UNetAdapter]:
    _ADAPTERS.append(cls)
    return cls


def adapter_for(unet) -> UNetAdapter:
    _load_builtin()
    for cls in _ADAPTERS:
        if cls.matches(unet):
            return cls(unet)
    known = ", ".join(c.unet_class.__name__ for c in _ADAPTERS)
    raise TypeError(f"asyncvid has no adapter for {type(unet).__name__} (supported: {known})")


def _load_builtin() -> None:
    if _ADAPTERS:
        return
    from .motion import MotionUNetAdapter

    register_adapter(MotionUNetAdapter)
    from .svd import SpatioTemporalUNetAdapter; register_adapter(SpatioTemporalUNetAdapter)  # noqa: E702


__all__ = ["UNetAdapter", "UNetCall", "adapter_for", "register_adapter"]

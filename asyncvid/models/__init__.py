"""Model-family adapters, one file each. ``adapter_for(model)`` picks one by the model's class."""

from __future__ import annotations

from ..engine.adapter import StageAdapter
from ..errors import AsyncVidError

_ADAPTERS: list[type[StageAdapter]] = []


def register_adapter(cls: type[StageAdapter]) -> type[StageAdapter]:
    """Make a family adapter known to :func:`adapter_for` (third-party families call this too)."""
    if cls not in _ADAPTERS:
        _ADAPTERS.append(cls)
    return cls


def adapter_for(model) -> StageAdapter:
    _load_builtin()
    for cls in _ADAPTERS:
        if cls.matches(model):
            return cls(model)
    known = ", ".join(c.model_class.__name__ for c in _ADAPTERS)
    raise AsyncVidError(f"asyncvid has no adapter for {type(model).__name__} (it knows {known}); "
                        "a family of your own can be added with asyncvid.models.register_adapter")


def _load_builtin() -> None:
    from .motion import MotionUNetAdapter
    from .svd import SpatioTemporalUNetAdapter
    from .wan import WanTransformerAdapter

    register_adapter(MotionUNetAdapter)
    register_adapter(SpatioTemporalUNetAdapter)
    register_adapter(WanTransformerAdapter)


__all__ = ["StageAdapter", "adapter_for", "register_adapter"]

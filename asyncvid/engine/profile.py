"""Per-unit cost and per-cut traffic for a given input shape.

Shapes come from running the units on the meta device (no weights, no FLOPs), so the bytes crossing
every cut are exact before anything is computed. Costs come from timing each unit on real inputs of
that shape; results are cached on disk per (model config, shape, device, dtype, threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from ..distributed.transport import layout_of
from ..models.base import UNetAdapter
from .units import Carried


def cache_dir() -> Path:
    return Path(os.environ.get("ASYNCVID_CACHE", Path.home() / ".cache" / "asyncvid")) / "profiles"


def _materialized(module: torch.nn.Module) -> bool:
    return not any(p.is_meta for p in module.parameters())


@contextlib.contextmanager
def _materialize(unet: torch.nn.Module, names, device):
    """Give meta submodules random weights for the duration (timing does not depend on values).

    This lets a rank that holds only its own stage profile every unit, one at a time, without
    ever holding the whole UNet.
    """
    restored = []
    for name in names:
        try:
            module = unet.get_submodule(name)
        except AttributeError:
            continue
        if any(p.is_meta for p in module.parameters()):
            module.to_empty(device=device)
            with torch.no_grad():
                for p in module.parameters():
                    p.normal_(0.0, 0.02)
            restored.append(module)
    try:
        yield
    finally:
        for module in restored:
            module.to("meta")


def _walk(adapter: UNetAdapter, args: tuple, kwargs: dict, timed: bool, reps: int = 2) -> tuple[list[int], list[float]]:
    """Run every unit once; return bytes of the state after each unit and (if ``timed``) seconds per unit."""
    call = adapter.split_call(args, kwargs)
    device = call.sample.device
    real = timed and device.type != "meta"
    with _materialize(adapter.unet, adapter.shared_modules if real else (), device):
        ctx = adapter.context(call.sample.shape, call.timestep, call.cond)

    state = adapter.input_state(call.sample)
    out_bytes, costs = [], []
    for unit in adapter.units():
        if timed:
            with _materialize(adapter.unet, unit.modules, device), _materialize(adapter.unet, adapter.shared_modules, device):
                state, cost = _time_unit(unit, ctx, state, reps)
            costs.append(cost)
        else:
            state = unit.run(ctx, state)
        out_bytes.append(layout_of(state.tensors()).nbytes())
    return out_bytes, costs


def _time_unit(unit, ctx, state, reps):
    result = unit.run(ctx, state)  # warm-up (allocator, kernels)
    start = time.perf_counter()
    for _ in range(reps):
        result = unit.run(ctx, state)
    return result, (time.perf_counter() - start) / reps


@torch.no_grad()
def cut_bytes(adapter_cls: type[UNetAdapter], unet: torch.nn.Module, args: tuple, kwargs: dict) -> list[int]:
    """Bytes of the carried state after each unit, computed on the meta device."""
    from torch.utils._pytree import tree_map

    with torch.device("meta"):
        meta_unet = type(unet).from_config(unet.config)
    meta_unet.to("meta")  # some layers build tensors with legacy constructors that ignore the default device
    to_meta = lambda x: x.to("meta") if torch.is_tensor(x) else x  # noqa: E731
    sizes, _ = _walk(adapter_cls(meta_unet), tree_map(to_meta, args), tree_map(to_meta, kwargs), timed=False)
    return sizes


def _cache_key(unet, args, kwargs) -> str:
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten((args, kwargs))
    shapes = [(tuple(x.shape), str(x.dtype), x.device.type) if torch.is_tensor(x) else repr(x) for x in leaves]
    blob = json.dumps([type(unet).__name__, dict(unet.config), shapes, torch.get_num_threads(), torch.__version__],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@torch.no_grad()
def unit_costs(adapter: UNetAdapter, args: tuple, kwargs: dict, use_cache: bool = True) -> list[float]:
    """Seconds per unit on this rank's device and thread count (the UNet must hold all its weights)."""
    path = cache_dir() / f"{_cache_key(adapter.unet, args, kwargs)}.json"
    if use_cache and path.exists():
        try:
            return json.loads(path.read_text())["costs"]
        except (ValueError, KeyError):
            pass
    _, costs = _walk(adapter, args, kwargs, timed=True)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"units": [u.name for u in adapter.units()], "costs": costs}))
        os.replace(tmp, path)
    return costs


def initial_bytes(adapter: UNetAdapter, sample: torch.Tensor) -> int:
    return layout_of(Carried(sample).tensors()).nbytes()

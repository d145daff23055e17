"""Per-unit cost and per-cut traffic for a given input shape.

Shapes come from running the units on the meta device (no weights, no FLOPs), so the bytes crossing
every cut are exact before anything is computed. Costs come from timing each unit on real inputs of
that shape; results are cached on disk per (model config, shape, device, dtype, threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json

import torch

from ..distributed.transport import layout_of
from ..engine.adapter import DenoiserCall, StageAdapter
from ..engine.units import Carried
from ..utils import atomic_write, cache_dir
from .clock import now


def _materialized(module: torch.nn.Module) -> bool:
    return not any(p.is_meta for p in module.parameters())


@contextlib.contextmanager
def _materialize(unet: torch.nn.Module, names, device):
    """Give meta submodules random weights for the duration (timing does not depend on values).

    This lets a rank that holds only its own stage profile every unit, one at a time, without
    ever holding the whole UNet.
    """
    restored = []
    direct = [(n, p.requires_grad) for n, p in unet.named_parameters(recurse=False) if p.is_meta]  # Wan's head table
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
    for name, grad in direct:
        real = torch.empty_like(getattr(unet, name), device=device).normal_(0.0, 0.02)
        setattr(unet, name, torch.nn.Parameter(real, requires_grad=grad))
    try:
        yield
    finally:
        for module in restored:
            module.to("meta")
        for name, grad in direct:
            setattr(unet, name, torch.nn.Parameter(getattr(unet, name).to("meta"), requires_grad=grad))


def _walk(adapter: StageAdapter, call: DenoiserCall, timed: bool, reps: int = 2) -> tuple[list[int], list[float]]:
    """Run every unit once; return bytes of the state after each unit and (if ``timed``) seconds per unit."""
    device = call.sample.device
    real = timed and device.type != "meta"
    with _materialize(adapter.model, adapter.shared_modules if real else (), device):
        ctx = adapter.context(call.sample.shape, call.timestep, call.cond)

    state = adapter.input_state(call.sample)
    out_bytes, costs = [], []
    for unit in adapter.units():
        if timed:
            with _materialize(adapter.model, unit.modules, device), _materialize(adapter.model, adapter.shared_modules, device):
                state, cost = _time_unit(unit, ctx, state, reps)
            costs.append(cost)
        else:
            state = unit.run(ctx, state)
        out_bytes.append(layout_of(state.tensors()).nbytes())
    return out_bytes, costs


def _time_unit(unit, ctx, state, reps):
    result = unit.run(ctx, state)  # warm-up (allocator, kernels)
    device = state.h.device
    start = now(device)
    for _ in range(reps):
        result = unit.run(ctx, state)
    return result, (now(device) - start) / reps


def layerwise_compute_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype a layer computes in when diffusers' layerwise casting stores its weights in another
    (float8 weights, cast as the layer runs); None for a layer without it."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook("layerwise_casting") if registry is not None else None
    return hook.compute_dtype if hook is not None else None


def _cast_for_compute(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """Parameters stored in one dtype and computed in another: name -> the dtype they compute in."""
    out = {}
    for prefix, module in model.named_modules():
        dtype = layerwise_compute_dtype(module)
        if dtype is not None:
            for name, _ in module.named_parameters(recurse=False):
                out[f"{prefix}.{name}" if prefix else name] = dtype
    return out


@torch.no_grad()
def cut_bytes(adapter_cls: type[StageAdapter], unet: torch.nn.Module, call: DenoiserCall) -> list[int]:
    """Bytes of the carried state after each unit, computed on the meta device."""
    from torch.utils._pytree import tree_map

    with torch.device("meta"):
        meta_unet = type(unet).from_config(unet.config)
    meta_unet.to("meta")  # some layers build tensors with legacy constructors that ignore the default device
    # the same dtype per tensor as the real model (fp16/bf16 pipelines; modules kept in fp32 stay so);
    # buffers too: a float32 positional table would promote a half hidden state
    real = {name: t.dtype for name, t in [*unet.named_parameters(), *unet.named_buffers()]}
    real.update(_cast_for_compute(unet))
    for name, t in [*meta_unet.named_parameters(), *meta_unet.named_buffers()]:
        if name in real and t.dtype != real[name]:
            t.data = t.data.to(real[name])
    to_meta = lambda x: x.to("meta") if torch.is_tensor(x) else x  # noqa: E731
    meta_call = DenoiserCall(*tree_map(to_meta, (call.sample, call.timestep, call.cond)), call.return_dict)
    sizes, _ = _walk(adapter_cls(meta_unet), meta_call, timed=False)
    return sizes


def _cache_key(unet, call: DenoiserCall) -> str:
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten((call.sample, call.timestep, call.cond))
    shapes = [(tuple(x.shape), str(x.dtype), x.device.type) if torch.is_tensor(x) else repr(x) for x in leaves]
    blob = json.dumps([type(unet).__name__, dict(unet.config), shapes, torch.get_num_threads(), torch.__version__],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@torch.no_grad()
def unit_costs(adapter: StageAdapter, call: DenoiserCall, use_cache: bool = True) -> list[float]:
    """Seconds per unit on this rank's device and thread count (the UNet must hold all its weights)."""
    path = cache_dir() / "profiles" / f"{_cache_key(adapter.model, call)}.json"
    if use_cache and path.exists():
        try:
            return json.loads(path.read_text())["costs"]
        except (ValueError, KeyError):
            pass
    _, costs = _walk(adapter, call, timed=True)
    if use_cache:
        atomic_write(path, json.dumps({"units": [u.name for u in adapter.units()], "costs": costs}))
    return costs


def initial_bytes(adapter: StageAdapter, sample: torch.Tensor) -> int:
    return layout_of(Carried(sample).tensors()).nbytes()

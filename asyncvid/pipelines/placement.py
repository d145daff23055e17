"""Where the denoiser's weights live: which modules a stage keeps, releasing the others, gathering them
back, and loading only a stage's modules from a checkpoint.

Each rank keeps its stage's units plus the adapter's shared modules (time embedding and the like,
which every rank needs to build its own per-step context); everything else goes to the ``meta``
device. Stage-only loading builds the denoiser on the meta device from its config and then reads,
for each kept module, only that module's tensors from safetensors (``safe_open`` reads one tensor
at a time), so no rank ever materialises the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from ..distributed.topology import Topology
from ..engine.adapter import StageAdapter
from ..engine.split import SplitPlan
from ..errors import AsyncVidError


def stage_modules(adapter: StageAdapter, split: SplitPlan, stage: int) -> list[str]:
    """Module paths (relative to the denoiser) that ``stage`` needs: its units' and the shared ones."""
    keep = list(adapter.shared_modules)
    for i, unit in enumerate(adapter.units()):
        if split.stage_of(i) == stage:
            keep += [m for m in unit.modules if m not in keep]
    return keep


def _get(root, name):
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def release_weights(pipe, adapter: StageAdapter, split: SplitPlan, topo: Topology, device, also_keep=()) -> None:
    """Keep only this rank's stage (plus shared modules) of the denoiser; workers drop the other components
    but those in ``also_keep`` (a pipeline's other denoisers, released on their own)."""
    model = adapter.model
    keep = set(stage_modules(adapter, split, topo.stage))
    for i, unit in enumerate(adapter.units()):
        if split.stage_of(i) != topo.stage:
            for name in unit.modules:
                if name not in keep:
                    model.get_submodule(name).to("meta")
    for name in keep:
        module = _get(model, name)
        if module is not None:
            module.to(device)
    kept = [model, *also_keep]
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and all(component is not m for m in kept):
            component.to(device if topo.is_driver else "meta")
    return_freed_memory()


def return_freed_memory() -> None:
    """Give the heap memory of released weights back to the OS (glibc keeps freed small and mid-size
    blocks in its arenas otherwise, so the rank's resident memory would not drop)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def gather_weights(adapter: StageAdapter, split: SplitPlan, topo: Topology, device) -> None:
    """Undo :func:`release_weights`: every stage sends its units' tensors to the driver, which
    re-materialises them. Every rank of the stage group calls this (after the driver's ``UNDO``)."""
    model, driver = adapter.model, topo.stage_rank(0)
    for i, unit in enumerate(adapter.units()):
        owner = topo.stage_rank(split.stage_of(i))
        if owner == driver:
            continue
        for name in unit.modules:
            module = model.get_submodule(name)
            if topo.rank == owner:
                for tensor in module.state_dict().values():
                    dist.send(tensor.contiguous(), dst=driver)
            elif topo.rank == driver:
                module.to_empty(device=device)
                for tensor in module.state_dict(keep_vars=True).values():
                    dist.recv(tensor.data, src=owner)


def materialized_parameters(module: torch.nn.Module) -> int:
    """Number of parameters this process really holds (meta parameters excluded)."""
    return sum(p.numel() for p in module.parameters() if not p.is_meta)


def weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files of a diffusers model folder (single file or sharded with an index)."""
    stem = "diffusion_pytorch_model"
    suffix = f".{variant}" if variant else ""
    index = folder / f"{stem}{suffix}.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / f"{stem}{suffix}.safetensors"
    if single.exists():
        return [single]
    raise AsyncVidError(f"no safetensors weights in {folder} (expected {single.name} or a sharded index)")


class TensorSource:
    """Key -> file lookup across several safetensors files (e.g. a UNet and a motion adapter)."""

    def __init__(self, files: list[Path]):
        self.where: dict[str, Path] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    self.where.setdefault(key, path)

    def tensor(self, key: str) -> torch.Tensor | None:
        """One tensor by its full key, or None."""
        if key not in self.where:
            return None
        with safe_open(str(self.where[key]), framework="pt") as f:
            return f.get_tensor(key)

    def module_state(self, prefix: str) -> dict[str, torch.Tensor]:
        wanted = [k for k in self.where if k.startswith(prefix + ".")]
        by_file: dict[Path, list[str]] = {}
        for key in wanted:
            by_file.setdefault(self.where[key], []).append(key)
        state = {}
        for path, keys in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for key in keys:
                    state[key[len(prefix) + 1 :]] = f.get_tensor(key)
        return state


def load_modules(root: torch.nn.Module, names, source: TensorSource, device, dtype=None) -> None:
    """Materialise ``root.<name>`` for each name from ``source`` (strict: every tensor must be there).
    A module with no meta tensors was built for real by the family's loader (it holds buffers that are
    computed, not stored, such as Wan's rotary tables): it is moved, not reloaded."""
    for name in names:
        try:
            module = root.get_submodule(name)
        except AttributeError:
            continue
        tensors = [*module.parameters(), *module.buffers()]
        if not tensors:
            continue
        if not any(t.is_meta for t in tensors):
            module.to(device=device, dtype=dtype)
            continue
        state = source.module_state(name)
        module.to_empty(device=device)
        missing, unexpected = module.load_state_dict(state, strict=False)
        persistent_missing = [k for k in missing if k in dict(module.named_parameters())]
        if persistent_missing:
            raise AsyncVidError(f"checkpoint has no weights for {name}.{persistent_missing[0]}")
        if dtype is not None:
            module.to(dtype)


def load_direct_tensors(root: torch.nn.Module, source: TensorSource, device, dtype=None) -> None:
    """Materialise the parameters and buffers held by ``root`` itself, outside any submodule (Wan's
    output ``scale_shift_table``): every stage may need them, and they are small."""
    for name, tensor in [*root.named_parameters(recurse=False), *root.named_buffers(recurse=False)]:
        if not tensor.is_meta:
            continue
        value = source.tensor(name)
        if value is None:
            raise AsyncVidError(f"checkpoint has no weights for {name}")
        value = value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
        if isinstance(tensor, torch.nn.Parameter):
            setattr(root, name, torch.nn.Parameter(value, requires_grad=tensor.requires_grad))
        else:
            setattr(root, name, value)

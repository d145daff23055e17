"""Load only some submodules of a UNet from a diffusers folder, straight from safetensors.

The UNet is built on the meta device from its config; then, for each module this rank keeps, only
that module's tensors are read (``safe_open`` reads one tensor at a time) and assigned. No rank
ever materialises the whole UNet.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import AsyncVidError


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
    """Materialise ``root.<name>`` for each name from ``source`` (strict: every tensor must be there)."""
    for name in names:
        try:
            module = root.get_submodule(name)
        except AttributeError:
            continue
        if not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
            continue
        state = source.module_state(name)
        module.to_empty(device=device)
        missing, unexpected = module.load_state_dict(state, strict=False)
        persistent_missing = [k for k in missing if k in dict(module.named_parameters())]
        if persistent_missing:
            raise AsyncVidError(f"checkpoint has no weights for {name}.{persistent_missing[0]}")
        if dtype is not None:
            module.to(dtype)

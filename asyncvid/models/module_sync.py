"""Module state a pipeline or a user changes on the driver's denoiser between calls, and its copy
on the other ranks.

Diffusers pipelines change the denoiser's modules in place: PAG installs perturbed-attention
processors at every call and restores the old ones after it, ``set_ip_adapter_scale`` writes the
IP-Adapter processors' ``scale``, ``set_adapters`` / ``disable_lora`` change the LoRA layers'
scaling and active adapters. A worker holds its own copy of those modules, so the driver describes
their state (:func:`synced_state`, plain values only) at the start of each denoising pass and the
worker applies it (:func:`apply_synced_state`) before it computes.

What cannot be copied that way (a block replaced by another class, as ``enable_free_noise`` does;
an attention processor that holds weights swapped for another; LoRA weights fused into the base
weights) is in :func:`fixed_state`: the hook refuses, in one line, a pass after it changed.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch

from ..engine.adapter import StageAdapter
from .pag_parts import pag_layout


def _lora_layer(module) -> bool:
    return isinstance(getattr(module, "scaling", None), dict) and hasattr(module, "active_adapters")


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def synced_state(model: torch.nn.Module) -> dict[str, Any]:
    """Per module: the attention processor (a weightless processor as its class and attributes; a
    processor with weights as its ``scale``) and a LoRA layer's scaling, active adapters, disabled flag."""
    processors, scales, lora = {}, {}, {}
    for name, module in model.named_modules():
        processor = getattr(module, "processor", None)
        if processor is not None:
            if isinstance(processor, torch.nn.Module):
                scales[name] = copy.deepcopy(getattr(processor, "scale", None))  # set_ip_adapter_scale edits in place
            else:
                cls = type(processor)
                attrs = {k: copy.deepcopy(v) for k, v in vars(processor).items() if _plain(v)}
                processors[name] = (cls.__module__, cls.__qualname__, attrs)
        if _lora_layer(module):
            lora[name] = (dict(module.scaling), list(module.active_adapters), bool(module.disable_adapters))
    return {"processors": processors, "scales": scales, "lora": lora}


def fixed_state(model: torch.nn.Module) -> tuple:
    """What the other ranks cannot follow: module classes, processors holding weights, fused LoRA."""
    state = []
    for name, module in model.named_modules():
        entry = [name, type(module).__name__]
        processor = getattr(module, "processor", None)
        if isinstance(processor, torch.nn.Module):
            entry.append(type(processor).__name__)
        elif processor is not None and type(processor).__module__.split(".")[0] != "diffusers":
            entry.append(f"{type(processor).__module__}.{type(processor).__qualname__}")  # not rebuilt elsewhere
        if _lora_layer(module):
            entry.append(repr(getattr(module, "merged_adapters", None)))
        state.append(tuple(entry))
    return tuple(state)


def first_difference(before: tuple, after: tuple) -> str:
    for old, new in zip(before, after):
        if old != new:
            return f"{new[0] or 'the model'} ({' '.join(map(str, old[1:]))} -> {' '.join(map(str, new[1:]))})"
    return "modules were added or removed"


def _processor(module_path: str, qualname: str, attrs: dict):
    if module_path.split(".")[0] not in ("diffusers", "asyncvid"):  # only known processors are rebuilt by name
        raise ValueError(f"attention processor {module_path}.{qualname} is not one of diffusers' or asyncvid's")
    cls = getattr(importlib.import_module(module_path), qualname)
    processor = cls()
    vars(processor).update(attrs)
    return processor


def apply_synced_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Make this rank's modules match the driver's :func:`synced_state`."""
    for name, (module_path, qualname, attrs) in state["processors"].items():
        module = model.get_submodule(name)
        current = module.processor
        same_class = (type(current).__module__, type(current).__qualname__) == (module_path, qualname)
        if not same_class or {k: v for k, v in vars(current).items() if _plain(v)} != attrs:
            module.processor = _processor(module_path, qualname, attrs)
    for name, scale in state["scales"].items():
        processor = model.get_submodule(name).processor
        if hasattr(processor, "scale"):
            processor.scale = scale
    for name, (scaling, active, disabled) in state["lora"].items():
        module = model.get_submodule(name)
        if list(module.active_adapters) != active:
            module.set_adapter(active)
        module.scaling.update(scaling)
        if bool(module.disable_adapters) != disabled:
            module.enable_adapters(not disabled)


class DiffusersAdapter(StageAdapter):
    """Base of the diffusers family adapters: copies the driver's module state to every rank."""

    def module_setup(self) -> dict[str, Any]:
        return synced_state(self.model)

    def apply_module_setup(self, setup: dict[str, Any]) -> None:
        apply_synced_state(self.model, setup)

    def guidance_layout(self, setup, degree):
        """PAG's processors cut the batch into their branches themselves: each CFG group gets
        processors for the branches it holds (``pag_parts.py``); otherwise equal parts."""
        return pag_layout(setup, degree) or super().guidance_layout(setup, degree)

"""What else a user stacked on the pipeline's denoiser, met before any work (``docs/compatibility.md``).

``parallelize`` calls :func:`prepare_denoisers` on every rank before its first collective call: a
torch.compile'd denoiser is unwrapped (its stage is compiled again per rank, see :func:`compile_stage`),
and what does not combine with stages is refused in one line naming the feature and what to do.
Every rank holds the same pipeline, so every rank refuses alike and none is left waiting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..engine.block_cache import MAGNITUDE, BlockCache
from ..errors import AsyncVidError
from ..planner.profile import layerwise_compute_dtype

#: diffusers' hook names (``diffusers/hooks/*.py``) -> the feature a user turned on
CACHE_HOOKS = {
    "fbc_leader_block_hook": "FirstBlockCache", "fbc_block_hook": "FirstBlockCache",
    "taylorseer_cache": "TaylorSeerCache", "mag_cache_leader_block_hook": "MagCache",
    "mag_cache_block_hook": "MagCache", "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "faster_cache_denoiser": "FasterCache", "faster_cache_block": "FasterCache",
    "sea_cache_root": "SeaCache", "sea_cache_leader_block": "SeaCache", "sea_cache_block": "SeaCache",
    "text_kv_cache_transformer": "TextKVCache", "text_kv_cache_block": "TextKVCache",
}
OFFLOAD_HOOKS = {"group_offloading": "group offloading (enable_group_offload)",
                 "lazy_prefetch_group_offloading": "group offloading (enable_group_offload)"}


def denoisers_of(pipe) -> list[torch.nn.Module]:
    """The pipeline's denoiser: ``pipe.unet`` (AnimateDiff, SVD) or ``pipe.transformer`` (Wan); two for
    a pipeline with two experts (Wan 2.2 A14B: ``transformer`` and ``transformer_2``)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return [unet]
    experts = [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]
    if not experts:
        raise AsyncVidError(f"{type(pipe).__name__} has no denoiser to parallelize (no unet or transformer)")
    return experts


def _compiled(module) -> bool:
    return isinstance(module, torch._dynamo.eval_frame.OptimizedModule)


BLOCK_UNIT = re.compile(r"^(blocks|transformer_blocks|single_transformer_blocks)\.\d+$")


@dataclass
class Stacked:
    """What :func:`prepare_denoisers` found: compile options, and diffusers cache configs taken over."""

    compile: Any = None  # None: no compile; True or torch.compile's keyword arguments
    caches: dict[str, Any] = field(default_factory=dict)  # pipeline attribute -> First Block / Mag cache config

    def block_cache(self, adapter, attr: str) -> BlockCache | None:
        """The engine's block cache for a denoiser whose First Block or Mag cache asyncvid took over."""
        config = self.caches.get(attr)
        if config is None:
            return None
        blocks = [i for i, unit in enumerate(adapter.units()) if BLOCK_UNIT.match(unit.name)]
        if len(blocks) < 2:
            raise AsyncVidError(f"{type(config).__name__} on pipe.{attr} ({type(adapter.model).__name__}): asyncvid "
                                "finds no transformer blocks to cache")
        if type(config).__name__ == "MagCacheConfig":
            return BlockCache(config.threshold, blocks[0], blocks[-1] + 1, MAGNITUDE, config.mag_ratios,
                              config.max_skip_steps, int(config.retention_ratio * config.num_inference_steps + 0.5),
                              config.num_inference_steps)
        return BlockCache(float(config.threshold), blocks[0], blocks[-1] + 1)

    def options_for(self, options, adapter, plan, attr: str):
        """``options`` with the block cache of the denoiser at ``attr``, if asyncvid took one over."""
        cache = self.block_cache(adapter, attr)
        if cache is None:
            return options
        a, b = plan.ranges[0]
        if not a <= cache.first < b:
            raise AsyncVidError(f"{type(self.caches[attr]).__name__} needs the first block on the driver's stage: "
                                f"give stage 0 at least {plan.unit_names[cache.first]}")
        return replace(options, cache=cache)

    def restore(self, pipe) -> None:
        """Give the caches back to diffusers (``ParallelPipeline.undo``)."""
        for attr, config in self.caches.items():
            getattr(pipe, attr).enable_cache(config)


def prepare_denoisers(pipe, compile_options) -> Stacked:
    """Unwrap torch.compile'd denoisers (``pipe.unet = torch.compile(pipe.unet)``), take over a First
    Block or Mag cache (the engine runs it across the stages: ``engine/block_cache.py``), refuse what
    does not combine with stages."""
    found = Stacked(compile_options)
    for attr in ("unet", "transformer", "transformer_2"):
        module = getattr(pipe, attr, None)
        if module is not None and _compiled(module):
            # The whole-model graph cannot be cut across ranks; each rank compiles its own blocks instead.
            setattr(pipe, attr, module._orig_mod)
            if found.compile is None:
                found.compile = {}
        module = getattr(pipe, attr, None)
        if module is None:
            continue
        config = getattr(module, "_cache_config", None)
        kind = type(config).__name__
        if kind in ("FirstBlockCacheConfig", "MagCacheConfig"):
            if getattr(pipe, "transformer_2", None) is not None:
                raise AsyncVidError(f"{kind} with two experts (transformer and transformer_2) is not "
                                    "supported by asyncvid yet: disable_cache() on both before parallelize")
            if getattr(config, "calibrate", False):
                raise AsyncVidError("MagCacheConfig(calibrate=True) with asyncvid: calibrate on the untouched pipeline "
                                    "(it skips nothing), then pass the printed mag_ratios")
            module.disable_cache()  # its hooks leave the blocks; the engine decides for every stage
            found.caches[attr] = config
        refuse_unsupported(module, attr)
    if getattr(pipe, "_all_hooks", None):
        raise AsyncVidError("model CPU offloading (enable_model_cpu_offload / enable_sequential_cpu_offload) does not "
                            "combine with asyncvid: each rank already holds only its stage; call parallelize on "
                            "a pipeline without it")
    return found


def refuse_unsupported(model: torch.nn.Module, attr: str) -> None:
    """One line for the first feature on ``model`` that asyncvid's stages cannot run (see the module doc)."""
    name = f"pipe.{attr} ({type(model).__name__})"
    config = getattr(model, "_cache_config", None)
    cache = type(config).__name__ if config is not None else None
    for path, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        hooks = getattr(registry, "hooks", {}) if registry is not None else {}
        cache = cache or next((CACHE_HOOKS[h] for h in hooks if h in CACHE_HOOKS), None)
        if cache is not None:
            raise AsyncVidError(
                f"{cache} on {name} does not combine with asyncvid's stages yet (each rank holds only some "
                f"blocks, and the cache decides for all of them): call pipe.{attr}.disable_cache() (or remove "
                "the hook) before parallelize; docs/compatibility.md lists what works")
        for hook in hooks:
            if hook in OFFLOAD_HOOKS:
                raise AsyncVidError(f"{OFFLOAD_HOOKS[hook]} on {name} does not combine with asyncvid: each rank "
                                    "already holds only its stage's weights; call parallelize without it")
        if getattr(module, "_hf_hook", None) is not None:
            raise AsyncVidError(f"accelerate hooks (CPU offloading or a device_map) on {name}{' at ' + path if path else ''} "
                                "do not combine with asyncvid: load the model without them; each rank holds only its stage")
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise AsyncVidError(f"quantized weights on {name} are not supported by asyncvid yet: load the model "
                            "unquantized (each rank holds only its stage's weights)")


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in: its weights' (``model.dtype``), or with diffusers' layerwise
    casting (weights stored in float8, cast per layer) the dtype the layers are cast to."""
    cast = (layerwise_compute_dtype(m) for m in model.modules())
    return next((dtype for dtype in cast if dtype is not None), model.dtype)


def compile_stage(adapter, plan, stage: int, options) -> list[str]:
    """torch.compile each module of this rank's units in place (``nn.Module.compile``), with ``options``
    (True or a dict of torch.compile's keyword arguments); returns the compiled module names. The
    shared modules (time and text embeddings) stay eager: they run once per call."""
    if options is None or options is False:
        return []
    kwargs = {} if options is True else dict(options)
    a, b = plan.ranges[stage]
    names = []
    for unit in adapter.units()[a:b]:
        for name in unit.modules:
            module = adapter.model.get_submodule(name)
            if getattr(module, "_compiled_call_impl", None) is None:  # compile_repeated_blocks already did it
                module.compile(**kwargs)
            names.append(name)
    return names

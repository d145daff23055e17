"""Adapter for Wan's video transformer, ``WanTransformer3DModel`` (Wan 2.1 and 2.2, diffusers 0.42).

Units mirror :meth:`WanTransformer3DModel.forward`: the patch embedding (``patch_embedding``, a
strided Conv3d, then the flatten of the (B, D, F', H', W') grid to a (B, F'*H'*W', D) token
sequence), one unit per transformer block ``blocks.i``, and the output head (``norm_out`` modulated
by the model's ``scale_shift_table`` and the time embedding, ``proj_out``, then the unpatchify back
to (B, C, F, H, W)). Between units only the token sequence is live: no skips.

The context each rank builds per call is the model's own preamble, from the small shared modules:
``condition_embedder`` (the sinusoidal time projection and its MLP, giving ``temb`` and the six
per-block modulation vectors; the text projection; the CLIP image projection of image-to-video
models, whose tokens go in front of the text tokens) and ``rope`` (the 3D rotary table, a function
of the latent's shape only). The conditioning that crosses ranks is the raw text (and image)
embedding, sent again only when it changes: the prompt's and the negative prompt's calls of a step
are separate call tags, each with its own conditioning.

Timesteps: one per sample, ``(B,)``, all equal (Wan 2.1 and 2.2 A14B), or one per token, ``(B, L)``
(Wan 2.2 TI2V, ``expand_timesteps``: the conditioning frame's tokens get timestep 0). The engine
carries one timestep per call; a per-token timestep travels as its pattern (the timesteps divided by
their largest value, step-invariant conditioning) and is rebuilt as pattern x timestep.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from ..engine.adapter import DenoiserCall
from ..engine.units import Carried, Unit
from ..errors import AsyncVidError
from .module_sync import DiffusersAdapter

NAMES = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image", "return_dict",
         "attention_kwargs")
TEXT_LEN = 512  # Wan's attention takes the last 512 context tokens as text when the model has image inputs
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px: Wan 2.1 image-to-video's image embedding


@dataclass
class WanContext:
    temb: torch.Tensor  # (B, D) or (B, L, D) per token: modulates the output head
    timestep_proj: torch.Tensor  # (B, 6, D) or (B, L, 6, D): the blocks' modulation
    encoder_hidden_states: torch.Tensor  # (B, [image tokens +] text tokens, D)
    rotary_emb: tuple[torch.Tensor, torch.Tensor]
    grid: tuple[int, int, int]  # latent frames, height, width after patching


def _timestep(value, device) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """The call's timestep as (one value, per-entry pattern or None, tokens per sample or None)."""
    t = torch.as_tensor(value, device=device)
    if t.ndim > 2:
        raise AsyncVidError(f"WanTransformer3DModel timestep of shape {tuple(t.shape)}: expected (B,) or (B, tokens)")
    flat = t.reshape(-1)
    seq_len = t.shape[1] if t.ndim == 2 else None
    top = flat.max()
    if bool((flat == flat[0]).all()):
        return flat[:1], None, seq_len
    if not bool(top > 0):
        raise AsyncVidError("WanTransformer3DModel timesteps that differ and are not positive are not supported")
    return top.reshape(1), t / top, seq_len


class WanTransformerAdapter(DiffusersAdapter):
    model_class = WanTransformer3DModel
    shared_modules = ("condition_embedder", "rope")

    def __init__(self, model):
        super().__init__(model)
        self._text_cache: list[tuple] = []  # (text, its version, image, its version, weight versions, projection)
        self._rotary: dict[tuple, Any] = {}  # latent shape -> rotary tables (they depend on the shape only)
        self._time_cache: list[tuple] = []  # (timestep, its version, pattern, tokens, weight versions, embeddings)
    guidance_in_calls = True  # WanPipeline: the prompt's call, then the negative prompt's, per step

    # ----- call and context ---------------------------------------------------------------
    def split_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        if len(args) > len(NAMES):
            raise TypeError(f"WanTransformer3DModel.forward() takes {len(NAMES)} arguments, got {len(args)}")
        bound = dict(zip(NAMES, args))
        for name, value in kwargs.items():
            if name in bound:
                raise TypeError(f"WanTransformer3DModel.forward() got multiple values for argument {name!r}")
            bound[name] = value
        unknown = sorted(set(bound) - set(NAMES))
        if unknown:
            raise TypeError(f"WanTransformer3DModel.forward() got unexpected argument(s): {', '.join(unknown)}")
        missing = [n for n in NAMES[:3] if bound.get(n) is None]
        if missing:
            raise TypeError(f"WanTransformer3DModel.forward() missing argument(s): {', '.join(missing)}")
        scale = (bound.get("attention_kwargs") or {}).get("scale", 1.0)
        if scale != 1.0:  # the model's forward scales its LoRA layers for this call only, on this rank only
            raise AsyncVidError(f"attention_kwargs={{'scale': {scale}}} (a per-call LoRA scale) is not supported "
                                "with asyncvid: set the LoRA scale with set_adapters before the call")
        sample = bound["hidden_states"]
        timestep, pattern, seq_len = _timestep(bound["timestep"], sample.device)
        cond = {
            "encoder_hidden_states": bound["encoder_hidden_states"],
            "encoder_hidden_states_image": bound.get("encoder_hidden_states_image"),
            "timestep_pattern": pattern,  # None: every entry is the call's timestep
            "timestep_tokens": seq_len,  # None: one timestep per sample
        }
        return DenoiserCall(sample, timestep, cond, bound.get("return_dict", True))

    def context(self, sample_shape, timestep, cond) -> WanContext:
        model = self.model
        batch, p = sample_shape[0], model.config.patch_size
        grid = (sample_shape[2] // p[0], sample_shape[3] // p[1], sample_shape[4] // p[2])
        # the rotary table depends on the latent's shape only: a shape-only (meta) stand-in is enough
        key = (tuple(sample_shape), str(getattr(model.rope, "freqs_cos", torch.empty(0)).device))
        rotary_emb = self._rotary.get(key)
        if rotary_emb is None:
            rotary_emb = self._rotary[key] = model.rope(torch.empty(sample_shape, device="meta"))
        seq_len, pattern = cond.get("timestep_tokens"), cond.get("timestep_pattern")
        text = cond["encoder_hidden_states"]
        temb, timestep_proj = self._time_embeddings(timestep, pattern, batch, seq_len, text.dtype)
        ehs = self._projected(text, cond.get("encoder_hidden_states_image"))
        return WanContext(temb, timestep_proj, ehs, rotary_emb, grid)

    def _time_embeddings(self, timestep, pattern, batch: int, seq_len: int | None, dtype):
        """The time embeddings of ``timestep``, kept for the last few timestep tensors seen (held, with
        their write counters, and the embedder's weights' counters): a Wan step's two calls (prompt,
        negative prompt) pass the same timestep, and a worker gets one tensor per step index."""
        weights = tuple(p._version for p in self.model.condition_embedder.parameters())
        for old, version, old_pattern, tokens, old_batch, old_dtype, old_weights, out in self._time_cache:
            if (old is timestep and version == timestep._version and old_pattern is pattern and tokens == seq_len
                    and old_batch == batch and old_dtype == dtype and old_weights == weights):
                return out
        if pattern is not None:
            t = (pattern * timestep.to(pattern.dtype)).flatten()
        else:
            t = timestep.expand(batch * (seq_len or 1))
        temb, timestep_proj = self._time_embedding(t, dtype, seq_len)
        out = temb, timestep_proj.unflatten(2 if seq_len else 1, (6, -1))
        entry = (timestep, timestep._version, pattern, seq_len, batch, dtype, weights, out)
        self._time_cache = [entry] + self._time_cache[:3]
        return out

    def _time_embedding(self, t: torch.Tensor, text_dtype, seq_len: int | None):
        """The time half of ``condition_embedder.forward``, step for step (the text half is cached)."""
        embedder = self.model.condition_embedder
        t = embedder.timesteps_proj(t)
        if seq_len is not None:
            t = t.unflatten(0, (-1, seq_len))
        dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if t.dtype != dtype and dtype != torch.int8:
            t = t.to(dtype)
        temb = embedder.time_embedder(t).to(text_dtype)
        return temb, embedder.time_proj(embedder.act_fn(temb))

    def _projected(self, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """The projected text (image tokens in front) the blocks attend to. It is the same for every
        step of a call tag, and every rank needs it: projecting Wan's 512 text tokens again per call
        costs each stage as much as a block at small latents. Kept for the last few embeddings seen,
        by the tensors themselves (held, so never mistaken for new ones) and their in-place write
        counters, with the projection weights' counters."""
        embedder = self.model.condition_embedder
        weights = tuple(p._version for p in embedder.parameters())
        image_version = None if image is None else image._version
        for old_text, text_version, old_image, old_image_version, old_weights, ehs in self._text_cache:
            if (old_text is text and text_version == text._version and old_image is image
                    and old_image_version == image_version and old_weights == weights):
                return ehs
        ehs = embedder.text_embedder(text)
        if image is not None:
            ehs = torch.concat([embedder.image_embedder(image), ehs], dim=1)
        self._text_cache = [(text, text._version, image, image_version, weights, ehs)] + self._text_cache[:3]
        return ehs

    def _out_channels(self) -> int:
        cfg = self.model.config
        return cfg.out_channels or cfg.in_channels

    def zero_prediction(self, call: DenoiserCall) -> torch.Tensor:
        b, _, f, h, w = call.sample.shape
        return call.sample.new_zeros(b, self._out_channels(), f, h, w)

    def wrap_output(self, eps: torch.Tensor, return_dict: bool):
        return Transformer2DModelOutput(sample=eps) if return_dict else (eps,)

    def example_call(self, batch, frames, height, width, device, dtype, text_len: int = TEXT_LEN) -> DenoiserCall:
        """Latent (B, in_channels, F, H, W) in latent units, the timestep as Wan's pipelines pass it
        ((B,) float32), a text embedding (B, 512, text_dim) and, for image-to-video models, a CLIP
        image embedding (B, 257, image_dim) (FLF2V models with a positional table: two images)."""
        cfg = self.model.config
        sample = torch.randn(batch, cfg.in_channels, frames, height, width, device=device, dtype=dtype)
        kwargs = {"encoder_hidden_states": torch.randn(batch, text_len, cfg.text_dim, device=device, dtype=dtype)}
        if cfg.image_dim is not None:
            images, tokens = (2, cfg.pos_embed_seq_len // 2) if cfg.pos_embed_seq_len else (1, IMAGE_TOKENS)
            kwargs["encoder_hidden_states_image"] = torch.randn(batch * images, tokens, cfg.image_dim, device=device,
                                                                dtype=dtype)
        timestep = torch.full((batch,), 500.0, device=device, dtype=torch.float32)
        return self.split_call((sample, timestep), kwargs)

    # ----- units --------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        units = [Unit("patch_embedding", ("patch_embedding",), self._patch_embedding)]
        for i, block in enumerate(self.model.blocks):
            units.append(Unit(f"blocks.{i}", (f"blocks.{i}",), self._block(block)))
        units.append(Unit("proj_out", ("norm_out", "proj_out"), self._head))
        return units

    def _patch_embedding(self, ctx: WanContext, st: Carried) -> Carried:
        h = self.model.patch_embedding(st.h)  # (B, D, F', H', W')
        return Carried(h.flatten(2).transpose(1, 2).contiguous())  # (B, F'*H'*W', D)

    @staticmethod
    def _block(block):
        def run(ctx: WanContext, st: Carried) -> Carried:
            return Carried(block(st.h, ctx.encoder_hidden_states, ctx.timestep_proj, ctx.rotary_emb))

        return run

    def _head(self, ctx: WanContext, st: Carried) -> Carried:
        model, h, temb = self.model, st.h, ctx.temb
        table = model.scale_shift_table.to(temb.device)
        if temb.ndim == 3:  # per-token timesteps: (B, L, D)
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(h.device), scale.to(h.device)
        h = (model.norm_out(h.float()) * (1 + scale) + shift).type_as(h)
        h = model.proj_out(h)
        (f, gh, gw), (p_t, p_h, p_w) = ctx.grid, model.config.patch_size
        h = h.reshape(h.shape[0], f, gh, gw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return Carried(h.flatten(6, 7).flatten(4, 5).flatten(2, 3))


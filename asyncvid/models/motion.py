"""Adapter for AnimateDiff's ``UNetMotionModel``.

Units are single layers (resnet, spatial attention, motion module) inside the down and up blocks,
their down/upsamplers, the whole mid block, ``conv_in`` and the output head. That granularity lets
3-4 stages balance although the last up block alone is about 28% of the compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNetMotionModel
from diffusers.models.unets.unet_motion_model import UNetMotionOutput
from diffusers.utils.torch_utils import apply_freeu

from ..engine.adapter import DenoiserCall, as_timestep_tensor
from ..engine.units import Carried, Unit
from .module_sync import DiffusersAdapter


@dataclass
class MotionContext:
    emb: torch.Tensor  # (B*F, D): time (+ added) embedding repeated per frame
    encoder_hidden_states: Any  # (B*F, L, D), or (ehs, image_embeds) with IP-adapters
    num_frames: int
    attention_mask: torch.Tensor | None
    cross_attention_kwargs: dict | None
    forward_upsample_size: bool
    down_residuals: tuple | None = None  # ControlNet/SparseCtrl, added to the skips before the mid block
    mid_residual: torch.Tensor | None = None  # ControlNet/SparseCtrl, added after the mid block


RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")


def _freeu_enabled(block) -> bool:
    return bool(
        getattr(block, "s1", None) and getattr(block, "s2", None) and getattr(block, "b1", None) and getattr(block, "b2", None)
    )


class MotionUNetAdapter(DiffusersAdapter):
    model_class = UNetMotionModel
    shared_modules = ("time_proj", "time_embedding", "add_time_proj", "add_embedding", "encoder_hid_proj")

    # ----- call and context ---------------------------------------------------------------
    def split_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        names = ("sample", "timestep", "encoder_hidden_states", "timestep_cond", "attention_mask",
                 "cross_attention_kwargs", "added_cond_kwargs", "down_block_additional_residuals",
                 "mid_block_additional_residual", "return_dict")
        bound = dict(zip(names, args))
        bound.update(kwargs)
        sample = bound["sample"]
        cond = {
            "encoder_hidden_states": bound.get("encoder_hidden_states"),
            "timestep_cond": bound.get("timestep_cond"),
            "attention_mask": bound.get("attention_mask"),
            "cross_attention_kwargs": bound.get("cross_attention_kwargs"),
            "added_cond_kwargs": bound.get("added_cond_kwargs"),
        }
        timestep = as_timestep_tensor(bound["timestep"], sample.device)
        extras = {name: bound[name] for name in RESIDUALS if bound.get(name) is not None}
        if "down_block_additional_residuals" in extras:
            extras["down_block_additional_residuals"] = tuple(extras["down_block_additional_residuals"])
        return DenoiserCall(sample, timestep, cond, bound.get("return_dict", True), extras)

    def context(self, sample_shape, timestep, cond) -> MotionContext:
        unet = self.model
        batch, num_frames = sample_shape[0], sample_shape[2]
        up_factor = 2**unet.num_upsamplers
        # the time embedding's dtype is the UNet's; ``unet.dtype`` would walk every module each step
        dtype = unet.time_embedding.linear_1.weight.dtype
        attention_mask = cond.get("attention_mask")
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(dtype)) * -10000.0).unsqueeze(1)
        t = timestep.expand(batch)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=dtype), cond.get("timestep_cond"))
        added = cond.get("added_cond_kwargs") or {}
        if unet.config.addition_embed_type == "text_time":
            text_embeds, time_ids = added["text_embeds"], added["time_ids"]
            time_embeds = unet.add_time_proj(time_ids.flatten()).reshape((text_embeds.shape[0], -1))
            add_embeds = torch.concat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
            emb = emb + unet.add_embedding(add_embeds)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)
        ehs = cond.get("encoder_hidden_states")
        if unet.encoder_hid_proj is not None and unet.config.encoder_hid_dim_type == "ip_image_proj":
            image_embeds = unet.encoder_hid_proj(added["image_embeds"])
            image_embeds = [e.repeat_interleave(num_frames, dim=0, output_size=e.shape[0] * num_frames) for e in image_embeds]
            ehs = (ehs, image_embeds)
        return MotionContext(
            emb=emb,
            encoder_hidden_states=ehs,
            num_frames=num_frames,
            attention_mask=attention_mask,
            cross_attention_kwargs=cond.get("cross_attention_kwargs"),
            forward_upsample_size=any(s % up_factor != 0 for s in sample_shape[-2:]),
            down_residuals=cond.get("down_block_additional_residuals"),
            mid_residual=cond.get("mid_block_additional_residual"),
        )

    def zero_prediction(self, call: DenoiserCall) -> torch.Tensor:
        b, _, f, h, w = call.sample.shape
        return call.sample.new_zeros(b, self.model.config.out_channels, f, h, w)

    def wrap_output(self, eps: torch.Tensor, return_dict: bool):
        return UNetMotionOutput(sample=eps) if return_dict else (eps,)

    def example_call(self, batch, frames, height, width, device, dtype, text_len: int = 77) -> DenoiserCall:
        cfg = self.model.config
        sample = torch.randn(batch, cfg.in_channels, frames, height, width, device=device, dtype=dtype)
        ehs = torch.randn(batch * frames, text_len, cfg.cross_attention_dim, device=device, dtype=dtype)
        kwargs = {"encoder_hidden_states": ehs}
        if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 size/crop ids
            n_text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(batch, n_text, device=device, dtype=dtype),
                "time_ids": torch.tensor([[height * 8, width * 8, 0, 0, height * 8, width * 8]] * batch,
                                         device=device, dtype=dtype),
            }
        return self.split_call((sample, torch.tensor(500, device=device)), kwargs)

    # ----- units --------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        unet = self.model
        units = [Unit("conv_in", ("conv_in",), self._conv_in)]
        for i, block in enumerate(unet.down_blocks):
            units += self._down_units(f"down_blocks.{i}", block)
        if unet.mid_block is not None:
            units.append(Unit("mid_block", ("mid_block",), self._mid, consumes=RESIDUALS))
        for i, block in enumerate(unet.up_blocks):
            units += self._up_units(f"up_blocks.{i}", block, is_final=i == len(unet.up_blocks) - 1)
        head = tuple(m for m in ("conv_norm_out", "conv_act", "conv_out") if getattr(unet, m, None) is not None)
        units.append(Unit("conv_out", head, self._conv_out))
        return units

    def _conv_in(self, ctx: MotionContext, st: Carried) -> Carried:
        x = st.h  # (B, C, F, H, W)
        x = x.permute(0, 2, 1, 3, 4).reshape((x.shape[0] * ctx.num_frames, -1) + x.shape[3:])
        h = self.model.conv_in(x)
        return Carried(h, (h,))

    def _conv_out(self, ctx: MotionContext, st: Carried) -> Carried:
        unet, h = self.model, st.h
        if unet.conv_norm_out:
            h = unet.conv_act(unet.conv_norm_out(h))
        h = unet.conv_out(h)
        h = h[None, :].reshape((-1, ctx.num_frames) + h.shape[1:]).permute(0, 2, 1, 3, 4)
        return Carried(h, st.skips)

    def _mid(self, ctx: MotionContext, st: Carried) -> Carried:
        """The mid block; ControlNet residuals join here, as in ``UNetMotionModel.forward`` (the
        skips gain the down residuals pairwise, the mid block's output the mid residual)."""
        mid, skips = self.model.mid_block, st.skips
        if ctx.down_residuals is not None:
            skips = tuple(s + r for s, r in zip(skips, ctx.down_residuals))
        kwargs = dict(encoder_hidden_states=ctx.encoder_hidden_states, attention_mask=ctx.attention_mask,
                      cross_attention_kwargs=ctx.cross_attention_kwargs)
        if hasattr(mid, "motion_modules"):
            kwargs["num_frames"] = ctx.num_frames
        h = mid(st.h, ctx.emb, **kwargs)
        if ctx.mid_residual is not None:
            h = h + ctx.mid_residual
        return Carried(h, skips)

    @staticmethod
    def _resnet(resnet, block=None):
        """A resnet; in an up block (``block`` given) it first pops and concatenates a skip."""

        def run(ctx: MotionContext, st: Carried) -> Carried:
            h, skips = st.h, st.skips
            if block is not None:
                res, skips = skips[-1], skips[:-1]
                if _freeu_enabled(block):
                    h, res = apply_freeu(block.resolution_idx, h, res, s1=block.s1, s2=block.s2, b1=block.b1, b2=block.b2)
                h = torch.cat([h, res], dim=1)
            return Carried(resnet(input_tensor=h, temb=ctx.emb), skips)

        return run

    @staticmethod
    def _attention(attn):
        def run(ctx: MotionContext, st: Carried) -> Carried:
            h = attn(hidden_states=st.h, encoder_hidden_states=ctx.encoder_hidden_states,
                     cross_attention_kwargs=ctx.cross_attention_kwargs, attention_mask=ctx.attention_mask,
                     encoder_attention_mask=None, return_dict=False)[0]
            return Carried(h, st.skips)

        return run

    @staticmethod
    def _motion(module, push: bool):
        def run(ctx: MotionContext, st: Carried) -> Carried:
            h = module(st.h, num_frames=ctx.num_frames)
            return Carried(h, st.skips + (h,) if push else st.skips)

        return run

    @staticmethod
    def _downsample(sampler):
        def run(ctx: MotionContext, st: Carried) -> Carried:
            h = sampler(hidden_states=st.h)
            return Carried(h, st.skips + (h,))

        return run

    @staticmethod
    def _upsample(sampler, is_final: bool):
        def run(ctx: MotionContext, st: Carried) -> Carried:
            size = st.skips[-1].shape[2:] if (ctx.forward_upsample_size and not is_final) else None
            return Carried(sampler(hidden_states=st.h, output_size=size), st.skips)

        return run

    def _layers(self, prefix: str, block, up: bool) -> list[Unit]:
        units = []
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            units.append(Unit(f"{prefix}.resnets.{j}", (f"{prefix}.resnets.{j}",), self._resnet(resnet, block if up else None)))
            if attentions is not None:
                name = f"{prefix}.attentions.{j}"
                units.append(Unit(name, (name,), self._attention(attentions[j])))
            name = f"{prefix}.motion_modules.{j}"
            units.append(Unit(name, (name,), self._motion(block.motion_modules[j], push=not up)))
        return units

    def _down_units(self, prefix: str, block) -> list[Unit]:
        units = self._layers(prefix, block, up=False)
        for j, sampler in enumerate(block.downsamplers or []):
            name = f"{prefix}.downsamplers.{j}"
            units.append(Unit(name, (name,), self._downsample(sampler)))
        return units

    def _up_units(self, prefix: str, block, is_final: bool) -> list[Unit]:
        units = self._layers(prefix, block, up=True)
        for j, sampler in enumerate(block.upsamplers or []):
            name = f"{prefix}.upsamplers.{j}"
            units.append(Unit(name, (name,), self._upsample(sampler, is_final)))
        return units

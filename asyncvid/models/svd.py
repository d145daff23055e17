"""Adapter for Stable Video Diffusion's ``UNetSpatioTemporalConditionModel``.

Units mirror :meth:`UNetSpatioTemporalConditionModel.forward` at layer granularity: ``conv_in``
(which also flattens the (B, F, C, H, W) latent to (B*F, C, H, W)), every resnet and spatio-temporal
transformer of the down and up blocks, their down/upsamplers, the whole mid block, and the output
head (``conv_out``, which reshapes back to (B, F, C, H, W)).

The context each rank builds per step is the UNet's own preamble: the time embedding of the
(continuous, float) timestep plus ``add_embedding`` of the sinusoidally projected ``added_time_ids``
(fps, motion bucket, noise augmentation), repeated per frame; the image embedding
(``encoder_hidden_states``, (B, 1, D)) repeated per frame; and ``image_only_indicator``, all zeros
(B, F), from which every spatio-temporal layer reads the frame count. Only the (B, 1, D) embedding
and the (B, n_ids) time ids cross ranks, once per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput

from ..engine.adapter import DenoiserCall, as_timestep_tensor
from ..engine.units import Carried, Unit
from .module_sync import DiffusersAdapter


@dataclass
class SpatioTemporalContext:
    emb: torch.Tensor  # (B*F, D): time + added-time embedding, repeated per frame
    encoder_hidden_states: torch.Tensor  # (B*F, L, D): image embedding repeated per frame
    image_only_indicator: torch.Tensor  # (B, F) zeros; its last dim is the frame count every layer uses
    num_frames: int
    forward_upsample_size: bool


class SpatioTemporalUNetAdapter(DiffusersAdapter):
    model_class = UNetSpatioTemporalConditionModel
    shared_modules = ("time_proj", "time_embedding", "add_time_proj", "add_embedding")

    # ----- call and context ---------------------------------------------------------------
    def split_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        names = ("sample", "timestep", "encoder_hidden_states", "added_time_ids", "return_dict")
        bound = dict(zip(names, args))
        bound.update(kwargs)
        unknown = sorted(set(bound) - set(names))
        if unknown:
            raise TypeError(f"UNetSpatioTemporalConditionModel.forward() got unexpected argument(s): {', '.join(unknown)}")
        sample = bound["sample"]
        cond = {
            "encoder_hidden_states": bound["encoder_hidden_states"],
            "added_time_ids": bound["added_time_ids"],
            # the UNet casts the sinusoidal time projection (always fp32) to the latent's dtype and
            # builds image_only_indicator in it; ranks other than the driver never see the latent
            "sample_dtype": sample.dtype,
        }
        timestep = as_timestep_tensor(bound["timestep"], sample.device)
        return DenoiserCall(sample, timestep, cond, bound.get("return_dict", True))

    def context(self, sample_shape, timestep, cond) -> SpatioTemporalContext:
        unet = self.model
        batch, num_frames = sample_shape[0], sample_shape[1]
        dtype = cond["sample_dtype"]
        added_time_ids = cond["added_time_ids"]
        device = added_time_ids.device
        up_factor = 2**unet.num_upsamplers

        t = timestep.expand(batch)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=dtype))
        time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape((batch, -1)).to(emb.dtype)
        emb = emb + unet.add_embedding(time_embeds)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)
        ehs = cond["encoder_hidden_states"]
        ehs = ehs.repeat_interleave(num_frames, dim=0, output_size=ehs.shape[0] * num_frames)
        return SpatioTemporalContext(
            emb=emb,
            encoder_hidden_states=ehs,
            image_only_indicator=torch.zeros(batch, num_frames, dtype=dtype, device=device),
            num_frames=num_frames,
            forward_upsample_size=any(s % up_factor != 0 for s in sample_shape[-2:]),
        )

    def zero_prediction(self, call: DenoiserCall) -> torch.Tensor:
        b, f, _, h, w = call.sample.shape
        return call.sample.new_zeros(b, f, self.model.config.out_channels, h, w)

    def wrap_output(self, eps: torch.Tensor, return_dict: bool):
        return UNetSpatioTemporalConditionOutput(sample=eps) if return_dict else (eps,)

    def example_call(self, batch, frames, height, width, device, dtype) -> DenoiserCall:
        """Latent (B, F, in_channels, H, W), a continuous timestep as the SVD scheduler gives
        (0.25 * log(sigma), float32), the image embedding (B, 1, D) and the added time ids
        (B, n) = (fps - 1, motion bucket, noise augmentation) for the default SVD call."""
        cfg = self.model.config
        cross = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
        n_ids = cfg.projection_class_embeddings_input_dim // cfg.addition_time_embed_dim
        sample = torch.randn(batch, frames, cfg.in_channels, height, width, device=device, dtype=dtype)
        ehs = torch.randn(batch, 1, cross, device=device, dtype=dtype)
        ids = torch.tensor([6.0, 127.0, 0.02] + [0.0] * max(n_ids - 3, 0), device=device, dtype=dtype)[:n_ids]
        added_time_ids = ids.repeat(batch, 1)
        timestep = torch.tensor(0.5, device=device, dtype=torch.float32)
        return self.split_call((sample, timestep), {"encoder_hidden_states": ehs, "added_time_ids": added_time_ids})

    # ----- units --------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        unet = self.model
        units = [Unit("conv_in", ("conv_in",), self._conv_in)]
        for i, block in enumerate(unet.down_blocks):
            units += self._down_units(f"down_blocks.{i}", block)
        units.append(Unit("mid_block", ("mid_block",), self._mid))
        for i, block in enumerate(unet.up_blocks):
            units += self._up_units(f"up_blocks.{i}", block, is_final=i == len(unet.up_blocks) - 1)
        units.append(Unit("conv_out", ("conv_norm_out", "conv_act", "conv_out"), self._conv_out))
        return units

    def _conv_in(self, ctx: SpatioTemporalContext, st: Carried) -> Carried:
        h = self.model.conv_in(st.h.flatten(0, 1))  # (B, F, C, H, W) -> (B*F, C, H, W)
        return Carried(h, (h,))

    def _conv_out(self, ctx: SpatioTemporalContext, st: Carried) -> Carried:
        unet = self.model
        h = unet.conv_out(unet.conv_act(unet.conv_norm_out(st.h)))
        h = h.reshape(-1, ctx.num_frames, *h.shape[1:])  # back to (B, F, C, H, W)
        return Carried(h, st.skips)

    def _mid(self, ctx: SpatioTemporalContext, st: Carried) -> Carried:
        h = self.model.mid_block(hidden_states=st.h, temb=ctx.emb, encoder_hidden_states=ctx.encoder_hidden_states,
                                image_only_indicator=ctx.image_only_indicator)
        return Carried(h, st.skips)

    @staticmethod
    def _resnet(resnet, push: bool = False, pop: bool = False):
        """A spatio-temporal resnet; in an up block (``pop``) it first pops and concatenates a skip,
        in a down block without attentions (``push``) its output is a skip."""

        def run(ctx: SpatioTemporalContext, st: Carried) -> Carried:
            h, skips = st.h, st.skips
            if pop:
                h, skips = torch.cat([h, skips[-1]], dim=1), skips[:-1]
            h = resnet(h, ctx.emb, image_only_indicator=ctx.image_only_indicator)
            return Carried(h, skips + (h,) if push else skips)

        return run

    @staticmethod
    def _attention(attn, push: bool):
        def run(ctx: SpatioTemporalContext, st: Carried) -> Carried:
            h = attn(st.h, encoder_hidden_states=ctx.encoder_hidden_states,
                     image_only_indicator=ctx.image_only_indicator, return_dict=False)[0]
            return Carried(h, st.skips + (h,) if push else st.skips)

        return run

    @staticmethod
    def _downsample(sampler):
        def run(ctx: SpatioTemporalContext, st: Carried) -> Carried:
            h = sampler(st.h)
            return Carried(h, st.skips + (h,))

        return run

    @staticmethod
    def _upsample(sampler, is_final: bool):
        def run(ctx: SpatioTemporalContext, st: Carried) -> Carried:
            # the UNet forwards the size of the next skip to pop (this block's skips are already
            # popped) when the latent is not a multiple of 2**num_upsamplers
            size = st.skips[-1].shape[2:] if (ctx.forward_upsample_size and not is_final) else None
            return Carried(sampler(st.h, size), st.skips)

        return run

    def _down_units(self, prefix: str, block) -> list[Unit]:
        units = []
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            name = f"{prefix}.resnets.{j}"
            units.append(Unit(name, (name,), self._resnet(resnet, push=attentions is None)))
            if attentions is not None:
                name = f"{prefix}.attentions.{j}"
                units.append(Unit(name, (name,), self._attention(attentions[j], push=True)))
        for j, sampler in enumerate(block.downsamplers or []):
            name = f"{prefix}.downsamplers.{j}"
            units.append(Unit(name, (name,), self._downsample(sampler)))
        return units

    def _up_units(self, prefix: str, block, is_final: bool) -> list[Unit]:
        units = []
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            name = f"{prefix}.resnets.{j}"
            units.append(Unit(name, (name,), self._resnet(resnet, pop=True)))
            if attentions is not None:
                name = f"{prefix}.attentions.{j}"
                units.append(Unit(name, (name,), self._attention(attentions[j], push=False)))
        for j, sampler in enumerate(block.upsamplers or []):
            name = f"{prefix}.upsamplers.{j}"
            units.append(Unit(name, (name,), self._upsample(sampler, is_final)))
        return units

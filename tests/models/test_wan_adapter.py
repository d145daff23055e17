"""The Wan adapter's units reproduce WanTransformer3DModel.forward; its units and shared modules
cover the model; the cuts carry the token sequence; the tiny Wan pipelines save and load."""

from __future__ import annotations

import pytest
import torch

from asyncvid.catalog.wan import build_wan_pipeline, wan_call
from asyncvid.errors import AsyncVidError
from asyncvid.models import adapter_for
from asyncvid.models.wan import WanTransformerAdapter
from asyncvid.planner.profile import cut_bytes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models():
    return {kind: build_wan_pipeline(kind).transformer for kind in ("t2v", "i2v")}


def _inputs(model, batch, frames=3, height=4, width=6):
    """A call's arguments at an odd latent size (6 wide: 3 patches), text (and image) tokens."""
    torch.manual_seed(batch)
    call = adapter_for(model).example_call(batch, frames, height, width, CPU, torch.float32)
    x = call.sample
    kwargs = {"encoder_hidden_states": call.cond["encoder_hidden_states"]}
    if call.cond["encoder_hidden_states_image"] is not None:
        kwargs["encoder_hidden_states_image"] = call.cond["encoder_hidden_states_image"]
    return x, kwargs


def _diff(a, b) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
@pytest.mark.parametrize("batch", [1, 2])
def test_unit_by_unit_forward_equals_the_model_s(models, kind, batch):
    model = models[kind]
    x, kwargs = _inputs(model, batch)
    t = torch.full((batch,), 733.0)
    with torch.no_grad():
        ref = model(x, t, **kwargs).sample
        out = adapter_for(model).full_forward(x, t, **kwargs).sample
        as_tuple = adapter_for(model).full_forward(hidden_states=x, timestep=t, return_dict=False, **kwargs)
    assert ref.shape == x[:, :4].shape and _diff(ref, out) <= 1e-6
    assert isinstance(as_tuple, tuple) and _diff(as_tuple[0], ref) <= 1e-6


@pytest.mark.parametrize("masked_frames", [0, 1])
def test_per_token_timesteps_equal_the_model_s(models, masked_frames):
    """Wan 2.2 TI2V passes (B, tokens) timesteps: the conditioning frame's tokens at 0 (``masked_frames``
    = 1) or, for text-to-video, every token at t. Both reproduce the model exactly, and matter."""
    model = models["t2v"]
    x, kwargs = _inputs(model, 2)
    tokens_per_frame = (x.shape[3] // 2) * (x.shape[4] // 2)
    t = torch.full((2, x.shape[2] * tokens_per_frame), 640.0)
    t[:, : masked_frames * tokens_per_frame] = 0
    adapter = adapter_for(model)
    with torch.no_grad():
        ref = model(x, t, **kwargs).sample
        out = adapter.full_forward(x, t, **kwargs).sample
        per_sample = model(x, torch.full((2,), 640.0), **kwargs).sample
    assert _diff(ref, out) <= 1e-6
    call = adapter.split_call((x, t), kwargs)
    assert call.timestep.tolist() == [640.0] and call.cond["timestep_tokens"] == t.shape[1]
    if masked_frames:
        assert _diff(ref, per_sample) > 1e-3  # the per-token pattern really reached the blocks
        assert call.cond["timestep_pattern"] is not None
    else:
        assert call.cond["timestep_pattern"] is None


def test_units_and_shared_modules_cover_the_model_once(models):
    model = models["i2v"]
    adapter = adapter_for(model)
    assert isinstance(adapter, WanTransformerAdapter)
    units = adapter.units()
    assert [u.name for u in units] == ["patch_embedding"] + [f"blocks.{i}" for i in range(4)] + ["proj_out"]
    paths = [m for u in units for m in u.modules] + list(adapter.shared_modules)
    assert len(paths) == len(set(paths))
    owned = {id(p) for path in paths for p in model.get_submodule(path).parameters()}
    loose = {id(p) for name, p in model.named_parameters(recurse=False)}  # the output head's scale_shift_table
    assert loose == {id(model.scale_shift_table)}
    assert owned | loose == {id(p) for p in model.parameters()} and not owned & loose


def test_a_rank_without_the_units_builds_the_same_context():
    """Workers hold only the shared modules besides their own blocks: the context needs nothing else."""
    model = build_wan_pipeline("i2v").transformer
    adapter = adapter_for(model)
    x, kwargs = _inputs(model, 1)
    call = adapter.split_call((x, torch.tensor([500.0])), kwargs)
    with torch.no_grad():
        full = adapter.context(x.shape, call.timestep, call.cond)
        for unit in adapter.units():
            for path in unit.modules:
                model.get_submodule(path).to("meta")
        bare = adapter.context(x.shape, call.timestep, call.cond)
    for field in ("temb", "timestep_proj", "encoder_hidden_states"):
        assert torch.equal(getattr(full, field), getattr(bare, field))
    assert all(torch.equal(a, b) for a, b in zip(full.rotary_emb, bare.rotary_emb)) and full.grid == bare.grid


@pytest.mark.parametrize("dtype, width", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_cut_bytes_are_the_token_sequence(dtype, width):
    model = build_wan_pipeline("t2v").transformer.to(dtype)
    adapter = adapter_for(model)
    sizes = cut_bytes(type(adapter), model, adapter.example_call(2, 3, 4, 6, CPU, dtype))
    cfg = model.config
    tokens, dim = 3 * 2 * 3, cfg.num_attention_heads * cfg.attention_head_dim
    assert sizes[:-1] == [2 * tokens * dim * width] * 5
    assert sizes[-1] == 2 * cfg.out_channels * 3 * 4 * 6 * width  # the prediction


def test_zero_prediction_has_the_model_s_output_shape(models):
    model = models["i2v"]
    x, kwargs = _inputs(model, 2)
    adapter = adapter_for(model)
    call = adapter.split_call((x, torch.tensor([1.0, 1.0])), kwargs)
    with torch.no_grad():
        assert adapter.zero_prediction(call).shape == model(x, torch.tensor([1.0, 1.0]), **kwargs).sample.shape


def test_calls_the_model_would_refuse_or_the_stages_cannot_follow(models):
    adapter = adapter_for(models["t2v"])
    x, kwargs = _inputs(models["t2v"], 1)
    t = torch.tensor([5.0])
    with pytest.raises(TypeError, match="unexpected argument"):
        adapter.split_call((x, t), dict(kwargs, encoder_attention_mask=None))
    with pytest.raises(TypeError, match="missing"):
        adapter.split_call((x, t), {})
    with pytest.raises(AsyncVidError, match="per-call LoRA scale"):
        adapter.split_call((x, t), dict(kwargs, attention_kwargs={"scale": 0.5}))
    assert adapter.split_call((x, t), dict(kwargs, attention_kwargs={"scale": 1.0})).timestep.tolist() == [5.0]


def test_cfg_groups_with_two_experts_are_refused_before_any_process_group():
    import asyncvid

    with pytest.raises(AsyncVidError, match="cfg > 1 is not supported with two experts"):
        asyncvid.parallelize(build_wan_pipeline("experts"), stages=2, cfg=2)
    assert not torch.distributed.is_initialized()


def test_the_denoisers_of_each_pipeline():
    from asyncvid.pipelines.parallel import denoisers_of

    pipe = build_wan_pipeline("experts")
    assert [id(m) for m in denoisers_of(pipe)] == [id(pipe.transformer), id(pipe.transformer_2)]
    assert denoisers_of(build_wan_pipeline("i2v"))[0].config.image_dim is not None
    with pytest.raises(AsyncVidError, match="no denoiser"):
        denoisers_of(type("Bare", (), {})())


@pytest.mark.parametrize("kind", ["t2v", "i2v", "ti2v", "experts"])
def test_the_tiny_pipelines_save_and_load(tmp_path, kind, one_thread):
    from diffusers import DiffusionPipeline

    pipe = build_wan_pipeline(kind)
    call = wan_call(kind, pipe)
    pipe.save_pretrained(tmp_path)
    back = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(back) is type(pipe) and back.config.expand_timesteps == pipe.config.expand_timesteps
    assert back.config.boundary_ratio == pipe.config.boundary_ratio
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            theirs = getattr(back, name).state_dict()
            assert all(torch.equal(v, theirs[k]) for k, v in component.state_dict().items()), name
    frames = [p(**call, generator=torch.Generator().manual_seed(0)).frames for p in (pipe, back)]
    # same weights; safetensors' memory layout may change the last bit of a BLAS result
    assert float(abs(frames[0] - frames[1]).max()) <= 1e-5


def test_the_text_projection_is_computed_once_per_embedding_and_again_after_a_write(models):
    """Every rank projects the 512 text tokens for its context: once per embedding, not per call;
    an in-place write to the embedding (or to the projection's weights) makes it project again."""
    model = models["t2v"]
    adapter = adapter_for(model)
    projections = []
    handle = model.condition_embedder.text_embedder.register_forward_hook(lambda *args: projections.append(1))
    try:
        call = adapter.example_call(1, 2, 4, 4, torch.device("cpu"), torch.float32)
        text = call.cond["encoder_hidden_states"]
        first = adapter.context(call.sample.shape, call.timestep, call.cond)
        later = adapter.context(call.sample.shape, torch.tensor([300.0]), call.cond)  # another step
        assert len(projections) == 1 and later.encoder_hidden_states is first.encoder_hidden_states
        text.mul_(2)
        changed = adapter.context(call.sample.shape, call.timestep, call.cond)
        assert len(projections) == 2
        with torch.no_grad():
            assert torch.equal(changed.encoder_hidden_states, model.condition_embedder.text_embedder(text))
        with torch.no_grad():
            model.condition_embedder.text_embedder.linear_1.weight.mul_(1.0)  # a write, same values
        adapter.context(call.sample.shape, call.timestep, call.cond)
        assert len(projections) == 4  # the check above projected once itself; the weight write alone counts one
    finally:
        handle.remove()

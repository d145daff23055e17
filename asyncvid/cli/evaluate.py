"""``asyncvid eval``: prompt adherence of a text-to-video model on the shapes world, from pixels;
with ``--fidelity``, the quality cost of AsyncDiff configurations against the sequential output."""

from __future__ import annotations

from .. import logs
from ..catalog.builtin import DEFAULT_MODEL, DEFAULT_STEPS
from ..utils import atomic_write
from .options import add_device_and_dtype, add_forecast, apply_device


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="prompt adherence on held-out shapes prompts; `eval fidelity`: the quality "
                                           "cost of accelerated configurations",
                              description="Render the held-out prompts of the shapes world with a model and score "
                                          "each clip from its pixels: are its colour and shape the prompt's, does it "
                                          "move, and the prompt's way? Also reports how alike the mid-block hidden states "
                                          "of neighbouring steps are (AsyncDiff's premise). JSON out.")
    p.add_argument("what", nargs="?", choices=["adherence", "fidelity"], default="adherence",
                   help="adherence: how well the model follows shapes prompts; fidelity: the quality cost of "
                        "accelerated configurations against the sequential output (same as --fidelity)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, local AnimateDiff folder or cached hub id")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2: 48 samples)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps per video")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--compare-random", action="store_true",
                   help="also measure step similarity of a random-weight UNet and text encoder of the same config")
    p.add_argument("--json", metavar="FILE", help="write the report here (default: stdout)")
    add_device_and_dtype(p, "precision of every pipeline, the reference included")
    f = p.add_argument_group("fidelity of accelerated configurations (`asyncvid eval fidelity`)")
    f.add_argument("--fidelity", action="store_true",
                   help="render each configuration and the sequential pipeline from the same seeds and compare: "
                        "PSNR, SSIM, ST-LPIPS, temporal error (+ CLIP score, + adherence on the shapes world)")
    f.add_argument("--configs", nargs="+", metavar="NxS[wW]", default=FIDELITY_CONFIGS,
                   help=f"configurations (default: {' '.join(FIDELITY_CONFIGS)})")
    add_forecast(f, "each configuration rendered once per forecast, on the same ranks")
    f.add_argument("--stack", nargs="+", default=["none"], metavar="FEATURE",
                   help="also render each configuration with these accelerations stacked (none, fbc[:THRESHOLD], "
                        "compile); the reference stays the untouched pipeline")
    f.add_argument("--prompts", type=int, default=12, help="held-out shapes prompts to render (default 12)")
    f.add_argument("--prompt", action="append", help="prompt(s) for a model outside the shapes world")
    f.add_argument("--frames", type=int, help="frames per video (default 8; 9 for a Wan model, which renders 4k+1)")
    f.add_argument("--size", type=int, metavar="PIXELS",
                   help="frame height = width in pixels (default: the model's own size, 32 for shapes-t2v)")
    f.add_argument("--bench", metavar="FILE", help="an `asyncvid bench` JSON of the same model and steps: measured "
                                                   "speedups (otherwise the planner's predictions)")
    f.add_argument("--clip", metavar="DIR", help="a local CLIP model folder: also report CLIP score")
    f.add_argument("--no-lpips", action="store_true", help="skip ST-LPIPS (needs the stlpips-pytorch package)")
    f.add_argument("--markdown", metavar="FILE", help="write the table as markdown")
    f.add_argument("--plot", metavar="PNG", help="write the speedup-vs-PSNR plot with its Pareto front")
    p.set_defaults(func=cmd_eval)


FIDELITY_CONFIGS = ["2x1w1", "2x1w3", "2x2w1", "2x2w3", "3x1w1", "3x1w3", "3x2w3", "4x1w1", "4x1w3", "4x2w3"]


def cmd_eval(args) -> int:
    import json

    apply_device(args)
    if args.fidelity or args.what == "fidelity":
        return cmd_fidelity(args)

    import torch

    from ..catalog.folders import resolve_model
    from ..catalog.pipelines import is_svd, is_wan, load_pipeline, wan_frames
    from ..distributed.env import default_device
    from ..eval.adherence import evaluate_i2v_pipeline, evaluate_pipeline
    from ..eval.similarity import step_similarity
    from ..eval.world import held_out_split, make_clip, motion_bucket, prompt_for

    pipe = load_pipeline(resolve_model(args.model), dtype=args.dtype).to(default_device())
    _, held_out = held_out_split()
    frames = wan_frames(pipe, 8) if is_wan(pipe) else 8  # Wan renders 4k+1 frames
    seeds = tuple(range(args.seeds))
    report = {"model": args.model, "held_out_prompts": len(held_out), "frames": frames}
    call = dict(num_frames=frames, height=32, width=32, num_inference_steps=args.steps, output_type="latent")
    if is_svd(pipe):  # image-to-video: first frames of held-out clips, the direction as motion bucket
        from PIL import Image

        report["adherence"] = evaluate_i2v_pipeline(pipe, held_out, seeds, args.steps, frames)
        firsts = [make_clip(c, frames, 32, 0)[0] for c in held_out[:8]]
        call.update(image=[Image.fromarray((f * 255).round().astype("uint8")) for f in firsts],
                    motion_bucket_id=motion_bucket("right"))
    else:
        report["adherence"] = evaluate_pipeline(pipe, held_out, seeds, args.steps, args.guidance, frames)
        call.update(prompt=[prompt_for(*c) for c in held_out], guidance_scale=args.guidance)
    report["step_similarity"] = step_similarity(pipe, generator=torch.Generator().manual_seed(0), **call)
    if args.compare_random:
        report["step_similarity_random_weights"] = step_similarity(
            _random_twin(pipe), generator=torch.Generator().manual_seed(0), **call)
    text = json.dumps(report, indent=2)
    if args.json:
        atomic_write(args.json, text)
    print(text)
    return 0


def _random_twin(pipe):
    """The same pipeline with a freshly initialised (seed 0) denoiser and text (or image) encoder;
    VAE kept."""
    import torch

    from ..catalog.pipelines import denoiser_of, is_svd, is_wan

    torch.manual_seed(0)
    denoiser = denoiser_of(pipe)
    denoiser = type(denoiser).from_config(denoiser.config)
    if is_svd(pipe):
        twin = type(pipe)(vae=pipe.vae, image_encoder=type(pipe.image_encoder)(pipe.image_encoder.config),
                          unet=denoiser, scheduler=pipe.scheduler, feature_extractor=pipe.feature_extractor)
        twin.set_progress_bar_config(disable=True)
        return twin
    text_encoder = type(pipe.text_encoder)(pipe.text_encoder.config)
    parts = dict(vae=pipe.vae, text_encoder=text_encoder, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler)
    if is_wan(pipe):
        from diffusers import WanPipeline

        twin = WanPipeline(transformer=denoiser, **parts)
    else:
        from diffusers import AnimateDiffPipeline

        twin = AnimateDiffPipeline(unet=denoiser, motion_adapter=None, **parts)
    twin.set_progress_bar_config(disable=True)
    return twin


def cmd_fidelity(args) -> int:
    import json

    from ..errors import AsyncVidError
    from ..eval.fidelity import finite
    from ..eval.sweep import markdown, plot_points, run_fidelity
    from ..eval.world import held_out_split, parse_prompt, prompt_for
    from .bench import parse_config

    configs = [parse_config(c) for c in args.configs]
    if any(c > 1 for *_, c in configs):
        raise AsyncVidError("--configs: CFG groups (cC) render exactly the video of their stages alone; "
                            "measure the fidelity of NxS[wW]")
    configs = [(n, s, 1 if w is None else w) for n, s, w, _ in configs]
    shapes = args.prompt is None
    prompts = args.prompt or [prompt_for(*c) for c in held_out_split()[1][: args.prompts]]
    bench = None
    if args.bench:
        try:
            with open(args.bench, encoding="utf-8") as f:
                bench = json.load(f)
        except (OSError, ValueError) as exc:
            raise AsyncVidError(f"--bench {args.bench}: {exc}") from None
    from ..catalog.folders import native_size, pipeline_class_name, resolve_model

    pipeline = pipeline_class_name(resolve_model(args.model))
    if args.prompt and pipeline == "StableVideoDiffusionPipeline":
        for prompt in args.prompt:  # an image-to-video model's first frames are drawn from the shapes world
            try:
                parse_prompt(prompt)
            except ValueError as exc:
                raise AsyncVidError(f"--prompt: {exc} (an image-to-video model is measured on shapes-world "
                                    "prompts: the first frame of the prompt's clip is its image)") from None
    size = args.size or (native_size(args.model) or (32, 32))[0]
    frames = args.frames or (9 if pipeline == "WanPipeline" else 8)
    from ..bench.stack import parse_stack

    for stack in args.stack:
        parse_stack(stack)
    report = run_fidelity(args.model, configs, prompts, list(range(args.seeds)), args.steps, args.guidance,
                          frames, size, bench, args.clip, not args.no_lpips, shapes,
                          log=logs.info, dtype=args.dtype, forecasts=tuple(dict.fromkeys(args.forecast)),
                          stacks=tuple(dict.fromkeys(args.stack)))
    text = json.dumps(finite(report), indent=2)
    if args.json:
        atomic_write(args.json, text)
    else:
        print(text)
    if args.markdown:
        atomic_write(args.markdown, markdown(report))
    if args.plot:
        from ..eval.plot import pareto_plot

        pareto_plot(plot_points(report), args.plot, "speedup per video (filled: measured, hollow: predicted)",
                    "PSNR vs sequential (dB)", f"{args.model}: AsyncDiff speed vs fidelity")
    return 0

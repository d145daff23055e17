"""``asyncvid eval``: prompt adherence of a text-to-video model on the shapes world, from pixels."""

from __future__ import annotations


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score prompt adherence (colour, direction) on held-out shapes prompts",
                              description="Render the held-out prompts of the shapes world with a model and score "
                                          "each clip from its pixels: is the dominant colour the prompt's, and does it "
                                          "move the prompt's way? Also reports how alike the mid-block hidden states "
                                          "of neighbouring steps are (AsyncDiff's premise). JSON out.")
    p.add_argument("--model", default="shapes-t2v", help="built-in name or local AnimateDiff folder")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2: 48 samples)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--compare-random", action="store_true",
                   help="also measure step similarity of a random-weight UNet and text encoder of the same config")
    p.add_argument("--json", metavar="FILE", help="write the report here (default: stdout)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    import json

    import torch

    from ..eval.adherence import evaluate_pipeline
    from ..eval.similarity import step_similarity
    from ..eval.world import held_out_split, prompt_for
    from ..render.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(args.model))
    _, held_out = held_out_split()
    report = {"model": args.model, "held_out_prompts": len(held_out),
              "adherence": evaluate_pipeline(pipe, held_out, tuple(range(args.seeds)), args.steps, args.guidance)}
    call = dict(prompt=[prompt_for(*c) for c in held_out], num_frames=8, height=32, width=32,
                num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="latent")
    report["step_similarity"] = step_similarity(pipe, generator=torch.Generator().manual_seed(0), **call)
    if args.compare_random:
        report["step_similarity_random_weights"] = step_similarity(
            _random_twin(pipe), generator=torch.Generator().manual_seed(0), **call)
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    return 0


def _random_twin(pipe):
    """The same pipeline with a freshly initialised (seed 0) UNet and text encoder; VAE kept."""
    import torch
    from diffusers import AnimateDiffPipeline

    torch.manual_seed(0)
    unet = type(pipe.unet).from_config(pipe.unet.config)
    text_encoder = type(pipe.text_encoder)(pipe.text_encoder.config)
    twin = AnimateDiffPipeline(vae=pipe.vae, text_encoder=text_encoder, tokenizer=pipe.tokenizer, unet=unet,
                               motion_adapter=None, scheduler=pipe.scheduler)
    twin.set_progress_bar_config(disable=True)
    return twin

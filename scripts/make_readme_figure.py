"""Render the README's picture: one clip of each shipped model, sequential beside asynchronous.

For each shipped model (``shapes-t2v``, ``shapes-i2v``, ``shapes-wan``) one prompt is rendered by the
untouched diffusers pipeline on one rank, then by ``asyncvid.parallelize`` with N=2 stages at stride
1 and at stride 2 (warm-up 1, the default), all from the same seed. Under each clip: its PSNR
against the sequential clip and its speed: the sequential pipeline's denoising time (one process,
one thread; a call to latents, as ``asyncvid bench`` times it) over this configuration's (two ranks
of one thread each), the fastest of ``--repeats`` calls of each. Writes a PNG strip and a JSON of
the numbers beside it, with each model's fingerprint (``tests/docs/test_docs_pages.py`` fails when
a shipped model no longer matches the picture).

Run it again when a shipped model changes (heavy: about two minutes of both cores):

    flock /tmp/asyncvid-heavy.lock .venv/bin/python scripts/make_readme_figure.py
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import time
from datetime import date

import numpy as np

#: (model, label, prompt): prompts of the examples (examples/quickstart.yaml, wan.yaml), their settings
SHOWCASE = [
    ("shapes-t2v", "shapes-t2v (AnimateDiff UNet, text-to-video)", "a red circle moving left on a black background"),
    ("shapes-i2v", "shapes-i2v (SVD UNet, image-to-video)", "a green square moving right on a gray background"),
    ("shapes-wan", "shapes-wan (Wan transformer, text-to-video)", "a blue square moving right on a black background"),
]
#: None = the untouched pipeline; else (stages, stride, warm-up)
CONFIGS = [None, (2, 1, 1), (2, 2, 1)]
FRAMES = {"shapes-wan": 9}
SHOWN_FRAMES = 4
SCALE = 3


def _call(runner, pipe, model: str, prompt: str, seed: int, steps: int, output_type: str):
    """One call as the quick start renders (25 steps, guidance 5 for text; for images SVD's default
    ramp 1 -> 3 and, as ``asyncvid eval`` does, the first frame of a world clip of the prompt as the
    image and its direction as motion bucket). Returns the first clip's frames (F, H, W, 3) in [0, 1]."""
    import torch

    from asyncvid.catalog.pipelines import is_svd

    frames = FRAMES.get(model, 8)
    common = dict(num_frames=frames, height=32, width=32, num_inference_steps=steps, output_type=output_type,
                  generator=torch.Generator().manual_seed(seed))
    if is_svd(pipe):
        from PIL import Image

        from asyncvid.eval.world import make_clip, motion_bucket, parse_prompt

        combo = parse_prompt(prompt)
        first = make_clip(combo, frames, 32, np.random.default_rng(10_000 + seed))[0]
        image = Image.fromarray((first * 255).round().astype(np.uint8))
        out = runner(image=image, motion_bucket_id=motion_bucket(combo.direction), min_guidance_scale=1.0,
                     max_guidance_scale=3.0, **common)
    else:
        out = runner(prompt=prompt, guidance_scale=5.0, **common)
    return out.frames[0]


def render_rank(model: str, prompt: str, seed: int, steps: int, config, repeats: int, out_path: str) -> None:
    """Runs on every rank: the denoising alone (to latents) ``repeats`` times, timed, then the clip
    itself; the driver saves the clip with the fastest time."""
    import torch

    from asyncvid.catalog.pipelines import build_pipeline, profile_shape, vae_scale
    from asyncvid.utils import atomic_path

    pipe = build_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    runner = pipe
    if config is not None:
        from asyncvid import parallelize

        stages, stride, warmup = config
        runner = parallelize(pipe, stages=stages, stride=stride, warmup=warmup, split="auto",
                             profile_shape=profile_shape(pipe, FRAMES.get(model, 8), 32 // vae_scale(pipe)))
        if not runner.is_driver:
            runner.serve()
            return
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            _call(runner, pipe, model, prompt, seed, steps, "latent")
            times.append(time.perf_counter() - start)
        clip = _call(runner, pipe, model, prompt, seed, steps, "np")
    if config is not None:
        runner.close()
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, clip=np.asarray(clip, dtype=np.float32), seconds=min(times))


def measure(seed: int, steps: int, repeats: int, work: str, log=print) -> list[dict]:
    """Every model x configuration: the clip, its seconds, and its PSNR against the sequential clip."""
    from asyncvid.eval.fidelity import psnr
    from asyncvid.launch import launch_local

    rows = []
    for model, label, prompt in SHOWCASE:
        cells, ref = [], None
        for config in CONFIGS:
            path = os.path.join(work, f"{model}-{len(cells)}.npz")
            launch_local(render_rank, config[0] if config else 1, model, prompt, seed, steps, config, repeats, path)
            data = np.load(path)
            clip, seconds = data["clip"], float(data["seconds"])
            ref = clip if ref is None else ref
            cell = dict(config=config, seconds=seconds, psnr_db=psnr(ref, clip), clip=clip)
            cell["speedup"] = cells[0]["seconds"] / seconds if cells else 1.0
            cells.append(cell)
            log(f"{model} {_title(config)}: {seconds:.2f} s, PSNR {cell['psnr_db']:.2f} dB")
        rows.append(dict(model=model, label=label, prompt=prompt, cells=cells))
    return rows


def _title(config) -> str:
    return "sequential" if config is None else f"async N={config[0]} S={config[1]}"


def _caption(cell: dict) -> str:
    psnr = "exact" if cell["psnr_db"] == math.inf else f"PSNR {cell['psnr_db']:.1f} dB"
    return f"{psnr}, {cell['speedup']:.2f}x"


def compose(rows: list[dict]):
    """The strip: one row per model, one column per configuration, a few frames of each clip."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    side = 32 * SCALE
    cell_w = SHOWN_FRAMES * side + (SHOWN_FRAMES - 1) * 2
    pad, label_h, caption_h, head_h = 12, 20, 20, 22
    width = pad + len(CONFIGS) * (cell_w + pad)
    height = head_h + len(rows) * (label_h + side + caption_h + pad) + pad
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for c, config in enumerate(CONFIGS):
        draw.text((pad + c * (cell_w + pad), 4), _title(config), fill=(0, 0, 0), font=font)
    y = head_h
    for row in rows:
        draw.text((pad, y + 2), f"{row['label']}: \"{row['prompt']}\"", fill=(70, 70, 70), font=font)
        y += label_h
        for c, cell in enumerate(row["cells"]):
            x = pad + c * (cell_w + pad)
            clip = cell["clip"]
            picks = np.linspace(0, len(clip) - 1, SHOWN_FRAMES).round().astype(int)
            for i, f in enumerate(picks):
                frame = Image.fromarray((np.clip(clip[f], 0, 1) * 255).round().astype(np.uint8))
                image.paste(frame.resize((side, side), Image.NEAREST), (x + i * (side + 2), y))
            draw.text((x, y + side + 3), _caption(cell), fill=(0, 0, 0), font=font)
        y += side + caption_h + pad
    return image


def main(argv=None) -> int:
    import tempfile

    from asyncvid.catalog.folders import model_fingerprint
    from asyncvid.utils import atomic_write

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/images/readme-strip.png", help="PNG; its numbers go to the same name .json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="calls per clip; the fastest is its time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="asyncvid-figure-") as work:
        rows = measure(args.seed, args.steps, args.repeats, work)
    buf = io.BytesIO()
    compose(rows).save(buf, format="PNG", optimize=True)
    atomic_write(args.out, buf.getvalue())
    import torch

    numbers = dict(date=date.today().isoformat(), machine=f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
                   torch=torch.__version__, seed=args.seed, steps=args.steps, repeats=args.repeats,
                   speed="sequential seconds (1 process, 1 thread) / this configuration's seconds (1 thread per rank), "
                         "fastest of the repeats of a denoising call to latents (no VAE decode)",
                   models=[dict(model=r["model"], prompt=r["prompt"], fingerprint=model_fingerprint(r["model"]),
                                configs=[dict(config=_title(c["config"]), seconds=round(c["seconds"], 3),
                                              psnr_db=None if c["psnr_db"] == math.inf else round(c["psnr_db"], 2),
                                              speedup=round(c["speedup"], 2)) for c in r["cells"]]) for r in rows])
    atomic_write(os.path.splitext(args.out)[0] + ".json", json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {args.out} ({len(buf.getvalue()) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

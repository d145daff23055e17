"""AsyncDiff on an AnimateDiff pipeline: the two lines a diffusers user adds.

Run the same script on every rank:

    torchrun --nproc_per_node 2 examples/parallel_animatediff.py --model path/to/animatediff-folder
    srun --ntasks 2 python examples/parallel_animatediff.py --model ...
    python examples/parallel_animatediff.py --model tiny-random --stages 1     # no launcher: one process

``--model tiny-random`` builds a small random-weight model locally (noise, but exercises everything).
"""

import argparse

import numpy as np
import torch
from diffusers import AnimateDiffPipeline

import asyncvid
from asyncvid.catalog.presets import build_animatediff_pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-random", help="local diffusers AnimateDiff folder or tiny-random")
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="frames.npy", help="where rank 0 saves the frames (numpy)")
    args = ap.parse_args()

    if args.model == "tiny-random":
        pipe = build_animatediff_pipeline("tiny", seed=0)
    else:
        pipe = AnimateDiffPipeline.from_pretrained(args.model)
    pipe = asyncvid.parallelize(pipe, stages=args.stages, stride=args.stride, warmup=args.warmup)  # line 1
    out = pipe(prompt="a red circle moving left", num_frames=args.frames, height=args.size, width=args.size,
               num_inference_steps=args.steps, output_type="np", generator=torch.Generator().manual_seed(0))
    if out is not None:  # line 2: only the driver (rank 0) gets the frames
        np.save(args.out, out.frames[0])
        print(pipe.plan.describe())


if __name__ == "__main__":
    main()

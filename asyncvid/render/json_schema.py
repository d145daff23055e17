"""The JSON Schema of a job file, for editors (``asyncvid schema > asyncvid-jobs.schema.json``).

It is derived from the pydantic models that validate job files, so it cannot drift from them. A
YAML language server reads it from a first-line comment in the job file:
``# yaml-language-server: $schema=asyncvid-jobs.schema.json``. What the schema cannot say (which
fields belong to which kind of job, files that must exist) is still checked by ``asyncvid render``.
"""

from __future__ import annotations

import copy

from ..catalog.builtin import BUILTINS
from .schema import DEPENDENT_FIELDS, KIND_DEFAULTS, Job, JobOptions

#: one line per job field: the schema's descriptions, which editors show and docs/reference/job-file.md lists
FIELD_HELP = {
    "name": "output base name: <out>/<name>.<ext> and <name>.json (letters, digits, _ - .; no paths)",
    "task": "t2v (text-to-video: AnimateDiff, Wan) or i2v (image-to-video, Stable Video Diffusion); default: the model's",
    "model": "a local diffusers folder (AnimateDiff, AnimateDiff SDXL, SD 1.5 / SDXL plus motion_adapter, Stable Video "
             "Diffusion, Wan), a built-in name (" + ", ".join(sorted(BUILTINS)) + ") or a hub id in the local "
             "Hugging Face cache",
    "motion_adapter": "t2v: a motion adapter folder, for a plain SD 1.5 or SDXL model folder",
    "prompt": "t2v: the text", "negative_prompt": "t2v: what to steer away from",
    "guidance": "t2v: CFG scale (guidance_scale)",
    "image": "i2v: the conditioning image, relative to the job file; any size, converted to RGB",
    "motion_bucket_id": "i2v: SVD's motion conditioning; shapes-i2v reads it as the direction: left "
                        "0-63, right 64-127, up 128-191, down 192-255",
    "noise_aug_strength": "i2v: noise added to the conditioning image",
    "min_guidance": "i2v: guidance at the first frame",
    "max_guidance": "i2v: guidance at the last frame",
    "controlnet": "t2v: a diffusers ControlNetModel folder (SD 1.5 weights); SparseCtrl is for the Python API only",
    "conditioning_frames": "with controlnet: a folder of images (file-name order) or a video file, one frame per "
                           "output frame, relative to the job file",
    "controlnet_scale": "with controlnet: its weight (controlnet_conditioning_scale)",
    "video": "t2v video-to-video: the input video (file or folder of frames); frames is taken from it",
    "strength": "with video: in (0, 1], how much of the input is redrawn; runs the last strength x steps steps",
    "seed": "generator seed",
    "steps": "denoising steps (diffusers: num_inference_steps)",
    "frames": "frames to render (num_frames)",
    "width": "pixels, a multiple of 8; unset: the model's own size", "height": "pixels, a multiple of 8; unset: the model's own size",
    "fps": "frames per second of the output (and SVD's fps conditioning)",
    "decode_chunk": "frames decoded per VAE call (bounds memory); unset: 16 for t2v, all frames for i2v",
    "crf": "encoder quality, lower is better: 0-51 for mp4 (H.264), 0-63 for webm and av1",
    "stages": "AsyncDiff stages per video; unset: one per device / cfg (part of the video's identity: manifest hash)",
    "cfg": "CFG groups (1-3): the guidance branches on separate device groups (exact, so not in the manifest hash); "
           "needs guidance > 1",
    "stride": "1, or 2 for stage skipping", "warmup": "sequential steps before the asynchronous ones",
    "forecast": "none, linear, quadratic or damped[:GAIN]: each stage extrapolates its stale input along the "
                "timesteps instead of reusing it (docs/forecast.md)",
    "split": "auto, or per stage a list of module names", "format": "mp4, webm, gif, av1 or png (a frames folder)",
    "dtype": "precision of every component; half precision is for GPUs (on CPUs it is much slower)",
}


def _kind_default(name: str) -> str:
    """" (default X)" for a field whose default depends on the job's kind or on another field
    (the schema itself can only say null)."""
    for values in KIND_DEFAULTS.values():
        if name in values:
            return f" (default {values[name]!r})" if isinstance(values[name], str) else f" (default {values[name]})"
    needs = DEPENDENT_FIELDS.get(name)
    return f" (default {needs[1]})" if needs and needs[1] is not None else ""


def job_file_schema() -> dict:
    job = Job.model_json_schema()
    defaults = JobOptions.model_json_schema()
    for schema in (job, defaults):
        for name, prop in schema.get("properties", {}).items():
            if name in FIELD_HELP:
                prop["description"] = FIELD_HELP[name] + _kind_default(name)
    item = copy.deepcopy(job)
    item["required"] = ["name"]  # every other field may come from `defaults`
    item.pop("title", None)
    defaults.pop("title", None)
    defs = {**defaults.pop("$defs", {}), **item.pop("$defs", {})}
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "asyncvid job file",
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "out": {"type": "string", "description": "output folder, relative to the job file (default: out)"},
            "defaults": dict(defaults, description="fields merged under every job"),
            "jobs": {"type": "array", "minItems": 1, "items": item, "description": "the jobs, in order (at least one)"},
        },
    }
    if defs:
        schema["$defs"] = defs
    return schema

"""The JSON Schema of a job file, for editors (``asyncvid schema > asyncvid-jobs.schema.json``).

It is derived from the pydantic models that validate job files, so it cannot drift from them. A
YAML language server reads it from a first-line comment in the job file:
``# yaml-language-server: $schema=asyncvid-jobs.schema.json``. What the schema cannot say (which
fields belong to which kind of job, files that must exist) is still checked by ``asyncvid render``.
"""

from __future__ import annotations

import copy

from .schema import Job, JobOptions

FIELD_HELP = {
    "name": "output base name: <out>/<name>.<ext> and <name>.json (letters, digits, _ - .)",
    "task": "t2v (text-to-video, AnimateDiff) or i2v (image-to-video, Stable Video Diffusion); default: the model's",
    "model": "a local diffusers folder, a built-in name (shapes-t2v, tiny-random, tiny-random-svd, tiny-random-wan) or a hub id in "
             "the local Hugging Face cache",
    "prompt": "t2v: the text", "image": "i2v: the conditioning image, relative to the job file",
    "steps": "denoising steps (diffusers: num_inference_steps)", "guidance": "t2v: CFG scale (guidance_scale)",
    "frames": "frames to render (num_frames)",
    "width": "pixels, a multiple of 8; unset: the model's own size", "height": "pixels, a multiple of 8; unset: the model's own size", "stages": "AsyncDiff stages per video; unset: one per device / cfg",
    "cfg": "CFG groups: the guidance branches on separate device groups (exact)",
    "stride": "1, or 2 for stage skipping", "warmup": "sequential steps before the asynchronous ones",
    "split": "auto, or per stage a list of module names", "format": "mp4, webm, gif, av1 or png (a frames folder)",
}


def job_file_schema() -> dict:
    job = Job.model_json_schema()
    defaults = JobOptions.model_json_schema()
    for schema in (job, defaults):
        for name, prop in schema.get("properties", {}).items():
            if name in FIELD_HELP:
                prop["description"] = FIELD_HELP[name]
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
            "jobs": {"type": "array", "minItems": 1, "items": item},
        },
    }
    if defs:
        schema["$defs"] = defs
    return schema

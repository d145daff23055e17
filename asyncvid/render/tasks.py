"""Render tasks: a job's resolved config and its hash, where its files go, whether it is up to
date, the model folders it loads, and its manifest."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..catalog.folders import (controlnet_fingerprint, model_fingerprint, native_size, resolve_adapter,
                               resolve_controlnet, resolve_model)
from ..utils import atomic_write
from ..video import output_name
from .inputs import frames_sha256


@dataclass
class Task:
    """One job to render: its resolved config (what the manifest hash covers) and where it goes."""

    config: dict
    config_hash: str
    model: str  # a built-in name or an absolute model folder
    output: str
    manifest: str
    image: str | None = None  # i2v: the conditioning image (absolute path)
    motion_adapter: str | None = None  # t2v: an extra motion adapter folder (absolute path)
    controlnet: str | None = None  # t2v: a ControlNetModel folder (absolute path)
    conditioning_frames: str | None = None  # ControlNet: a frames folder or video file (absolute path)
    video: str | None = None  # video-to-video: the input frames folder or video file (absolute path)
    model_dir: str | None = None  # the folders actually loaded, set just before rendering
    adapter_dir: str | None = None

    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def model_key(self) -> tuple:
        """What loading the pipeline depends on, as :func:`~asyncvid.catalog.pipelines.load_pipeline`'s
        arguments: its folders, the job's dtype, the ControlNet folder and whether it takes a video
        (which picks the pipeline class). Jobs with equal keys share one loaded pipeline."""
        return (self.model_dir, self.adapter_dir, self.config.get("dtype", "float32"), self.controlnet,
                self.video is not None)


#: job fields that do not change the video: CFG groups compute the same branches, only elsewhere
NOT_HASHED = ("cfg",)


def config_hash(config: dict) -> str:
    """sha256 of the config as canonical JSON (sorted keys, no whitespace), without :data:`NOT_HASHED`."""
    hashed = {k: v for k, v in config.items() if k not in NOT_HASHED}
    if hashed.get("forecast") == "none":  # the default: manifests written before the option stay valid
        del hashed["forecast"]
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

#: frame size of a job that sets none when its model's configs cannot be read (it then fails to load)
FALLBACK_SIZE = 256


def resolved_stages(job, devices: int) -> int:
    """A job's stages: its own, else as many as its split lists, else one per device its CFG groups
    leave (``--devices 4`` with ``cfg: 2``: 2 stages)."""
    if job.stages is not None:
        return job.stages
    if isinstance(job.split, list):
        return len(job.split)
    return max(1, devices // job.cfg)


def make_task(job, model: str, out: Path, image: str | None = None, motion_adapter: str | None = None,
              controlnet: str | None = None, conditioning_frames: str | None = None, video: str | None = None,
              devices: int = 1) -> Task:
    """The job's config holds only its own kind's fields, and its stages resolved for ``devices``
    (they change the video, so they are part of its identity). Input files go in by content, so a
    changed file is rendered again: the image's sha256, the conditioning frames' and the input
    video's (:func:`~.inputs.frames_sha256`), and the ControlNet folder's fingerprint (its config
    and the names, sizes and modification times of its weights files)."""
    config = job.model_dump(mode="json", exclude_none=True)
    config["stages"] = resolved_stages(job, devices)
    if job.width is None or job.height is None:  # the model's own size, like its diffusers pipeline
        height, width = native_size(model) or (FALLBACK_SIZE, FALLBACK_SIZE)
        config.setdefault("height", height)
        config.setdefault("width", width)
    fingerprint = model_fingerprint(model)
    if fingerprint is not None:  # new weights in the same folder make the video stale
        config["model_fingerprint"] = fingerprint
    if image is not None:
        config["image_sha256"] = hashlib.sha256(Path(image).read_bytes()).hexdigest()
    if controlnet is not None:
        config["controlnet_fingerprint"] = controlnet_fingerprint(controlnet)
    if conditioning_frames is not None:
        config["conditioning_frames_sha256"] = frames_sha256(conditioning_frames)
    if video is not None:
        config["video_sha256"] = frames_sha256(video)
    return Task(config, config_hash(config), model, str(out / output_name(job.name, job.format)),
                str(out / f"{job.name}.json"), image, motion_adapter, controlnet, conditioning_frames, video)


def tasks_for(jobfile, out: Path, jobs=None, devices: int = 1) -> list[Task]:
    """Tasks of ``jobs`` (default: every job) of a loaded job file, writing into ``out``, for a run
    on ``devices`` devices (jobs that do not set ``stages`` get one stage per device)."""
    return [make_task(job, jobfile.model_ref(job), out, jobfile.image_path(job), jobfile.adapter_ref(job),
                      **jobfile.input_paths(job), devices=devices)
            for job in (jobfile.jobs if jobs is None else jobs)]


def is_done(task: Task) -> bool:
    """The video and its manifest exist, and the manifest was written for this exact config."""
    if not (os.path.exists(task.output) and os.path.isfile(task.manifest)):
        return False
    try:
        with open(task.manifest, encoding="utf-8") as f:
            return json.load(f).get("config_hash") == task.config_hash
    except (OSError, ValueError, AttributeError):
        return False


def resolve(task: Task) -> None:
    """Set the folders to load (built-ins are built into the cache); one-line error if missing."""
    task.model_dir = resolve_model(task.model)
    task.adapter_dir = resolve_adapter(task.motion_adapter)
    resolve_controlnet(task.controlnet)


def _versions() -> dict:
    import diffusers
    import torch

    from .. import __version__

    return {"asyncvid": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def write_manifest(task: Task, devices: int, frames: int, timings: dict) -> None:
    """``<name>.json`` beside the video, once the video is final: what :func:`is_done` checks."""
    manifest = dict(name=task.name, output=os.path.basename(task.output), config=task.config,
                    config_hash=task.config_hash, seed=task.config["seed"], model_dir=task.model_dir,
                    devices=devices, frames=frames, versions=_versions(), timings=timings,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if task.adapter_dir:
        manifest["motion_adapter_dir"] = task.adapter_dir
    inputs = dict(image=task.image, controlnet_dir=task.controlnet, conditioning_frames=task.conditioning_frames,
                  video=task.video)
    manifest.update({key: value for key, value in inputs.items() if value})  # absolute paths
    atomic_write(task.manifest, json.dumps(manifest, indent=2) + "\n")

"""Input files of text-to-video jobs: a ControlNet folder with its conditioning frames, and the
input video of a video-to-video job.

Frames (``conditioning_frames``, ``video``) are a folder of images, taken in file-name order, or a
video file decoded with PyAV. The job file loader checks every input before anything renders
(:func:`check_inputs`: one :class:`~.schema.FieldError` naming the field); tasks hash their content
(:func:`frames_sha256`); the driver reads them at the job's size (:func:`job_inputs`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..catalog.folders import SDXL_MODELS, controlnet_problem
from ..errors import AsyncVidError
from .schema import FieldError, image_problem

#: image files a frames folder is made of (any other file in it is ignored)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frames folder, sorted by file name (hidden files skipped)."""
    return sorted((p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                  key=lambda p: p.name)


def _decoded(path: Path):
    """The frames of a video file, as PyAV decodes them."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
        yield from container.decode(container.streams.video[0])


def count_frames(path: Path) -> int:
    """How many frames a folder of images or a video file holds; :class:`ValueError` with a
    one-line reason when it cannot be used (missing, empty, an unreadable image or video)."""
    if not path.exists():
        raise ValueError(f"not found: {path} (expected a folder of images or a video file)")
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        for file in files:
            problem = image_problem(file)
            if problem:
                raise ValueError(problem)
        return len(files)
    try:
        count = sum(1 for _ in _decoded(path))
    except Exception as exc:  # noqa: BLE001 - PyAV raises many kinds of errors for bad files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"not a readable video file: {path} ({reason})") from None
    if not count:
        raise ValueError(f"the video has no frames: {path}")
    return count


def read_frames(path: str | Path, width: int, height: int) -> list:
    """The frames of a folder of images or a video file as RGB PIL images of ``width`` x ``height``."""
    import PIL.Image
    import PIL.ImageOps

    path = Path(path)
    if path.is_dir():
        images = []
        for file in frame_files(path):
            with PIL.Image.open(file) as image:
                images.append(PIL.ImageOps.exif_transpose(image).convert("RGB"))
    else:
        images = [frame.to_image().convert("RGB") for frame in _decoded(path)]
    return [im if im.size == (width, height) else im.resize((width, height), PIL.Image.BICUBIC) for im in images]


def frames_sha256(path: str | Path) -> str:
    """sha256 of a video file, or of a frames folder's image file names and contents in order."""
    path = Path(path)
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in frame_files(path):
        digest.update(f"{file.name}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\0".encode())
    return digest.hexdigest()


def check_inputs(job, base_dir: Path, model_class: str | None, frames_set: bool):
    """Check a text-to-video job's ControlNet folder, conditioning frames and input video; the job
    with ``frames`` taken from its input video. Raises :class:`FieldError`. ``model_class`` is the
    model folder's pipeline class (None for built-in models).

    A video-to-video job renders as many frames as its video has: ``frames_set`` (the job itself
    sets ``frames``) with another number is an error; a ``frames`` from the defaults gives way."""
    def path(value: str) -> Path:
        return (base_dir / Path(value).expanduser()).resolve()

    if job.controlnet is None and job.video is None:
        return job
    if model_class in SDXL_MODELS:
        field = "controlnet" if job.controlnet else "video"
        raise FieldError(field, f"the model is AnimateDiff SDXL, and diffusers has no AnimateDiff SDXL pipeline for "
                                f"{'ControlNet' if field == 'controlnet' else 'video-to-video'} jobs")
    frames, source = job.frames, f"the job renders {job.frames} (frames: {job.frames})"
    if job.video is not None:
        try:
            frames = count_frames(path(job.video))
        except ValueError as exc:
            raise FieldError("video", str(exc)) from None
        if frames_set and job.frames != frames:
            raise FieldError("frames", f"is {job.frames} but the video has {frames} frames (a video-to-video job "
                                       f"renders as many frames as its video: leave frames out)")
        job = job.model_copy(update={"frames": frames})
        source = f"the video has {frames}"
    if job.controlnet is not None:
        problem = controlnet_problem(str(path(job.controlnet)))
        if problem:
            raise FieldError("controlnet", problem)
        try:
            count = count_frames(path(job.conditioning_frames))
        except ValueError as exc:
            raise FieldError("conditioning_frames", str(exc)) from None
        if count != frames:
            raise FieldError("conditioning_frames", f"has {count} frame{'s' * (count != 1)} but {source}: "
                                                    f"give one conditioning frame per output frame")
    return job


def job_inputs(task) -> dict:
    """The pipeline-call arguments read from a task's input files: ``conditioning_frames`` and
    ``video``, each a list of PIL frames at the job's size (read again here: a file changed since
    the job file was checked is caught before the pipeline call)."""
    cfg, found = task.config, {}
    for field in ("conditioning_frames", "video"):
        source = getattr(task, field, None)
        if source is None:
            continue
        frames = read_frames(source, cfg["width"], cfg["height"])
        if len(frames) != cfg["frames"]:
            raise AsyncVidError(f"{field}: {source} now has {len(frames)} frames, expected {cfg['frames']}")
        found[field] = frames
    return found

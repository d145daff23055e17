"""The job schema of ``asyncvid render``: the fields a job can set, their defaults and checks,
and how a job's kind (``t2v`` text-to-video or ``i2v`` image-to-video) is decided. A text-to-video
job may add a ControlNet (``controlnet`` + ``conditioning_frames``) and/or an input ``video``
(video-to-video); their files are checked by :mod:`.inputs`.

:mod:`.jobfile` reads the YAML file and turns every problem into one line with its place.
"""

from __future__ import annotations

from ..catalog.hub import model_location

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic import create_model

from ..errors import AsyncVidError
from ..catalog.builtin import BUILTINS, DEFAULT_MODEL, DEFAULT_STEPS
from ..catalog.folders import BASE_MODELS, KIND_NAMES, model_kind, pipeline_class_name

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
Format = Literal["mp4", "webm", "gif", "av1", "png"]
Kind = Literal["t2v", "i2v"]
#: fields that belong to one kind of job only (the other kind rejects them)
KIND_FIELDS = {
    "t2v": ("prompt", "negative_prompt", "guidance", "motion_adapter", "controlnet", "conditioning_frames",
            "controlnet_scale", "video", "strength"),
    "i2v": ("image", "motion_bucket_id", "noise_aug_strength", "min_guidance", "max_guidance"),
}
#: defaults of those fields, filled in for jobs of their kind
KIND_DEFAULTS = {
    "t2v": dict(negative_prompt="", guidance=7.5),
    "i2v": dict(motion_bucket_id=127, noise_aug_strength=0.02, min_guidance=1.0, max_guidance=3.0),
}
#: fields that only mean something next to another one: field -> (the field it needs, its default,
#: what such jobs are called). ``defaults:`` values of these are skipped for jobs without it.
DEPENDENT_FIELDS = {
    "conditioning_frames": ("controlnet", None, "ControlNet"),
    "controlnet_scale": ("controlnet", 1.0, "ControlNet"),
    "strength": ("video", 0.8, "video-to-video"),
}


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8, got {value}")
    return value


def _split(value: Any):
    """``"auto"`` or, per stage, a list of UNet module names."""
    if value == "auto":
        return value
    ok = isinstance(value, list) and value and all(
        isinstance(s, list) and s and all(isinstance(n, str) and n for n in s) for s in value)
    if not ok:
        raise ValueError(f"must be 'auto' or a list (one per stage) of lists of module names, got {value!r:.60}")
    return value


def _stride(value: int) -> int:
    if value not in (1, 2):
        raise ValueError(f"must be 1 or 2, got {value}")
    return value


def _forecast(value: str) -> str:
    from ..engine.forecast import Forecast

    try:
        return Forecast.parse(value).name
    except AsyncVidError as exc:  # its line becomes the field's message
        raise ValueError(str(exc)) from None


Size = Annotated[int, Field(ge=8), AfterValidator(_multiple_of_8)]
Stride = Annotated[int, AfterValidator(_stride)]  # not Literal[1, 2]: that would accept `true`
Split = Annotated[Any, AfterValidator(_split)]


class Job(BaseModel):
    """One resolved job (defaults merged in). Fields of the other kind stay None; the defaults of
    this kind's own fields are filled in by validation."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: str
    task: Kind = "t2v"
    model: str = Field(DEFAULT_MODEL, min_length=1)
    motion_adapter: Optional[str] = Field(None, min_length=1)
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    guidance: Optional[float] = Field(None, ge=0)
    image: Optional[str] = Field(None, min_length=1)
    motion_bucket_id: Optional[int] = Field(None, ge=0)
    noise_aug_strength: Optional[float] = Field(None, ge=0)
    min_guidance: Optional[float] = Field(None, ge=0)
    max_guidance: Optional[float] = Field(None, ge=0)
    controlnet: Optional[str] = Field(None, min_length=1)
    conditioning_frames: Optional[str] = Field(None, min_length=1)
    controlnet_scale: Optional[float] = Field(None, ge=0)
    video: Optional[str] = Field(None, min_length=1)
    strength: Optional[float] = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0, lt=2**63)
    frames: int = Field(16, ge=1)
    width: Optional[Size] = None  # None: the model's own size (tasks.make_task), as diffusers does
    height: Optional[Size] = None
    fps: float = Field(8.0, gt=0)
    steps: int = Field(DEFAULT_STEPS, ge=1)
    decode_chunk: Optional[int] = Field(None, ge=1)
    format: Format = "mp4"
    crf: int = Field(18, ge=0, le=63)
    stages: Optional[int] = Field(None, ge=1)  # None: one stage per device left by cfg (tasks.make_task)
    cfg: int = Field(1, ge=1, le=3)
    stride: Stride = 1
    warmup: int = Field(1, ge=0)
    forecast: Annotated[str, AfterValidator(_forecast)] = "none"
    split: Split = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not NAME_RE.match(name) or ".." in name or len(name) > 120:
            raise ValueError(f"must be a plain file name (letters, digits, '_', '-', '.'; no '/', '\\', '..'), got {name!r}")
        return name

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, data: Any) -> Any:
        """Without a ``task``: the built-in model's kind, else i2v when an image is given (the job
        file loader decides from model folders before this)."""
        if isinstance(data, dict) and data.get("task") is None:
            model = data.get("model", DEFAULT_MODEL)
            kind = BUILTINS.get(model) if isinstance(model, str) else None
            data = dict(data, task=kind or ("i2v" if data.get("image") is not None else "t2v"))
        return data

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "Job":
        kind = self.task
        why = (info.context or {}).get("why") or f"task: {kind}"
        for field in KIND_FIELDS[other_kind(kind)]:
            if getattr(self, field) is not None:
                hint = "; use an image-to-video model, e.g. tiny-random-svd" if field == "image" else ""
                raise ValueError(f"{field}: only for {KIND_NAMES[other_kind(kind)]} jobs, and this job is "
                                 f"{KIND_NAMES[kind]} ({why}){hint}")
        required = "prompt" if kind == "t2v" else "image"
        if getattr(self, required) is None:
            raise ValueError(f"{required}: Field required for {KIND_NAMES[kind]} jobs ({why})")
        for field, value in KIND_DEFAULTS[kind].items():
            if getattr(self, field) is None:
                self.__dict__[field] = value  # frozen: set once, during validation
        for field, (needs, default, what) in DEPENDENT_FIELDS.items():
            if getattr(self, needs) is None:
                if getattr(self, field) is not None:
                    raise ValueError(f"{field}: only for {what} jobs, and this job sets no {needs}")
            elif getattr(self, field) is None:
                if default is None:
                    raise ValueError(f"{field}: Field required for {what} jobs ({needs} is set)")
                self.__dict__[field] = default
        if self.format == "mp4" and self.crf > 51:
            raise ValueError(f"crf: must be <= 51 for mp4 (H.264), got {self.crf}")
        if (self.stages or 1) > 1 and self.warmup < 1:
            raise ValueError("warmup: must be >= 1 when stages > 1 (the first step seeds every stage)")
        scale = self.guidance if kind == "t2v" else self.max_guidance
        if self.cfg > 1 and scale <= 1:
            field = "guidance" if kind == "t2v" else "max_guidance"
            raise ValueError(f"cfg: {self.cfg} splits the guidance batch across device groups, but {field} is "
                             f"{scale:g} (<= 1: no guidance batch); use cfg: 1")
        if isinstance(self.split, list) and self.stages is not None and len(self.split) != self.stages:
            raise ValueError(f"split: lists {len(self.split)} stage(s) but stages is {self.stages}")
        return self


def other_kind(kind: str) -> str:
    return "i2v" if kind == "t2v" else "t2v"


class FieldError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def job_kind(defaults: dict, item: dict, base_dir: Path) -> tuple[str | None, str]:
    """(kind, why) of a job: its ``task``, else its model's kind (built-in name or the folder's
    ``model_index.json``), else i2v if it sets ``image``, else t2v. None when ``task`` is invalid
    (validation reports it)."""
    merged = {**defaults, **item}
    model, task = merged.get("model", DEFAULT_MODEL), merged.get("task")
    model_says, because = None, ""
    if isinstance(model, str) and model:
        ref = model if model in BUILTINS else model_location(model, base_dir)
        try:
            model_says, because = model_kind(ref)
        except AsyncVidError as exc:
            raise FieldError("model", str(exc)) from None
        base = pipeline_class_name(ref)
        if base in BASE_MODELS and merged.get("motion_adapter") is None:
            raise FieldError("model", f"{ref} is a {base} (an image model): set motion_adapter "
                                      f"to an AnimateDiff motion adapter folder to render video with it")
    if task is not None:
        if task not in KIND_NAMES:
            return None, ""
        if model_says and model_says != task:
            raise FieldError("task", f"is {task} ({KIND_NAMES[task]}) but {because}")
        return task, f"task: {task}"
    if model_says:
        return model_says, because
    if "image" in item or ("image" in merged and "prompt" not in merged):
        return "i2v", "it sets image"
    return "t2v", "it sets prompt" if "prompt" in merged else "t2v is the default task"


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable conditioning image (one line), or None."""
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a file: {path}"
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except PIL.UnidentifiedImageError:
        return f"not an image file: {path}"
    except PermissionError:
        return f"cannot read {path}: permission denied"
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt files raise various errors
        return f"not a readable image file: {path} ({' '.join(str(exc).split()) or type(exc).__name__})"
    return None


def _all_optional(model: type[BaseModel], name: str, exclude: set[str]) -> type[BaseModel]:
    """``model``'s fields (same types and bounds), each optional with no default: what a partial
    ``defaults:`` block may set. Derived, so the two can never drift apart."""
    fields = {}
    for field_name, info in model.model_fields.items():
        if field_name in exclude:
            continue
        optional = copy.copy(info)
        optional.default = None
        optional.default_factory = None
        fields[field_name] = (Optional[info.annotation], optional)
    return create_model(name, __config__=ConfigDict(strict=True, extra="forbid"), **fields)


#: Everything a job can set, all optional, so that ``defaults`` can be partial.
JobOptions = _all_optional(Job, "JobOptions", exclude={"name"})

"""The render job file (YAML): ``defaults`` merged under every entry of ``jobs``, plus ``out``.

Every problem is reported as one :class:`JobFileError` line naming the file, the YAML line, the
job and the field, e.g. ``jobs.yaml:12: job 2 'circle': frames: Input should be greater than or
equal to 1 (got 0)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import AsyncVidError

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
Format = Literal["mp4", "webm", "gif", "av1", "png"]


class JobFileError(AsyncVidError):
    """A job file that cannot be read or does not validate (the message is one line)."""


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


Size = Annotated[int, Field(ge=8), AfterValidator(_multiple_of_8)]
Stride = Annotated[int, AfterValidator(_stride)]  # not Literal[1, 2]: that would accept `true`
Split = Annotated[Any, AfterValidator(_split)]


class JobOptions(BaseModel):
    """Everything a job can set; all optional so that ``defaults`` can be partial."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: Optional[str] = Field(None, min_length=1)
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    frames: Optional[int] = Field(None, ge=1)
    width: Optional[Size] = None
    height: Optional[Size] = None
    fps: Optional[float] = Field(None, gt=0)
    steps: Optional[int] = Field(None, ge=1)
    guidance: Optional[float] = Field(None, ge=0)
    format: Optional[Format] = None
    crf: Optional[int] = Field(None, ge=0, le=63)
    stages: Optional[int] = Field(None, ge=1)
    stride: Optional[Stride] = None
    warmup: Optional[int] = Field(None, ge=0)
    split: Optional[Split] = None


class Job(BaseModel):
    """One resolved job (defaults merged in)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: str
    prompt: str
    negative_prompt: str = ""
    model: str = Field("tiny-random", min_length=1)
    seed: int = Field(0, ge=0, lt=2**63)
    frames: int = Field(16, ge=1)
    width: Size = 256
    height: Size = 256
    fps: float = Field(8.0, gt=0)
    steps: int = Field(20, ge=1)
    guidance: float = Field(7.5, ge=0)
    format: Format = "mp4"
    crf: int = Field(18, ge=0, le=63)
    stages: int = Field(1, ge=1)
    stride: Stride = 1
    warmup: int = Field(1, ge=0)
    split: Split = "auto"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not NAME_RE.match(name) or ".." in name or len(name) > 120:
            raise ValueError(f"must be a plain file name (letters, digits, '_', '-', '.'; no '/', '\\', '..'), got {name!r}")
        return name

    @model_validator(mode="after")
    def _check(self) -> "Job":
        if self.format == "mp4" and self.crf > 51:
            raise ValueError(f"crf: must be <= 51 for mp4 (H.264), got {self.crf}")
        if self.stages > 1 and self.warmup < 1:
            raise ValueError("warmup: must be >= 1 when stages > 1 (the first step seeds every stage)")
        if isinstance(self.split, list) and len(self.split) != self.stages:
            raise ValueError(f"split: lists {len(self.split)} stage(s) but stages is {self.stages}")
        return self


@dataclass(frozen=True)
class JobFile:
    """A loaded job file: resolved jobs, the output folder and the file's own folder."""

    path: Path
    out: Path
    jobs: list[Job]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def model_ref(self, job: Job) -> str:
        """``tiny-random`` or the model folder, relative paths taken from the job file's folder."""
        if job.model == "tiny-random":
            return job.model
        return str((self.base_dir / Path(job.model).expanduser()).resolve())


# ---------------------------------------------------------------------------------- line numbers
class _Lines:
    """YAML line numbers (1-based) of the top-level keys, of ``defaults`` keys and of each job."""

    def __init__(self, root):
        self.top: dict[str, int] = {}
        self.defaults: dict[str, int] = {}
        self.jobs: list[tuple[int, dict[str, int]]] = []
        if not isinstance(root, yaml.MappingNode):
            return
        self.top = _key_lines(root)
        for key, value in root.value:
            if key.value == "defaults" and isinstance(value, yaml.MappingNode):
                self.defaults = _key_lines(value)
            elif key.value == "jobs" and isinstance(value, yaml.SequenceNode):
                self.jobs = [(item.start_mark.line + 1, _key_lines(item) if isinstance(item, yaml.MappingNode) else {})
                             for item in value.value]

    def job(self, index: int, field: str | None = None) -> int | None:
        if index >= len(self.jobs):
            return self.top.get("jobs")
        start, keys = self.jobs[index]
        if field in keys:
            return keys[field]
        return self.defaults.get(field, start) if field else start


def _key_lines(node) -> dict[str, int]:
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def _duplicate_key(node) -> tuple[str, int] | None:
    """The first mapping key that appears twice anywhere (safe_load would silently keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    return key.value, key.start_mark.line + 1
                seen.add(key.value)
            found = _duplicate_key(value)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------- loading
def _first_error(err: ValidationError) -> tuple[str | None, str]:
    """(field, message) of the first validation error, on one line."""
    e = err.errors(include_url=False)[0]
    loc = [str(p) for p in e["loc"]]
    msg = e["msg"].removeprefix("Value error, ")
    field = ".".join(loc) if loc else None
    if field is None and ": " in msg:  # model-level checks name their field first
        field, msg = msg.split(": ", 1)
    if e["type"] not in ("missing", "value_error") and "input" in e:
        shown = repr(e["input"])
        msg += f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"
    more = len(err.errors()) - 1
    if more:
        msg += f" (+{more} more problem{'s' if more > 1 else ''})"
    return field, " ".join(msg.split())


def load_job_file(path) -> JobFile:
    """Read, validate and resolve a job file; raise :class:`JobFileError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: cannot read job file: {exc}") from None

    def fail(message: str, line: int | None = None):
        where = f"{path}:{line}" if line else str(path)
        return JobFileError(f"{where}: {' '.join(message.split())}")

    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise fail(f"YAML syntax error: {problem}", mark.line + 1 if mark else None) from None
    lines = _Lines(root)
    dup = _duplicate_key(root)
    if dup:
        raise fail(f"key {dup[0]!r} appears twice in the same mapping", dup[1])

    if not isinstance(data, dict):
        raise fail("expected a mapping with a 'jobs' list at the top level")
    unknown = sorted(set(map(str, data)) - {"defaults", "out", "jobs"})
    if unknown:
        raise fail(f"{unknown[0]}: unknown top-level key (allowed: defaults, out, jobs)", lines.top.get(unknown[0]))
    out = data.get("out", "out")
    if not isinstance(out, str) or not out:
        raise fail("out: must be a folder path (a non-empty string)", lines.top.get("out"))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise fail("defaults: must be a mapping of job fields", lines.top.get("defaults"))
    if "name" in defaults:
        raise fail("defaults: name: cannot have a default (each job needs its own name)", lines.defaults.get("name"))
    try:
        JobOptions.model_validate(defaults)
    except ValidationError as err:
        field, msg = _first_error(err)
        raise fail(f"defaults: {field}: {msg}" if field else f"defaults: {msg}", lines.defaults.get(field or "", lines.top.get("defaults"))) from None

    items = data.get("jobs")
    if not isinstance(items, list) or not items:
        raise fail("jobs: must be a non-empty list of jobs", lines.top.get("jobs"))
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        label = f"job {i + 1}"
        if not isinstance(item, dict):
            raise fail(f"{label}: must be a mapping of job fields", lines.job(i))
        if isinstance(item.get("name"), str):
            label += f" {item['name']!r}"
        try:
            job = Job.model_validate({**defaults, **item})
        except ValidationError as err:
            field, msg = _first_error(err)
            top = field.split(".")[0] if field else None
            raise fail(f"{label}: {field}: {msg}" if field else f"{label}: {msg}", lines.job(i, top)) from None
        key = job.name.lower()  # names are file names: avoid clashes on case-insensitive file systems
        if key in seen:
            raise fail(f"{label}: name: duplicate job name (same as job {seen[key] + 1})", lines.job(i, "name"))
        seen[key] = i
        jobs.append(job)
    out_dir = (path.parent / Path(out).expanduser()).resolve()
    return JobFile(path=path.resolve(), out=out_dir, jobs=jobs)

"""The render job file (YAML): ``defaults`` merged under every entry of ``jobs``, plus ``out``.

Every problem of the defaults and of every job is reported at once, one :class:`JobFileError`
line each, naming the file, the YAML line, the job and the field, e.g. ``jobs.yaml:12: job 2
'circle': frames: Input should be greater than or equal to 1 (got 0)``; an unknown field gets
diffusers' equivalent (``num_inference_steps`` -> ``steps``) or a near spelling. A job is text-to-video (``t2v``: AnimateDiff, a ``prompt``) or image-to-video
(``i2v``: Stable Video Diffusion, an ``image`` file relative to the job file); the schema and how
the kind is decided are in :mod:`.schema`. Images, ControlNet folders, conditioning frames and input
videos (:mod:`.inputs`) are checked here, before any model loads.
"""

from __future__ import annotations

from ..catalog.hub import model_location

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..catalog.builtin import BUILTINS
from ..catalog.folders import pipeline_class_name
from ..errors import AsyncVidError
from .inputs import check_inputs
from .schema import DEPENDENT_FIELDS, KIND_FIELDS, FieldError, Job, JobOptions, image_problem, job_kind, other_kind

__all__ = ["JobFile", "JobFileError", "load_job_file"]


class JobFileError(AsyncVidError):
    """One problem per line (``FILE:LINE: job I 'name': field: what``); :attr:`problems` lists them."""

    @classmethod
    def of(cls, problems: list[str]) -> "JobFileError":
        err = cls("\n".join(problems))
        err.problems = list(problems)
        return err


@dataclass(frozen=True)
class JobFile:
    """A loaded job file: resolved jobs, the output folder and the file's own folder."""

    path: Path
    out: Path
    jobs: list[Job]
    lines: list[dict] = dataclass_field(default_factory=list, compare=False, repr=False)  # per job: field -> line

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def _path(self, value: str) -> str:
        return str((self.base_dir / Path(value).expanduser()).resolve())

    def model_ref(self, job: Job) -> str:
        """A built-in name or the model folder: relative paths taken from the job file's folder, a
        hub id (``org/name``) that is no such folder from the local Hugging Face cache."""
        return job.model if job.model in BUILTINS else model_location(job.model, self.base_dir)

    def adapter_ref(self, job: Job) -> str | None:
        return self._path(job.motion_adapter) if job.motion_adapter else None

    def image_path(self, job: Job) -> str | None:
        return self._path(job.image) if job.image else None

    def input_paths(self, job: Job) -> dict:
        """A text-to-video job's input files and folders that are set: ``controlnet``,
        ``conditioning_frames``, ``video`` -> absolute path."""
        return {f: self._path(getattr(job, f)) for f in ("controlnet", "conditioning_frames", "video")
                if getattr(job, f, None)}

    def where(self, job: Job, field: str | None = None) -> str:
        """``FILE:LINE: job I 'name'`` for one-line messages about a job (or one of its fields)."""
        i = self.jobs.index(job)
        keys = self.lines[i] if i < len(self.lines) else {}
        line = keys.get(field) or keys.get("")
        return f"{self.path}:{line}: job {i + 1} {job.name!r}" if line else f"{self.path}: job {i + 1} {job.name!r}"


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
#: diffusers' call arguments -> the job field that means the same
DIFFUSERS_NAMES = {"num_inference_steps": "steps", "guidance_scale": "guidance", "num_frames": "frames",
                   "decode_chunk_size": "decode_chunk", "min_guidance_scale": "min_guidance",
                   "max_guidance_scale": "max_guidance", "controlnet_conditioning_scale": "controlnet_scale",
                   "image_path": "image", "output_type": "format", "generator": "seed"}


def _suggestion(field: str) -> str:
    """``; did you mean `x`?`` for an unknown field: diffusers' name for it, or a near spelling."""
    import difflib

    if field in DIFFUSERS_NAMES:
        return f" (diffusers' name; the job field is `{DIFFUSERS_NAMES[field]}`)"
    close = difflib.get_close_matches(field, list(Job.model_fields), n=1, cutoff=0.75)
    return f"; did you mean `{close[0]}`?" if close else ""


def _errors(err: ValidationError) -> list[tuple[str | None, str]]:
    """(field, message) of every validation error, each on one line."""
    out = []
    for e in err.errors(include_url=False):
        loc = [str(p) for p in e["loc"]]
        msg = e["msg"].removeprefix("Value error, ")
        field = ".".join(loc) if loc else None
        if field is None and ": " in msg:  # model-level checks name their field first
            field, msg = msg.split(": ", 1)
        if e["type"] == "extra_forbidden" and field:
            msg = "unknown field" + _suggestion(field)
        elif e["type"] not in ("missing", "value_error") and "input" in e:
            shown = repr(e["input"])
            msg += f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"
        out.append((field, " ".join(msg.split())))
    return out


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

    problems: list[str] = []  # every problem of the defaults and the jobs, reported together

    def note(message: str, line: int | None = None) -> None:
        problems.append(str(fail(message, line)))

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
        for field, msg in _errors(err):
            note(f"defaults: {field}: {msg}" if field else f"defaults: {msg}",
                 lines.defaults.get((field or "").split(".")[0], lines.top.get("defaults")))
        raise JobFileError.of(problems) from None

    items = data.get("jobs")
    if not isinstance(items, list) or not items:
        raise fail("jobs: must be a non-empty list of jobs", lines.top.get("jobs"))
    jobs: list[Job] = []
    job_lines: list[dict] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            job = _load_job(i, item, defaults, path, lines, fail, note)
        except JobFileError as err:
            problems.append(str(err))
            continue
        if job is None:
            continue
        key = job.name.lower()  # names are file names: avoid clashes on case-insensitive file systems
        if key in seen:
            note(f"job {i + 1} {job.name!r}: name: duplicate job name (same as job {seen[key] + 1})",
                 lines.job(i, "name"))
            continue
        seen[key] = i
        jobs.append(job)
        start, keys = lines.jobs[i] if i < len(lines.jobs) else (None, {})
        job_lines.append({**lines.defaults, **keys, "": start})
    if problems:
        raise JobFileError.of(problems)
    out_dir = (path.parent / Path(out).expanduser()).resolve()
    return JobFile(path=path.resolve(), out=out_dir, jobs=jobs, lines=job_lines)


def _load_job(i: int, item, defaults: dict, path: Path, lines: "_Lines", fail, note) -> Job | None:
    """Job ``i`` validated and its inputs checked; its problems go to ``note`` (None returned) or,
    for the one that stops it early, raise."""
    label = f"job {i + 1}"
    if not isinstance(item, dict):
        raise fail(f"{label}: must be a mapping of job fields", lines.job(i))
    if isinstance(item.get("name"), str):
        label += f" {item['name']!r}"
    try:
        kind, why = job_kind(defaults, item, path.parent)
    except FieldError as err:
        raise fail(f"{label}: {err.field}: {err.message}", lines.job(i, err.field)) from None
    # defaults may hold fields of both kinds (mixed files); a job takes those of its own kind
    data = {k: v for k, v in defaults.items() if kind is None or k not in KIND_FIELDS[other_kind(kind)]}
    for field, (needs, _, _) in DEPENDENT_FIELDS.items():  # e.g. a default strength, for video jobs only
        if field in data and {**data, **item}.get(needs) is None:
            del data[field]
    data.update(item)
    if kind is not None:
        data["task"] = kind
    try:
        job = Job.model_validate(data, context={"why": why})
    except ValidationError as err:
        for field, msg in _errors(err):
            top = field.split(".")[0] if field else None
            note(f"{label}: {field}: {msg}" if field else f"{label}: {msg}", lines.job(i, top))
        return None
    if job.task == "i2v":
        problem = image_problem((path.parent / Path(job.image).expanduser()).resolve())
        if problem:
            raise fail(f"{label}: image: {problem}", lines.job(i, "image"))
        return job
    model_class = None if job.model in BUILTINS else pipeline_class_name(path.parent / Path(job.model).expanduser())
    try:
        return check_inputs(job, path.parent, model_class, frames_set="frames" in item)
    except FieldError as err:
        raise fail(f"{label}: {err.field}: {err.message}", lines.job(i, err.field)) from None

"""The render loop behind ``asyncvid render``: model cache, per-rank rendering, manifests.

:func:`_render_all` runs in the CLI process for one device, or on every rank under
:func:`asyncvid.launch_local` for several. Rank 0 drives the pipeline, writes the videos and
manifests and appends one JSON line per finished job to a results file, so the parent still knows
which jobs finished if a rank dies part way.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers are imported: never download
for _var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
    os.environ.setdefault(_var, "error")  # their load-time chatter would bury the one-line job reports
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from ..errors import AsyncVidError, PlanError
from ..video import VideoWriter, output_name

TINY_RANDOM = "tiny-random"


@dataclass
class Task:
    """One job to render: its resolved config (what the manifest hash covers) and where it goes."""

    config: dict
    config_hash: str
    model: str  # "tiny-random" or an absolute model folder
    output: str
    manifest: str
    model_dir: str | None = None  # the folder actually loaded, set just before rendering

    @property
    def name(self) -> str:
        return self.config["name"]


def one_line(exc: BaseException) -> str:
    """First line of an error; the exception type too unless it is one of ours."""
    lines = str(exc).strip().splitlines()
    msg = lines[0] if lines else ""
    return msg if isinstance(exc, AsyncVidError) else f"{type(exc).__name__}: {msg}"


def config_hash(config: dict) -> str:
    """sha256 of the config as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_task(job, model: str, out: Path) -> Task:
    config = job.model_dump(mode="json")
    return Task(config, config_hash(config), model, str(out / output_name(job.name, job.format)),
                str(out / f"{job.name}.json"))


def is_done(task: Task) -> bool:
    """The video and its manifest exist, and the manifest was written for this exact config."""
    if not (os.path.exists(task.output) and os.path.isfile(task.manifest)):
        return False
    try:
        with open(task.manifest, encoding="utf-8") as f:
            return json.load(f).get("config_hash") == task.config_hash
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------------------------- models
def cache_dir() -> Path:
    return Path(os.environ.get("ASYNCVID_CACHE") or Path.home() / ".cache" / "asyncvid").expanduser()


def ensure_tiny_random() -> Path:
    """Build the random-weight default model once into the cache (temp folder, then rename)."""
    folder = cache_dir() / "models" / TINY_RANDOM
    if (folder / "model_index.json").is_file():
        return folder
    from ..models.tiny import save_animatediff_pipeline

    _quiet_libraries()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{TINY_RANDOM}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_animatediff_pipeline(tmp, "tiny", seed=0)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process finished first (or a broken leftover is in the way)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model_index.json").is_file():
            raise AsyncVidError(f"cannot create the model cache at {folder}: remove it and retry") from None
    return folder


def resolve_model(model: str) -> str:
    """The diffusers folder for a job's model; one-line error if it is missing."""
    if model == TINY_RANDOM:
        return str(ensure_tiny_random())
    if not (Path(model) / "model_index.json").is_file():
        what = "has no model_index.json" if Path(model).is_dir() else "not found"
        raise AsyncVidError(f"model folder {what}: {model} (expected a local diffusers pipeline folder)")
    return model


def _quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def load_pipeline(model_dir: str):
    from diffusers import AnimateDiffPipeline

    _quiet_libraries()
    pipe = AnimateDiffPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------- reporting
class Reporter:
    """Rank 0's view: a rich progress bar over jobs, one line per job, and the results file."""

    def __init__(self, total: int, quiet: bool, results_path: str | None):
        self.quiet, self.results_path, self.results = quiet, results_path, []
        self.progress = None
        if not quiet and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn())
            self.bar = self.progress.add_task("rendering", total=total)
            self.progress.start()

    def begin(self, task: Task) -> None:
        if self.progress:
            self.progress.update(self.bar, description=f"rendering {task.name}")

    def finish(self, task: Task, ok: bool, message: str, **extra) -> None:
        result = dict(name=task.name, status="done" if ok else "failed", message=message, **extra)
        self.results.append(result)
        if self.results_path:
            with open(self.results_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
        if not ok:
            print(f"asyncvid: job {task.name!r} failed: {message}", file=sys.stderr, flush=True)
        elif not self.quiet:
            print(f"done {task.name} -> {task.output} ({message})", flush=True)
        if self.progress:
            self.progress.advance(self.bar)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


# ---------------------------------------------------------------------------------- rendering
def _versions() -> dict:
    import diffusers
    import torch

    from .. import __version__

    return {"asyncvid": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def _write_manifest(task: Task, devices: int, frames: int, timings: dict) -> None:
    manifest = dict(name=task.name, output=os.path.basename(task.output), config=task.config,
                    config_hash=task.config_hash, seed=task.config["seed"], model_dir=task.model_dir,
                    devices=devices, frames=frames, versions=_versions(), timings=timings,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tmp = os.path.join(os.path.dirname(task.manifest), f".{os.path.basename(task.manifest)}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(tmp, task.manifest)


def _generate(pipe, cfg: dict):
    import torch

    out = pipe(prompt=cfg["prompt"], negative_prompt=cfg["negative_prompt"] or None, num_frames=cfg["frames"],
               height=cfg["height"], width=cfg["width"], num_inference_steps=cfg["steps"],
               guidance_scale=cfg["guidance"], output_type="np",
               generator=torch.Generator().manual_seed(cfg["seed"]))
    return out.frames[0]


def _render_one(pipe, task: Task, devices: int, reporter: Reporter, fatal_pipe_errors: bool) -> None:
    """Denoise, encode, then write the manifest. With several devices a failure inside the
    pipeline call leaves the other ranks mid-call, so it is re-raised to stop the whole group."""
    cfg = task.config
    reporter.begin(task)
    start = time.perf_counter()
    try:
        frames = _generate(pipe, cfg)
    except Exception as exc:
        reporter.finish(task, False, one_line(exc))
        if fatal_pipe_errors:
            raise
        return
    denoise_s = time.perf_counter() - start
    try:
        with VideoWriter(task.output, cfg["fps"], cfg["format"], crf=cfg["crf"]) as writer:
            writer.write(frames)
        total_s = time.perf_counter() - start
        timings = dict(denoise_s=round(denoise_s, 4), encode_s=round(total_s - denoise_s, 4), total_s=round(total_s, 4))
        _write_manifest(task, devices, len(frames), timings)
    except Exception as exc:  # noqa: BLE001 - reported per job, the next job still runs
        reporter.finish(task, False, one_line(exc))
        return
    reporter.finish(task, True, f"denoise {denoise_s:.2f} s, total {total_s:.2f} s", timings=timings)


def _render_single(tasks: list[Task], reporter: Reporter) -> None:
    """One device: the plain pipeline (stages=1), loaded once per model and reused."""
    from ..distributed.env import default_device

    pipes: dict[str, object] = {}
    for task in tasks:
        try:
            if task.model_dir not in pipes:
                pipes[task.model_dir] = load_pipeline(task.model_dir).to(default_device())
        except Exception as exc:  # noqa: BLE001
            pipes[task.model_dir] = exc
        pipe = pipes[task.model_dir]
        if isinstance(pipe, Exception):
            reporter.finish(task, False, f"cannot load model {task.model_dir}: {one_line(pipe)}")
            continue
        _render_one(pipe, task, 1, reporter, fatal_pipe_errors=False)


def _groups(tasks: list[Task]) -> dict[tuple, list[Task]]:
    """Jobs that can share one parallel pipeline: same model and same parallel options."""
    groups: dict[tuple, list[Task]] = {}
    for t in tasks:
        c = t.config
        key = (t.model_dir, c["stages"], c["stride"], c["warmup"], json.dumps(c["split"]))
        groups.setdefault(key, []).append(t)
    return groups


def _render_parallel(tasks: list[Task], devices: int, reporter: Reporter | None) -> None:
    """Every rank: one ParallelPipeline per group; rank 0 renders, the others serve until closed."""
    import asyncvid

    groups = _groups(tasks)
    uses = Counter(key[0] for key in groups)
    loaded: dict[str, object] = {}
    for key, group in groups.items():
        model_dir = key[0]
        if model_dir not in loaded:
            loaded[model_dir] = load_pipeline(model_dir)
        uses[model_dir] -= 1
        # parallelize() moves weights and hooks the UNet: later groups of this model get a copy
        pipe = loaded.pop(model_dir) if uses[model_dir] == 0 else copy.deepcopy(loaded[model_dir])
        c = group[0].config
        try:
            ppipe = asyncvid.parallelize(pipe, stages=c["stages"], stride=c["stride"], warmup=c["warmup"], split=c["split"])
        except PlanError as exc:
            if not isinstance(c["split"], list):
                raise  # an auto split may fail mid-collective on some ranks only: stop the group
            # an explicit split is checked identically on every rank before any communication,
            # so all ranks can drop just this group and go on with the next one
            for task in group if reporter else ():
                reporter.finish(task, False, one_line(exc))
            continue
        if not ppipe.is_driver:
            ppipe.serve()
            continue
        for task in group:
            _render_one(ppipe, task, devices, reporter, fatal_pipe_errors=True)
        ppipe.close()


def _render_all(tasks: list[Task], devices: int, quiet: bool = False, results_path: str | None = None):
    """Render ``tasks`` (each with ``model_dir`` set); runs on every rank when ``devices`` > 1.

    Returns the list of per-job results on rank 0 (``None`` on the other ranks).
    """
    driver = devices == 1 or int(os.environ.get("RANK", "0")) == 0
    if devices > 1:  # torch's object collectives warn about a deprecated pytree API on every rank
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    reporter = Reporter(len(tasks), quiet, results_path) if driver else None
    try:
        if devices == 1:
            _render_single(tasks, reporter)
        else:
            _render_parallel(tasks, devices, reporter)
    finally:
        if reporter:
            reporter.close()
    return reporter.results if reporter else None

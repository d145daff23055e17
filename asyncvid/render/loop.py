"""The render loop behind ``asyncvid render``: what every rank runs over a batch of tasks.

:func:`render_all` runs in the CLI process for one device, or on every rank for several (local
ranks under :func:`asyncvid.launch_local`, or one process per rank under a launcher). Rank 0 drives
the pipeline: it denoises a job to latents, decodes them chunk by chunk and hands the chunks to a
background encoder (:mod:`.stream`), then starts the next job while the encoder finishes the file.
The manifest is written once the video is complete, and one JSON line per finished job goes to a
results file, so the parent still knows which jobs finished if a rank dies part way.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
import warnings
from collections import Counter

from ..catalog.pipelines import load_pipeline
from ..catalog.quiet import quiet_environment
from ..distributed.env import lost_peer
from ..errors import PlanError, RankFailure
from ..utils import atomic_write, one_line
from .inputs import job_inputs
from .stream import EncodeJob, Encoder, decode_chunk, decode_chunks, denoise
from .tasks import Task, write_manifest

quiet_environment()  # before diffusers/transformers are imported: never download, no chatter


# ---------------------------------------------------------------------------------- reporting
class Reporter:
    """Rank 0's view: a rich progress bar over jobs, one line per job, and the results file.
    Jobs finish on the encoder thread and fail on either thread, hence the lock."""

    def __init__(self, total: int, quiet: bool, results_path: str | None, label: str | None = None):
        self.quiet, self.results_path, self.results = quiet, results_path, []
        self.prefix = f"[{label}] " if label else ""
        self.lock = threading.Lock()
        self.progress = None
        # replicas side by side: lines, no bars; not a terminal (a log, CI, a pipe): lines only
        if not quiet and total and not label and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from rich.progress import TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn())
            self.bar = self.progress.add_task("videos", total=total)
            self.steps = self.progress.add_task("  steps", total=None)
            self.progress.start()

    def begin(self, task: Task) -> None:
        if self.progress:
            self.progress.update(self.bar, description=f"videos (now {task.name})")
            self.progress.reset(self.steps, total=task.config["steps"], description=f"  steps of {task.name}")

    def step(self, done: int, total: int) -> None:
        """A denoising step of the current video finished."""
        if self.progress:
            self.progress.update(self.steps, completed=done, total=total)

    def finish(self, task: Task, ok: bool, message: str, **extra) -> None:
        result = dict(name=task.name, status="done" if ok else "failed", message=message, **extra)
        with self.lock:
            self.results.append(result)
            if self.results_path:
                with open(self.results_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(result) + "\n")
            if not ok:
                print(f"asyncvid: job {task.name!r} failed: {message}", file=sys.stderr, flush=True)
            elif not self.quiet:
                print(f"{self.prefix}done {task.name} -> {task.output} ({message})", flush=True)
            if self.progress:
                self.progress.advance(self.bar)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


# ---------------------------------------------------------------------------------- rendering
class Driver:
    """Rank 0: denoise, decode in chunks, queue the chunks to the encoder; the encoder thread
    writes the manifest and reports the job once its video is final."""

    def __init__(self, devices: int, reporter: Reporter):
        self.devices, self.reporter = devices, reporter
        self.encoder = Encoder(self._encoded)
        self.start = time.perf_counter()
        self.setup_s = 0.0  # model loading and parallelize(), between jobs
        self.timings: list[dict] = []

    def render(self, pipe, task: Task, fatal_pipe_errors: bool) -> None:
        """With several devices a failure inside the pipeline call leaves the other ranks mid-call,
        so it is re-raised to stop the whole group; decoding and encoding failures are per job."""
        cfg, kind = task.config, task.config["task"]
        self.reporter.begin(task)
        start = time.perf_counter()
        started_at = time.time()
        image, inputs = None, {}
        try:  # input files are read before the pipeline call: the other ranks are not involved yet
            if kind == "i2v":
                from ..pipelines.svd import conditioning_image

                image = conditioning_image(task.image)
            else:
                inputs = job_inputs(task)  # conditioning frames, input video
        except Exception as exc:  # noqa: BLE001
            self.reporter.finish(task, False, one_line(exc))
            return
        try:
            latents = denoise(pipe, cfg, image, inputs, on_step=self.reporter.step)
        except Exception as exc:
            if fatal_pipe_errors and (lost_peer(exc) or isinstance(exc, RankFailure)):
                raise  # another rank died, failed or hung: the launcher names it for this job
            self.reporter.finish(task, False, one_line(exc))
            if fatal_pipe_errors:
                raise
            return
        decoding = time.perf_counter()
        timings = dict(denoise_s=decoding - start, _start=start, _started_at=started_at)
        self.encoder.begin(EncodeJob(task, task.output, cfg["fps"], cfg["format"], cfg["crf"], timings))
        try:
            for frames in decode_chunks(pipe, latents, kind, decode_chunk(cfg)):
                self.encoder.write(frames)  # waits while the encoder is two chunks behind
        except BaseException as exc:
            self.encoder.abort(one_line(exc))
            if not isinstance(exc, Exception):
                raise
            return
        timings["decode_s"] = time.perf_counter() - decoding
        self.encoder.end()

    def _encoded(self, job: EncodeJob, error: str | None) -> None:  # on the encoder thread
        task, t = job.key, job.timings
        now = time.perf_counter()
        start = t.pop("_start")
        span = dict(started_at=round(t.pop("_started_at"), 3), finished_at=round(time.time(), 3))  # wall clock
        t["wall_s"] = now - start
        timings = {k: round(t.get(k, 0.0), 4) for k in ("denoise_s", "decode_s", "encode_s", "wall_s")}
        if error is None:
            try:
                write_manifest(task, self.devices, job.frames, timings)
            except Exception as exc:  # noqa: BLE001
                error = one_line(exc)
        # the profile also places each job on the batch's timeline (seconds since the batch began)
        self.timings.append(dict(name=task.name, ok=error is None, started_s=round(start - self.start, 4),
                                 done_s=round(now - self.start, 4), **timings, **span))
        if error is not None:
            self.reporter.finish(task, False, error)
            return
        self.reporter.finish(task, True, f"denoise {timings['denoise_s']:.2f} s, wall {timings['wall_s']:.2f} s",
                             timings=timings)

    def close(self) -> dict:
        """Wait for the encoder; the batch's profile (seconds)."""
        self.encoder.close()
        wall = time.perf_counter() - self.start
        sums = {k: round(sum(t[k] for t in self.timings), 4) for k in ("denoise_s", "decode_s", "encode_s")}
        render_wall = wall - self.setup_s
        return dict(jobs=sum(t["ok"] for t in self.timings), devices=self.devices, wall_s=round(wall, 4),
                    setup_s=round(self.setup_s, 4), render_wall_s=round(render_wall, 4), **sums,
                    wall_over_denoise=round(render_wall / sums["denoise_s"], 4) if sums["denoise_s"] else None,
                    jobs_timings=self.timings)


def claim(claims: str | None, task: Task) -> bool:
    """Take ``task`` for this replica: True for the one replica that creates its claim file first
    (always True without replicas)."""
    if claims is None:
        return True
    try:
        os.close(os.open(os.path.join(claims, task.name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _render_single(tasks: list[Task], driver: Driver, claims: str | None = None) -> None:
    """One device: the plain pipeline (stages=1), loaded once per model and reused."""
    from ..distributed.env import default_device

    pipes: dict[tuple, object] = {}
    for task in tasks:
        if not claim(claims, task):
            continue
        if task.model_key not in pipes:
            started = time.perf_counter()
            try:
                pipes[task.model_key] = load_pipeline(*task.model_key).to(default_device())
            except Exception as exc:  # noqa: BLE001
                pipes[task.model_key] = exc
            driver.setup_s += time.perf_counter() - started
        pipe = pipes[task.model_key]
        if isinstance(pipe, Exception):
            driver.reporter.finish(task, False, f"cannot load model {task.model_dir}: {one_line(pipe)}")
            continue
        driver.render(pipe, task, fatal_pipe_errors=False)


def _groups(tasks: list[Task]) -> dict[tuple, list[Task]]:
    """Jobs that can share one parallel pipeline: same model and same parallel options."""
    groups: dict[tuple, list[Task]] = {}
    for t in tasks:
        c = t.config
        key = (t.model_key, c["stages"], c.get("cfg", 1), c["stride"], c["warmup"], c.get("forecast", "none"),
               json.dumps(c["split"]))
        groups.setdefault(key, []).append(t)
    return groups


def _render_parallel(tasks: list[Task], devices: int, driver: Driver | None, claims: str | None = None) -> None:
    """Every rank: one ParallelPipeline per group; rank 0 renders, the others serve until closed."""
    import asyncvid

    groups = _groups(tasks)
    uses = Counter(key[0] for key in groups)
    loaded: dict[tuple, object] = {}
    for key, group in groups.items():
        started = time.perf_counter()
        model_key = key[0]
        if model_key not in loaded:
            loaded[model_key] = load_pipeline(*model_key)
        uses[model_key] -= 1
        # parallelize() moves weights and hooks the UNet: later groups of this model get a copy
        pipe = loaded.pop(model_key) if uses[model_key] == 0 else copy.deepcopy(loaded[model_key])
        c = group[0].config
        try:
            ppipe = asyncvid.parallelize(pipe, stages=c["stages"], stride=c["stride"], warmup=c["warmup"], split=c["split"],
                                         cfg=c.get("cfg", 1), forecast=c.get("forecast", "none"))
        except PlanError as exc:
            if not isinstance(c["split"], list):
                raise  # an auto split may fail mid-collective on some ranks only: stop the group
            # an explicit split is checked identically on every rank before any communication,
            # so all ranks can drop just this group and go on with the next one
            for task in group if driver else ():
                driver.reporter.finish(task, False, one_line(exc))
            continue
        if not ppipe.is_driver:
            ppipe.serve()
            continue
        driver.setup_s += time.perf_counter() - started
        for task in group:
            if claim(claims, task):
                driver.render(ppipe, task, fatal_pipe_errors=True)
        ppipe.close()


def render_all(tasks: list[Task], devices: int, quiet: bool = False, results_path: str | None = None,
               profile_path: str | None = None, claims: str | None = None, label: str | None = None):
    """Render ``tasks`` (each with ``model_dir`` set); runs on every rank when ``devices`` > 1.

    Returns the list of per-job results on rank 0 (``None`` on the other ranks). With
    ``profile_path``, rank 0 also writes the batch's timings there (JSON). With ``claims`` (a
    folder shared by replicas rendering the same tasks side by side) a job is rendered only by the
    replica that claims it first; ``label`` names the replica in its lines.
    """
    is_driver = devices == 1 or int(os.environ.get("RANK", "0")) == 0
    if devices > 1:  # torch's object collectives warn about a deprecated pytree API on every rank
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    import torch  # noqa: F401 - the first import takes a second: before the batch's clock starts

    reporter = Reporter(len(tasks), quiet, results_path, label) if is_driver else None
    driver = Driver(devices, reporter) if is_driver else None
    try:
        if devices == 1:
            _render_single(tasks, driver, claims)
        else:
            _render_parallel(tasks, devices, driver, claims)
    finally:
        if driver:
            profile = driver.close()  # finishes the videos already denoised, even on the way out
            reporter.close()
    if driver and profile_path:
        atomic_write(profile_path, json.dumps(profile, indent=2) + "\n")
    return reporter.results if reporter else None

"""Denoise to latents, decode them chunk by chunk, encode the chunks on a background thread.

The driver calls the pipeline with ``output_type="latent"`` and decodes the latents itself, a chunk
of frames at a time, exactly as the pipelines do it inside their own call (same VAE calls on the
same frame groups, same post-processing), so the frames equal ``output_type="np"``. Each decoded
chunk goes through a bounded queue to an :class:`Encoder` thread that writes it into a
:class:`~asyncvid.video.VideoWriter`; the driver goes on with the next chunk, then the next job's
denoising, while the encoder finishes the file. Memory stays bounded by a few chunks.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..video import VideoWriter

#: frames decoded per chunk for text-to-video jobs without ``decode_chunk`` (AnimateDiff's default)
T2V_DECODE_CHUNK = 16


def decode_chunk(cfg: dict) -> int:
    """Frames per decoded chunk: the job's ``decode_chunk``, else the pipeline's own default (all
    frames at once for SVD, 16 for AnimateDiff)."""
    if cfg.get("decode_chunk"):
        return cfg["decode_chunk"]
    return cfg["frames"] if cfg.get("task") == "i2v" else T2V_DECODE_CHUNK


def denoise(pipe, cfg: dict, image=None, inputs: dict | None = None, on_step=None):
    """The job's pipeline call up to the latents (rank 0's result; None on the other ranks).
    ``inputs``: a text-to-video job's ``conditioning_frames`` and ``video`` (lists of PIL frames);
    ``on_step(done, total)`` is called after every denoising step (progress)."""
    import torch

    generator = torch.Generator().manual_seed(cfg["seed"])
    common = dict(num_frames=cfg["frames"], height=cfg["height"], width=cfg["width"],
                  num_inference_steps=cfg["steps"], output_type="latent", generator=generator)
    if on_step is not None:
        def step_ended(p, i, t, kwargs):
            on_step(i + 1, getattr(p, "num_timesteps", None) or cfg["steps"])
            return {}

        common["callback_on_step_end"] = step_ended
    if cfg.get("task") == "i2v":
        out = pipe(image=image, fps=cfg["fps"], motion_bucket_id=cfg["motion_bucket_id"],
                   noise_aug_strength=cfg["noise_aug_strength"], min_guidance_scale=cfg["min_guidance"],
                   max_guidance_scale=cfg["max_guidance"], decode_chunk_size=decode_chunk(cfg), **common)
    else:
        call = dict(common, prompt=cfg["prompt"], negative_prompt=cfg["negative_prompt"] or None,
                    guidance_scale=cfg["guidance"], **(inputs or {}))
        if "video" in cfg:  # video-to-video: as many frames as the video has
            del call["num_frames"]
            call["strength"] = cfg["strength"]
        if "controlnet" in cfg:
            call["controlnet_conditioning_scale"] = cfg["controlnet_scale"]
        out = pipe(**call)
    return None if out is None else out.frames


def decode_chunks(pipe, latents, kind: str, chunk: int) -> Iterator[np.ndarray]:
    """(F', H, W, 3) float frames in [0, 1] of the first video, ``chunk`` frames at a time.

    AnimateDiff latents are (B, C, F, h, w) and its VAE decodes frame by frame; SVD latents are
    (B, F, C, h, w) and its temporal decoder sees ``decode_chunk_size`` frames together, so the
    chunks here are the pipeline's own ``decode_chunk_size`` groups. AnimateDiff SDXL decodes all
    frames in one VAE call (in float32 when its float16 VAE asks for it, as the pipeline does)."""
    import torch

    if hasattr(pipe, "vae_scale_factor_temporal"):  # Wan: a causal 3D VAE decodes the whole clip at once
        yield wan_decode(pipe, latents)
        return
    axis = 2 if kind == "t2v" else 1
    frames = latents.shape[axis]
    sdxl = kind == "t2v" and "decode_chunk_size" not in inspect.signature(pipe.decode_latents).parameters
    upcast = sdxl and pipe.vae.dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False)
    if upcast:
        pipe.vae.to(dtype=torch.float32)
    try:
        with torch.no_grad():
            for start in range(0, frames, chunk):
                part = latents.narrow(axis, start, min(chunk, frames - start))
                if sdxl:
                    video = pipe.decode_latents(part.to(pipe.vae.dtype))
                elif kind == "t2v":
                    video = pipe.decode_latents(part, chunk)
                else:
                    video = pipe.decode_latents(part, part.shape[1], chunk)
                yield pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
    finally:
        if upcast:
            pipe.vae.to(dtype=torch.float16)


def wan_decode(pipe, latents) -> np.ndarray:
    """(F, H, W, 3) float frames of the first video, as ``WanPipeline`` decodes them (latents
    un-normalised with the VAE's per-channel mean and std, one VAE call over every frame)."""
    import torch

    vae = pipe.vae
    latents = latents.to(dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    with torch.no_grad():
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")[0]


# ---------------------------------------------------------------------------------- encoding
@dataclass
class EncodeJob:
    """One video for the encoder; ``timings`` is filled in as it goes."""

    key: object  # the caller's handle (the task), given back to ``on_done``
    path: str
    fps: float
    fmt: str
    crf: int
    timings: dict = field(default_factory=dict)
    frames: int = 0


#: ``on_done(job, error)``: error is None when the video is complete under its final name
DoneCallback = Callable[[EncodeJob, "str | None"], None]


class Encoder:
    """A background thread that encodes queued chunks into one video after another.

    The driver calls :meth:`begin`, :meth:`write` per chunk and :meth:`end` (or :meth:`abort`);
    ``on_done`` runs on the encoder thread once the file is final (or thrown away). :meth:`close`
    waits for the queued work. A queue of ``maxsize`` chunks makes :meth:`write` wait when the
    encoder falls behind, which bounds memory.
    """

    def __init__(self, on_done: DoneCallback, maxsize: int = 2):
        self.on_done = on_done
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.busy_s = 0.0  # time spent encoding, all jobs together
        self._thread = threading.Thread(target=self._run, name="asyncvid-encoder", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- driver side
    def begin(self, job: EncodeJob) -> None:
        self.queue.put(("begin", job))

    def write(self, frames) -> None:
        self.queue.put(("write", frames))

    def end(self) -> None:
        self.queue.put(("end", None))

    def abort(self, message: str) -> None:
        self.queue.put(("abort", message))

    def close(self) -> None:
        """Finish everything queued, then stop the thread."""
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join()

    # -------------------------------------------------------------- encoder thread
    def _run(self) -> None:
        try:  # PyAV's first import takes a while: do it here, off the driver's path
            import av  # noqa: F401
        except ImportError:
            pass
        job, writer, error = None, None, None
        while True:
            item = self.queue.get()
            if item is None:
                break
            what, payload = item
            start = time.perf_counter()
            try:
                if what == "begin":
                    job, error = payload, None
                    writer = VideoWriter(job.path, job.fps, job.fmt, crf=job.crf)
                elif job is None or error is not None:
                    pass  # the job already failed: drop its remaining chunks
                elif what == "write":
                    writer.write(payload)
                    job.frames += len(payload)
                elif what == "end":
                    writer.close()
                elif what == "abort":
                    error = payload
            except Exception as exc:  # noqa: BLE001 - reported as this job's failure
                lines = str(exc).strip().splitlines()
                error = f"{type(exc).__name__}: {lines[0] if lines else ''}"
            if job is not None:
                spent = time.perf_counter() - start
                job.timings["encode_s"] = job.timings.get("encode_s", 0.0) + spent
                self.busy_s += spent
            if error is not None and writer is not None:
                writer.abort()  # the partial file goes; the final name is untouched
                writer = None
            if what in ("end", "abort") and job is not None:
                done, job, writer = job, None, None
                self._report(done, error)

    def _report(self, job: EncodeJob, error: str | None) -> None:
        try:
            self.on_done(job, error)
        except Exception as exc:  # noqa: BLE001 - the thread must outlive a failing callback
            import sys

            print(f"asyncvid: encoder callback failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

"""Streaming video output with PyAV: frames are encoded as they are written, and the file appears
under its final name only once it is complete.

Formats: ``mp4`` (H.264, x264's default B-frames, index at the front for progressive playback),
``webm`` (VP9), ``gif`` (one adaptive palette per clip, no dithering: written at the end, the
frames kept until then), ``av1`` (SVT-AV1 in an .mp4) and ``png`` (a folder of numbered PNG
frames). The YUV 4:2:0 formats need even sizes, so a frame of odd width or
height is padded by one pixel (its last row/column repeated); the output is then one pixel larger.
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

#: format -> (codec, container format, file extension, default pixel format)
FORMATS = {
    "mp4": ("libx264", "mp4", ".mp4", "yuv420p"),
    "webm": ("libvpx-vp9", "webm", ".webm", "yuv420p"),
    "gif": ("gif", "gif", ".gif", "rgb8"),
    "av1": ("libsvtav1", "mp4", ".mp4", "yuv420p"),
    "png": (None, None, "", "rgb24"),
}


def output_name(name: str, fmt: str) -> str:
    """File (or, for ``png``, folder) name of a video called ``name`` in format ``fmt``."""
    return name + FORMATS[fmt][2]


def partial_path(path, fmt: str) -> Path:
    """Where :class:`VideoWriter` writes ``path`` until it is complete (hidden, never the final name)."""
    path = Path(path)
    ext = FORMATS[fmt][2]
    # keep the real extension last so tools (and PyAV) still recognise the container
    return path.with_name(f".{path.name.removesuffix(ext)}.partial{ext}")


def remove_partial(path, fmt: str) -> list[Path]:
    """Delete what an interrupted (killed) writer of ``path`` left behind; returns what was removed.
    Only for leftovers: a writer still running on ``path`` would lose its output."""
    path = Path(path)
    removed = []
    for leftover in (partial_path(path, fmt), path.with_name(f".{path.name}.old")):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.exists() or leftover.is_symlink():
            leftover.unlink(missing_ok=True)
        else:
            continue
        removed.append(leftover)
    return removed


def to_uint8(frames) -> np.ndarray:
    """(F,H,W,3) uint8 as is; floats in [0,1] scaled by 255, clipped and rounded."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F,H,W,3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0,1], got dtype {frames.dtype}")
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def to_float(frames, dtype=np.float32) -> np.ndarray:
    """(F,H,W,3) frames as floats in [0, 1]: uint8 divided by 255, floats as they are."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F,H,W,3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames.astype(dtype) / 255.0
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0,1], got dtype {frames.dtype}")
    return np.ascontiguousarray(frames, dtype=dtype)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _options(fmt: str, crf: int, preset: str) -> dict[str, str]:
    if fmt == "mp4":  # x264's own defaults otherwise (B-frames: smaller files at the same quality)
        return {"crf": str(crf), "preset": preset}
    if fmt == "webm":
        # constant quality (b=0) and a speed setting that keeps VP9 usable on CPU
        return {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4"}
    if fmt == "av1":
        # SVT-AV1 presets are numbers (0 slowest .. 13 fastest); x264 names map to a fast one
        return {"crf": str(crf), "preset": preset if preset.isdigit() else "10"}
    return {}


class VideoWriter:
    """Write frames to ``path`` as they come; ``path`` is created atomically on :meth:`close`.

    Use as a context manager: leaving the block with an exception deletes the partial output.
    """

    def __init__(self, path, fps: float, fmt: str = "mp4", crf: int = 18, preset: str = "veryfast",
                 pix_fmt: str | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown video format {fmt!r} (choose from {', '.join(FORMATS)})")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps, self.fmt, self.crf, self.preset = fps, fmt, crf, preset
        self.codec, self.container_format, _, default_pix = FORMATS[fmt]
        self.pix_fmt = pix_fmt or default_pix
        self.tmp_path = partial_path(self.path, fmt)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (height, width) as written, after padding
        self._container = self._stream = None
        self._gif_frames: list[np.ndarray] = []
        self._done = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            shutil.rmtree(self.tmp_path, ignore_errors=True)
            self.tmp_path.mkdir()

    # ------------------------------------------------------------------ writing
    def _open(self, height: int, width: int) -> None:
        import av

        if self.fmt == "av1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config to stderr otherwise
        # MP4: the index goes to the front once the file is complete, so players can start before the end
        options = {"movflags": "+faststart"} if self.container_format == "mp4" else {}
        self._container = av.open(str(self.tmp_path), mode="w", format=self.container_format, options=options)
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        stream.options = _options(self.fmt, self.crf, self.preset)
        self._stream = stream

    def write(self, frames) -> None:
        """Encode (F,H,W,3) frames, uint8 or float in [0,1], or a single (H,W,3) frame."""
        if self._done:
            raise ValueError("write() on a closed VideoWriter")
        frames = to_uint8(frames)
        if self.pix_fmt.startswith(("yuv420", "yuv422", "nv")):
            frames = _pad_even(frames)
        size = frames.shape[1:3]
        if self.size is None:
            self.size = size
            if self.fmt not in ("png", "gif"):
                self._open(*size)
        elif size != self.size:
            raise ValueError(f"frame size changed from {self.size} to {size}")
        if self.fmt == "png":
            self._write_png(frames)
            return
        if self.fmt == "gif":  # one palette for the whole clip: kept until close()
            self._gif_frames.extend(frames)
            self.frames_written += len(frames)
            return
        import av

        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            self._container.mux(self._stream.encode(vf))
            self.frames_written += 1

    def _write_gif(self) -> None:
        """The clip with one adaptive palette (median cut over every frame) and no dithering, so
        flat areas stay flat; the frame delay is in 1/100 s, as GIF stores it."""
        from PIL import Image

        frames = self._gif_frames
        mosaic = Image.fromarray(np.concatenate(frames, axis=0))
        palette = mosaic.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
        images[0].save(self.tmp_path, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(2, round(100 / self.fps)) * 10, loop=0, optimize=False)
        self._gif_frames = []

    def _write_png(self, frames: np.ndarray) -> None:
        from PIL import Image

        for frame in frames:
            Image.fromarray(frame).save(self.tmp_path / f"frame_{self.frames_written:05d}.png")
            self.frames_written += 1

    # ------------------------------------------------------------------ finishing
    def close(self) -> None:
        """Flush the encoder and move the finished video onto its final name."""
        if self._done:
            return
        try:
            if self.frames_written == 0:
                raise ValueError(f"no frames were written to {self.path}")
            if self._container is not None:
                self._container.mux(self._stream.encode())
                self._container.close()
                self._container = None
            if self.fmt == "gif":
                self._write_gif()
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._done = True

    def _publish(self) -> None:
        if self.fmt != "png" or not self.path.is_dir():
            os.replace(self.tmp_path, self.path)
            return
        # a folder cannot be replaced in one step: move the old one aside first
        old = self.path.with_name(f".{self.path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(self.path, old)
        os.replace(self.tmp_path, self.path)
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Stop and delete the partial output; the final path is left untouched."""
        self._done = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the output is being thrown away anyway
                pass
            self._container = None
        if self.tmp_path.is_dir():
            shutil.rmtree(self.tmp_path, ignore_errors=True)
        else:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path, frames, fps: float, fmt: str = "mp4", **options) -> Path:
    """Write a whole (F,H,W,3) array in one call."""
    with VideoWriter(path, fps, fmt, **options) as writer:
        writer.write(frames)
    return Path(path)


def read_video_info(path) -> dict:
    """Decoded frame count, size and frame rate of a video (``fps`` is 0.0 for a PNG folder)."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = sorted(path.glob("frame_*.png"))
        width, height = Image.open(files[0]).size if files else (0, 0)
        return dict(frames=len(files), width=width, height=height, fps=0.0)
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        rate = stream.guessed_rate or stream.average_rate
        return dict(frames=frames, width=stream.codec_context.width, height=stream.codec_context.height,
                    fps=float(rate) if rate else 0.0)

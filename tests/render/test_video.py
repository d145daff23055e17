"""asyncvid.video: streaming writer round trips, padding, formats and atomic output."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from asyncvid.video import (VideoWriter, output_name, partial_path, read_video_info, remove_partial, to_uint8,
                            write_video)

FORMATS = ["mp4", "webm", "gif", "av1", "png"]


def moving_gradient(frames=8, height=32, width=32) -> np.ndarray:
    """Smooth float frames in [0,1] (codec friendly, unlike noise)."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), np.float32)
    for f in range(frames):
        out[f, ..., 0] = (x + 2 * f) / (width + 2 * frames)
        out[f, ..., 1] = y / height
        out[f, ..., 2] = 0.5
    return out


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_to_uint8_scales_clips_and_rounds():
    got = to_uint8(np.array([[[[0.0, 0.5, 1.0], [1.2, -0.1, 0.2]]]]))
    assert got.dtype == np.uint8
    assert got.tolist() == [[[[0, 128, 255], [255, 0, 51]]]]
    u8 = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    assert to_uint8(u8) is u8


@pytest.mark.parametrize("fmt", FORMATS)
def test_frame_count_and_size(tmp_path, fmt):
    frames = moving_gradient(8, 32, 48)
    path = tmp_path / output_name("clip", fmt)
    with VideoWriter(path, fps=8, fmt=fmt) as writer:
        writer.write(frames[:3])  # streamed in two chunks
        writer.write(frames[3:])
    info = read_video_info(path)
    assert (info["frames"], info["height"], info["width"]) == (8, 32, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


def test_uint8_and_float_inputs_decode_alike(tmp_path):
    frames = moving_gradient()
    write_video(tmp_path / "f.mp4", frames, fps=8)
    write_video(tmp_path / "u.mp4", to_uint8(frames), fps=8)
    a, b = decode(tmp_path / "f.mp4").astype(int), decode(tmp_path / "u.mp4").astype(int)
    assert a.shape == (8, 32, 32, 3)
    # x264 with its default threads is not bit-reproducible from run to run (12 encodes of the same
    # uint8 frames here gave 2 different videos, up to 1.6 apart on average), so both are held to
    # the source instead of to each other
    for decoded in (a, b):
        assert np.abs(decoded - to_uint8(frames)).mean() < 4  # close to the source at crf 18
    assert np.abs(a - b).mean() < 3


def test_fps_is_recorded(tmp_path):
    write_video(tmp_path / "a.mp4", moving_gradient(6), fps=12)
    write_video(tmp_path / "b.webm", moving_gradient(6), fps=24, fmt="webm")
    assert read_video_info(tmp_path / "a.mp4")["fps"] == pytest.approx(12)
    assert read_video_info(tmp_path / "b.webm")["fps"] == pytest.approx(24)


@pytest.mark.parametrize("fmt", ["mp4", "webm", "av1"])
def test_odd_sizes_are_padded_to_even(tmp_path, fmt):
    frames = to_uint8(moving_gradient(4, 33, 31))
    path = write_video(tmp_path / output_name("odd", fmt), frames, fps=8, fmt=fmt)
    info = read_video_info(path)
    assert (info["frames"], info["height"], info["width"]) == (4, 34, 32)


def test_gif_keeps_odd_size(tmp_path):
    path = write_video(tmp_path / "odd.gif", moving_gradient(5, 33, 31), fps=10, fmt="gif")
    assert read_video_info(path) == dict(frames=5, width=31, height=33, fps=pytest.approx(10, rel=0.1))


def test_png_folder_is_lossless(tmp_path):
    frames = to_uint8(moving_gradient(3, 16, 24))
    path = write_video(tmp_path / "frames", frames, fps=8, fmt="png")
    assert sorted(p.name for p in path.iterdir()) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(path / "frame_00002.png")), frames[2])
    write_video(path, frames[:1], fps=8, fmt="png")  # replacing an existing folder
    assert read_video_info(path)["frames"] == 1


def test_temp_name_until_closed(tmp_path):
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=8) as writer:
        writer.write(moving_gradient(40))  # past x264's look-ahead: packets are being written
        assert not path.exists()
        assert [p.name for p in tmp_path.iterdir()] == [".clip.partial.mp4"]
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize("fmt", ["mp4", "png"])
def test_exception_leaves_no_partial_output(tmp_path, fmt):
    path = tmp_path / output_name("clip", fmt)
    with pytest.raises(RuntimeError):
        with VideoWriter(path, fps=8, fmt=fmt) as writer:
            writer.write(moving_gradient(3))
            raise RuntimeError("denoising failed")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_previous_video(tmp_path):
    path = write_video(tmp_path / "clip.mp4", moving_gradient(4), fps=8)
    with pytest.raises(RuntimeError):
        with VideoWriter(path, fps=8) as writer:
            writer.write(moving_gradient(2))
            raise RuntimeError
    assert read_video_info(path)["frames"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "empty.mp4", fps=8).close()
    with pytest.raises(ValueError, match="size changed"):
        with VideoWriter(tmp_path / "x.mp4", fps=8) as writer:
            writer.write(moving_gradient(1, 16, 16))
            writer.write(moving_gradient(1, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        to_uint8(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="format"):
        VideoWriter(tmp_path / "x.avi", fps=8, fmt="avi")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_partial_path_is_the_writers_and_never_the_final_name(tmp_path, fmt):
    path = tmp_path / output_name("clip", fmt)
    writer = VideoWriter(path, fps=8, fmt=fmt)
    assert writer.tmp_path == partial_path(path, fmt) and partial_path(path, fmt).name.startswith(".clip.partial")
    writer.abort()
    # what a killed writer leaves behind: remove_partial cleans it, and nothing else
    if fmt == "png":
        partial_path(path, fmt).mkdir()
        (partial_path(path, fmt) / "frame_00000.png").write_bytes(b"half")
    else:
        partial_path(path, fmt).write_bytes(b"half a video")
    write_video(tmp_path / output_name("other", fmt), moving_gradient(2), fps=8, fmt=fmt)
    assert remove_partial(path, fmt) == [partial_path(path, fmt)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [output_name("other", fmt)]
    assert remove_partial(path, fmt) == []


def test_remove_partial_also_removes_a_png_folder_moved_aside(tmp_path):
    path = write_video(tmp_path / "frames", moving_gradient(2), fps=8, fmt="png")
    (tmp_path / ".frames.old").mkdir()  # a kill between the two renames of a folder replacement
    assert remove_partial(path, "png") == [tmp_path / ".frames.old"]
    assert read_video_info(path)["frames"] == 2


def test_gif_palette_keeps_a_flat_background_flat(tmp_path):
    """A mid-gray background (not a colour of a fixed 3-3-2 palette) with a moving anti-aliased
    shape: one adaptive palette, no dithering, so every background pixel is the same gray again."""
    frames = np.full((6, 32, 32, 3), 128, dtype=np.uint8)
    yy, xx = np.mgrid[0:32, 0:32]
    for i, frame in enumerate(frames):
        disc = np.clip(6.5 - np.hypot(yy - 16, xx - 6 - 4 * i), 0, 1)[..., None]  # soft edge
        frame[:] = (frame * (1 - disc) + np.array([220, 40, 40]) * disc).astype(np.uint8)
    path = write_video(tmp_path / "disc.gif", frames, fps=8, fmt="gif")
    gif = Image.open(path)
    decoded = []
    for i in range(6):
        gif.seek(i)
        decoded.append(np.asarray(gif.convert("RGB")))
    background = np.stack(decoded)[:, :4]  # the top rows: background only
    assert np.unique(background.reshape(-1, 3), axis=0).tolist() == [[128, 128, 128]]
    assert read_video_info(path) == dict(frames=6, width=32, height=32, fps=pytest.approx(8, rel=0.25))


def test_mp4_starts_with_its_index_and_uses_b_frames(tmp_path):
    import av

    path = write_video(tmp_path / "a.mp4", moving_gradient(16, 64, 64), fps=8)
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart: playable before fully downloaded
    from av.video.frame import PictureType

    with av.open(str(path)) as container:
        types = {frame.pict_type for frame in container.decode(video=0)}
    assert PictureType.B in types, types

"""The procedural "shapes" world: seeded, numpy-only clips of one shape moving across a plain background.

Each clip shows one anti-aliased shape of one colour moving in a straight line in one direction over
a plain background. Its prompt says all four things, in a fixed template::

    "a {colour} {shape} moving {direction} on a {background} background"

``VOCABULARY`` lists every word a prompt may use:

==============  ====================================================================
``shape``       circle, square, triangle
``colour``      red, green, blue, yellow, cyan, magenta, white (corners of the RGB cube)
``direction``   left, right, up, down (image coordinates, so "up" means toward row 0)
``background``  black, gray (0.5 on every channel)
==============  ====================================================================

That gives 3 x 7 x 4 x 2 = 168 combinations. ``held_out_split`` sets aside a seeded subset that
training never sees, so the trained model's adherence can be measured on unseen combinations.

Geometry at ``size=32``: the half-size is 4.5-6.4 px, and the shape travels 12.6-16.8 px over the
clip (1.8-2.4 px/frame over 8 frames). Both scale with ``size``. The travel over the clip stays the
same for any frame count, so a 16-frame clip moves more slowly per frame but covers the same
path. The start position is chosen so that the whole path stays at least one pixel inside the frame.
Shapes are anti-aliased: squares by exact pixel coverage, circles and triangles by 4 x 4
supersampling.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np

VOCABULARY: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "colour": ("red", "green", "blue", "yellow", "cyan", "magenta", "white"),
    "direction": ("left", "right", "up", "down"),
    "background": ("black", "gray"),
}

#: colour word -> RGB in [0, 1]
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}

#: background word -> RGB in [0, 1]
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
}

#: direction word -> unit step (dx, dy) in image coordinates (x right, y down)
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}

#: image-to-video (shapes-i2v): the direction as Stable Video Diffusion's ``motion_bucket_id``, one
#: quarter of its 0-255 range per direction; a call uses the middle of the range (``motion_bucket``)
MOTION_BUCKETS: dict[str, tuple[int, int]] = {
    "left": (0, 63),
    "right": (64, 127),
    "up": (128, 191),
    "down": (192, 255),
}

HALF_SIZE_PX = (4.5, 6.4)  # at size 32
TRAVEL_PX = (12.6, 16.8)  # over the whole clip, at size 32
MARGIN_PX = 1.0  # at size 32: the shape never touches the outermost pixel ring
SUPERSAMPLE = 4

_TEMPLATE = ("a", "{colour}", "{shape}", "moving", "{direction}", "on", "a", "{background}", "background")


class Combo(NamedTuple):
    """One point of the world: what a prompt asks for."""

    shape: str
    colour: str
    direction: str
    background: str


def _check(kind: str, word: str) -> str:
    if word not in VOCABULARY[kind]:
        raise ValueError(f"unknown {kind} {word!r}; expected one of {', '.join(VOCABULARY[kind])}")
    return word


def _combo(words: Sequence[str]) -> Combo:
    """A validated Combo from 4 words in Combo order."""
    combo = Combo(*words)
    for kind, word in zip(Combo._fields, combo):
        _check(kind, word)
    return combo


def prompt_for(shape: str, colour: str, direction: str, background: str) -> str:
    """The prompt of a combination, e.g. "a red circle moving left on a black background"."""
    slots = _combo((shape, colour, direction, background))._asdict()
    return " ".join(word.format(**slots) for word in _TEMPLATE)


def parse_prompt(prompt: str) -> Combo:
    """Inverse of :func:`prompt_for`. Case and a trailing full stop are ignored; anything else
    that does not fit the template, or a word outside ``VOCABULARY``, raises ValueError."""
    words = prompt.strip().rstrip(".").lower().split()
    if len(words) != len(_TEMPLATE):
        raise ValueError(f"not a shapes-world prompt: {prompt!r}")
    found = {}
    for want, got in zip(_TEMPLATE, words):
        if want.startswith("{"):
            kind = want[1:-1]
            found[kind] = _check(kind, got)
        elif want != got:
            raise ValueError(f"not a shapes-world prompt (expected {want!r}, got {got!r}): {prompt!r}")
    return Combo(**found)


def motion_bucket(direction: str) -> int:
    """The ``motion_bucket_id`` that asks shapes-i2v for ``direction`` (the middle of its range)."""
    lo, hi = MOTION_BUCKETS[_check("direction", direction)]
    return (lo + hi + 1) // 2


def direction_of_bucket(bucket: int) -> str:
    """The direction a ``motion_bucket_id`` (0-255) asks shapes-i2v for."""
    for direction, (lo, hi) in MOTION_BUCKETS.items():
        if lo <= bucket <= hi:
            return direction
    raise ValueError(f"motion_bucket_id must be in 0..255, got {bucket}")


def all_combinations() -> list[Combo]:
    """Every combination, in a fixed order (shape, then colour, direction, background)."""
    return [Combo(*c) for c in itertools.product(*(VOCABULARY[k] for k in Combo._fields))]


def held_out_split(seed: int = 0, n_held_out: int = 24) -> tuple[list[Combo], list[Combo]]:
    """(train, held_out): ``n_held_out`` combinations picked at random with ``seed``, the rest for
    training. Both lists keep the order of :func:`all_combinations`, so the split is a pure
    function of its arguments."""
    combos = all_combinations()
    if not 0 <= n_held_out <= len(combos):
        raise ValueError(f"n_held_out must be in [0, {len(combos)}], got {n_held_out}")
    picked = set(np.random.default_rng(seed).choice(len(combos), size=n_held_out, replace=False).tolist())
    train = [c for i, c in enumerate(combos) if i not in picked]
    held = [c for i, c in enumerate(combos) if i in picked]
    return train, held


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    """Boolean mask of points (dx, dy) relative to the centre that lie inside a circle or triangle.
    Every shape (the square too, see :func:`_coverage`) fits the box [-h, h]^2, which is what keeps
    the path inside the frame."""
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "triangle":  # apex up at (0, -h), base from (-h, h) to (h, h)
        return (dy <= h) & (2.0 * np.abs(dx) <= dy + h)
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(shape: str, cx: np.ndarray, cy: np.ndarray, h: float, size: int) -> np.ndarray:
    """(frames, size, size) fraction of each pixel covered by the shape centred at (cx, cy)."""
    if shape == "square":
        # Exact: the overlap of the pixel [x, x+1] with [c-h, c+h], per axis. Supersampling would
        # give an axis-aligned edge no partial pixels at all whenever it falls between sub-samples.
        edges = np.arange(size, dtype=np.float64)

        def overlap(c):
            lo, hi = np.maximum(edges, c[:, None] - h), np.minimum(edges + 1, c[:, None] + h)
            return np.clip(hi - lo, 0.0, 1.0)

        return (overlap(cy)[:, :, None] * overlap(cx)[:, None, :]).astype(np.float32)
    # Supersample: s x s sub-pixel centres per pixel; coverage = fraction of them inside.
    s = SUPERSAMPLE
    sub = (np.arange(size * s) + 0.5) / s
    dx = sub[None, None, :] - cx[:, None, None]
    dy = sub[None, :, None] - cy[:, None, None]
    inside = _inside(shape, dx, dy, h).reshape(len(cx), size, s, size, s)
    return inside.mean(axis=(2, 4), dtype=np.float32)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def make_clip(combo: Sequence[str], frames: int = 8, size: int = 32, rng=None) -> np.ndarray:
    """Render one clip of ``combo`` (a :class:`Combo` or 4 words in its order) as float32
    (frames, size, size, 3) in [0, 1]. ``rng`` is a numpy Generator or a seed; the half-size,
    travel and start position are drawn from it. 8-16 frames is the designed range."""
    shape, colour, direction, background = _combo(combo)
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames to show motion, got {frames}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    rng = _rng(rng)
    scale = size / 32.0
    h = rng.uniform(*HALF_SIZE_PX) * scale
    travel = rng.uniform(*TRAVEL_PX) * scale
    margin = MARGIN_PX * scale
    ux, uy = DIRECTIONS[direction]

    # Along the motion axis the whole path must fit; across it only the shape must.
    lo, hi = margin + h, size - margin - h
    along = rng.uniform(lo, hi - travel)
    across = rng.uniform(lo, hi)
    t = np.arange(frames) / (frames - 1)
    if ux:
        start = along if ux > 0 else size - along
        cx, cy = start + ux * travel * t, np.full(frames, across)
    else:
        start = along if uy > 0 else size - along
        cx, cy = np.full(frames, across), start + uy * travel * t

    return _paint(Combo(shape, colour, direction, background), cx, cy, h, size)


def _paint(combo: Combo, cx: np.ndarray, cy: np.ndarray, h: float, size: int) -> np.ndarray:
    """(frames, size, size, 3) float32: ``combo``'s shape centred at (cx, cy) per frame on its background."""
    bg = np.asarray(BACKGROUNDS[combo.background], np.float32)
    fg = np.asarray(COLOURS[combo.colour], np.float32)
    cover = _coverage(combo.shape, np.asarray(cx, np.float64), np.asarray(cy, np.float64), h, size)[..., None]
    return (bg * (1.0 - cover) + fg * cover).astype(np.float32)


def coverage(frames: np.ndarray, colour: str, background: str) -> np.ndarray:
    """(F, H, W) how far each pixel of float ``frames`` (F, H, W, 3) lies from ``background`` towards
    ``colour``, clipped to 0-1: a shape's anti-aliased or blurred edge counts in part."""
    bg = np.asarray(BACKGROUNDS[background], np.float32)
    axis = np.asarray(COLOURS[colour], np.float32) - bg
    return np.clip((np.asarray(frames, np.float32) - bg) @ axis / float(axis @ axis), 0.0, 1.0)


def redraw(frames: np.ndarray, combo: Sequence[str]) -> np.ndarray | None:
    """The world's own drawing of ``combo`` where ``frames`` (F, H, W, 3 float in [0, 1], square) show
    its shape, or None when the shape's colour is missing from a frame. Per frame, the centroid of
    the colour's coverage (blur keeps it) places the shape; one half-size for the clip, the median
    over frames of the larger of two readings, the area's and the extents' (the coverage's largest
    value per column and per row, summed: blur spreads an edge but keeps these sums).
    A target for teaching a decoder to draw a model's latents as the world draws shapes."""
    combo = _combo(combo)
    cover = coverage(frames, combo.colour, combo.background)
    cover = np.where(cover >= 0.15, cover, 0.0)  # faint noise away from the shape is not extent
    cols, rows = cover.max(axis=1), cover.max(axis=2)  # (F, W), (F, H)
    mass_x, mass_y = cols.sum(axis=1), rows.sum(axis=1)
    if (mass_x < 1.0).any() or (mass_y < 1.0).any():
        return None
    # Half-size: the larger of what the extents and the area say. A triangle's thin corners make its
    # extents read short; a caved-in drawing of a shape has too little area for its extents.
    area = cover.sum(axis=(1, 2))
    from_area = np.sqrt(area / {"circle": np.pi, "square": 4.0, "triangle": 2.0}[combo.shape])
    h = float(np.median(np.maximum((mass_x + mass_y) / 4.0, from_area)))
    centres = np.arange(cover.shape[2]) + 0.5
    cx, cy = cover.sum(axis=1) @ centres / area, cover.sum(axis=2) @ centres / area  # centroids
    if combo.shape == "triangle":  # its centroid lies a third of the way up from the base
        cy = cy - h / 3.0
    return _paint(combo, cx, cy, h, cover.shape[1])


def batch(n: int, rng=None, combos: Sequence[Sequence[str]] | None = None,
          frames: int = 8, size: int = 32) -> tuple[np.ndarray, list[str]]:
    """``n`` clips of combinations drawn uniformly (with replacement) from ``combos`` (default:
    all of them). Returns (clips float32 (n, frames, size, size, 3), prompts)."""
    rng = _rng(rng)
    combos = all_combinations() if combos is None else [_combo(c) for c in combos]
    if not combos:
        raise ValueError("combos is empty")
    picks = rng.integers(len(combos), size=n)
    clips = np.empty((n, frames, size, size, 3), np.float32)
    prompts = []
    for i, k in enumerate(picks):
        clips[i] = make_clip(combos[k], frames, size, rng)
        prompts.append(prompt_for(*combos[k]))
    return clips, prompts

"""Speed/fidelity Pareto plots drawn with Pillow only (matplotlib is not a dependency).

Each point is a configuration: ``x`` its speedup, ``y`` its fidelity (higher is better, may be
``inf`` for an exact match, drawn on the top edge and labelled "exact"), ``label`` a short name,
and ``hollow`` True when the speed was predicted rather than measured.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..utils import atomic_path

SIZE = (900, 600)
MARGIN = dict(left=80, right=40, top=60, bottom=80)
POINT_COLOUR = (31, 119, 180)  # blue markers
FRONT_COLOUR = (214, 39, 40)  # red Pareto line
AXIS_COLOUR = (0, 0, 0)
RADIUS = 6


def _dominates(p: dict, q: dict) -> bool:
    return p["x"] >= q["x"] and p["y"] >= q["y"] and (p["x"] > q["x"] or p["y"] > q["y"])


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point dominates (>= on both axes, > on one), sorted by x."""
    front = [p for p in points if not any(_dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p["x"], p["y"]))


def _font(size: int = 14):
    try:  # Pillow >= 10.1 can scale its built-in font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 5 x 10^k steps) inside [lo, hi]."""
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _range(values: list[float]) -> tuple[float, float]:
    """Data range padded by 8% so markers do not sit on the axes."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 if hi > lo else max(abs(hi) * 0.1, 0.5)
    return lo - pad, hi + pad


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


class _Canvas:
    """Maps data coordinates onto the plot area of a Pillow image."""

    def __init__(self, xr: tuple[float, float], yr: tuple[float, float], exact_row: bool):
        self.img = Image.new("RGB", SIZE, "white")
        self.draw = ImageDraw.Draw(self.img)
        self.font = _font()
        self.x0, self.x1 = MARGIN["left"], SIZE[0] - MARGIN["right"]
        self.y0, self.y1 = MARGIN["top"], SIZE[1] - MARGIN["bottom"]  # y0 = top edge
        self.xr, self.yr = xr, yr
        # infinite y sits on the top edge; finite data starts below a gap so it is not misread
        self.band = 40 if exact_row else 0

    def pos(self, x: float, y: float) -> tuple[float, float]:
        px = self.x0 + (x - self.xr[0]) / (self.xr[1] - self.xr[0]) * (self.x1 - self.x0)
        if math.isinf(y):
            return px, (self.y0 if y > 0 else self.y1)
        span = self.y1 - self.y0 - self.band
        return px, self.y1 - (y - self.yr[0]) / (self.yr[1] - self.yr[0]) * span

    def text(self, xy, s: str, anchor: str = "la", fill=AXIS_COLOUR):
        self.draw.text(xy, s, fill=fill, font=self.font, anchor=anchor)

    def axes(self, x_label: str, y_label: str, title: str):
        d = self.draw
        d.rectangle([self.x0, self.y0, self.x1, self.y1], outline=AXIS_COLOUR)
        for t in _ticks(*self.xr):
            px, _ = self.pos(t, self.yr[0])
            d.line([px, self.y1, px, self.y1 + 5], fill=AXIS_COLOUR)
            self.text((px, self.y1 + 8), _fmt(t), "mt")
        for t in _ticks(*self.yr):
            _, py = self.pos(self.xr[0], t)
            d.line([self.x0 - 5, py, self.x0, py], fill=AXIS_COLOUR)
            self.text((self.x0 - 8, py), _fmt(t), "rm")
        if self.band:
            self.text((self.x0 - 8, self.y0), "exact", "rm")
        self.text(((self.x0 + self.x1) / 2, self.y1 + 30), x_label, "mt")
        self.text((SIZE[0] / 2, 12), title, "mt")
        self._vertical(y_label, (14, (self.y0 + self.y1) / 2))

    def _vertical(self, s: str, centre):
        """Pillow cannot draw rotated text: draw it on a strip and paste it turned 90 degrees."""
        w = int(self.draw.textlength(s, font=self.font)) + 4
        strip = Image.new("RGB", (w, 20), "white")
        ImageDraw.Draw(strip).text((2, 2), s, fill=AXIS_COLOUR, font=self.font)
        strip = strip.rotate(90, expand=True)
        self.img.paste(strip, (int(centre[0]), int(centre[1] - strip.height / 2)))

    def marker(self, xy, hollow: bool, colour=POINT_COLOUR):
        box = [xy[0] - RADIUS, xy[1] - RADIUS, xy[0] + RADIUS, xy[1] + RADIUS]
        if hollow:
            self.draw.ellipse(box, outline=colour, width=2, fill="white")
        else:
            self.draw.ellipse(box, fill=colour, outline=colour)

    def legend(self):
        y = SIZE[1] - 22
        x = self.x0
        self.marker((x, y), False)
        self.text((x + 12, y), "measured", "lm")
        x += 110
        self.marker((x, y), True)
        self.text((x + 12, y), "predicted (hollow)", "lm")
        x += 190
        self.draw.line([x - 8, y, x + 14, y], fill=FRONT_COLOUR, width=2)
        self.text((x + 22, y), "Pareto front", "lm")


def pareto_plot(points: list[dict], path, x_label: str, y_label: str, title: str) -> Path:
    """Write a scatter of ``points`` with its Pareto front to ``path`` (PNG, atomically)."""
    finite_y = [p["y"] for p in points if math.isfinite(p["y"])]
    exact = any(math.isinf(p["y"]) and p["y"] > 0 for p in points)
    canvas = _Canvas(_range([p["x"] for p in points]), _range(finite_y), exact)
    canvas.axes(x_label, y_label, title)
    front = pareto_front(points)
    if len(front) > 1:
        canvas.draw.line([canvas.pos(p["x"], p["y"]) for p in front], fill=FRONT_COLOUR, width=2)
    for p in points:
        xy = canvas.pos(p["x"], p["y"])
        canvas.marker(xy, bool(p.get("hollow", False)))
        label = str(p.get("label", ""))
        if math.isinf(p["y"]) and p["y"] > 0:
            label = f"{label} (exact)" if label else "exact"
        canvas.text((xy[0] + RADIUS + 3, xy[1] - RADIUS - 2), label, "ld")
    canvas.legend()
    with atomic_path(path) as tmp:  # readers never see half a PNG
        canvas.img.save(tmp, format="PNG")
    return Path(path)

"""Outline measures of a binary shape mask: how much of its box the convex hull fills, and how
much of the hull the shape fills (solidity).

The hull tells the shapes apart by their corners (a square's hull is its box, a circle's is the
inscribed disc, a triangle's half the box), whatever happens to the edges between the corners; the
solidity says whether those edges are caved in (a three-armed star's is low). Pixels are unit
squares, so the hull is that of their corners and a full square mask measures exactly 1 and 1.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2D boolean mask (empty if the mask is)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            y, x = queue.popleft()
            members.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(members) > len(best):
            best = members
    out = np.zeros_like(mask, dtype=bool)
    if best:
        out[tuple(np.array(best).T)] = True
    return out


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain, then the shoelace)."""
    pts = sorted(set(map(tuple, np.asarray(points, np.float64).tolist())))
    if len(pts) < 3:
        return 0.0
    chains = []
    for ordered in (pts, pts[::-1]):
        chain: list = []
        for p in ordered:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        chains.append(chain[:-1])
    hull = np.asarray(chains[0] + chains[1])
    x, y = hull[:, 0], hull[:, 1]
    return float(0.5 * abs(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


def outline(mask: np.ndarray) -> tuple[float, float, float]:
    """(hull fill of the bounding box, solidity, top share) of a 2D boolean mask's largest component:
    the top share is the part of its area above the middle of its box (an apex-up triangle 1/4, a
    circle or a square 1/2). (nan, nan, nan) for an empty mask."""
    part = largest_component(mask)
    ys, xs = np.nonzero(part)
    if len(ys) == 0:
        return float("nan"), float("nan"), float("nan")
    corners = []
    for y in np.unique(ys):  # a row's outermost pixels carry every corner the hull can use
        row = xs[ys == y]
        left, right = row.min(), row.max() + 1
        corners += [(left, y), (right, y), (left, y + 1), (right, y + 1)]
    hull = hull_area(np.asarray(corners))
    box = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min())
    middle = (ys.min() + ys.max() + 1) / 2.0
    top = np.clip(middle - ys, 0.0, 1.0).sum()  # a row the middle cuts counts in part
    return hull / box, len(ys) / hull, float(top / len(ys))

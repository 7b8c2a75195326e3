"""Point labels that overlap neither each other nor the markers: a greedy placement.

Each label takes the first free spot of a few around its point, in display space after the
figure's layout; a spot past the axes' edge counts as taken, since the label would be cut off.
"""

from __future__ import annotations

import math

from matplotlib.figure import Figure

# A point to label: x, y in data coordinates, the text and its colour.
LabelledPoint = tuple[float, float, str, str]
# Offsets (points) and alignment tried around a point, in order of preference.
CANDIDATES = [
    (5, 3, "left", "bottom"),
    (5, -3, "left", "top"),
    (-5, 3, "right", "bottom"),
    (-5, -3, "right", "top"),
    (0, 7, "center", "bottom"),
    (0, -7, "center", "top"),
    (9, 12, "left", "bottom"),
    (-9, -12, "right", "top"),
]
Box = tuple[float, float, float, float]  # left, bottom, right, top in display pixels


def place_labels(
    figure: Figure, labelled: list[tuple[object, list[LabelledPoint]]], fontsize: float = 7.5
) -> None:
    """Label the points of each (axes, points). The layout is then frozen: the labels stay out
    of it, and a second layout pass would double the cost."""
    if not any(points for _, points in labelled):
        return
    figure.draw_without_rendering()
    for ax, points in labelled:
        place_axes_labels(figure, ax, points, fontsize)
    figure.set_layout_engine("none")


def _overlap(box: Box, other: Box) -> float:
    return max(0, min(box[2], other[2]) - max(box[0], other[0])) * max(
        0, min(box[3], other[3]) - max(box[1], other[1])
    )


def _best_spot(
    marker: tuple[float, float],
    size: tuple[float, float],
    scale: float,
    taken: list[Box],
    frame: Box,
) -> tuple[tuple[float, float, str, str], Box]:
    """The first candidate spot that overlaps nothing, else the one that overlaps least."""
    (mx, my), (width, height) = marker, size
    best, best_overlap = None, math.inf
    for dx, dy, ha, va in CANDIDATES:
        left = mx + dx * scale - {"left": 0, "center": width / 2, "right": width}[ha]
        bottom = my + dy * scale - {"bottom": 0, "top": height}[va]
        box = (left, bottom, left + width, bottom + height)
        overlap = sum(_overlap(box, t) for t in taken)
        overlap += width * height - _overlap(box, frame)  # a label past the axes edge is cut off
        if overlap < best_overlap:
            best, best_overlap = ((dx, dy, ha, va), box), overlap
        if overlap == 0:
            break
    return best


def place_axes_labels(figure: Figure, ax, points: list[LabelledPoint], fontsize: float) -> None:
    """Annotate one axes' points, each at its best spot given the markers and earlier labels."""
    scale = figure.dpi / 72
    extent = ax.get_window_extent()
    frame = (extent.x0, extent.y0, extent.x1, extent.y1)
    markers = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    taken = [(mx - 4 * scale, my - 4 * scale, mx + 4 * scale, my + 4 * scale) for mx, my in markers]
    for (x, y, text, color), marker in zip(points, markers):
        size = (len(text) * fontsize * 0.6 * scale, fontsize * 1.25 * scale)
        (dx, dy, ha, va), box = _best_spot(marker, size, scale, taken, frame)
        taken.append(box)
        note = ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=fontsize,
            color=color,
        )
        note.set_in_layout(False)

"""Vessel-aware correction tools on a boolean vessel mask (Qt-free; the *Correct a folder*
widget runs them in a worker and applies the returned pixels as one undo step).

:func:`remove_branch` cuts a skeleton segment at its nearest junctions, :func:`add_vessel` grows
the hysteresis region of the probability map around a click, :func:`trace_pixels` follows the
ridge of the map between two points, :func:`threshold_box` re-thresholds one region and
:func:`remove_specks` drops small pieces.  Each ``*_pixels`` / ``vessel_region`` function returns
the pixels to change, so the caller decides how to apply them.

The click tools of that widget are :class:`Tool` entries in :data:`TOOLS` (name -> tool): the
widget builds a :class:`ToolInput` from its controls and applies ``tool.pixels(inputs)``.  A new
correction tool is one :func:`register_tool` call here, no Qt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), bool)

# How far a click may be from what a click tool acts on (px): a click in empty space does nothing.
CLICK_REACH = 6
# The halo of the tree: candidate pixels this close to the existing vessels are not followed by
# *Add vessel here* (they ring the whole tree at a low threshold), only joined where the new
# segment meets the tree.
HALO_PX = 3


def _neighbours(skel: np.ndarray) -> np.ndarray:
    k = np.ones((3, 3), np.int32)
    k[1, 1] = 0
    return ndimage.convolve(skel.astype(np.int32), k, mode="constant") * skel


def branch_pixels(mask: np.ndarray, point) -> np.ndarray:
    """The pixels of the skeleton segment nearest to ``point`` (row, col), cut at its junctions:
    every vessel pixel whose nearest skeleton pixel lies on that segment (bool mask).  Nothing when
    no vessel lies within ``CLICK_REACH`` px of the click."""
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    comps, _ = ndimage.label(mask, structure=_EIGHT)
    r, c = (int(round(v)) for v in point)
    r, c = min(max(r, 0), mask.shape[0] - 1), min(max(c, 0), mask.shape[1] - 1)
    if comps[r, c] == 0:  # the nearest vessel pixel's component, if the click is beside one
        y0, x0 = max(0, r - CLICK_REACH), max(0, c - CLICK_REACH)
        near = comps[y0 : r + CLICK_REACH + 1, x0 : c + CLICK_REACH + 1]
        if not near.any():
            return out  # a click in empty space removes nothing (not the nearest vessel anywhere)
        dist, (ir, ic) = ndimage.distance_transform_edt(near == 0, return_indices=True)
        rr, cc = r - y0, c - x0
        if dist[rr, cc] > CLICK_REACH:
            return out
        r, c = int(ir[rr, cc]) + y0, int(ic[rr, cc]) + x0
    comp = comps == comps[r, c]
    skel = skeletonize(comp)
    if not skel.any():
        return comp
    junction = (_neighbours(skel) >= 3) & skel
    junction = ndimage.binary_dilation(junction, structure=_EIGHT) & skel
    segments, _ = ndimage.label(skel & ~junction, structure=_EIGHT)
    # Each vessel pixel belongs to its nearest skeleton pixel's segment (0 = a junction).
    _, (ir, ic) = ndimage.distance_transform_edt(~skel, return_indices=True)
    owner = segments[ir, ic]
    seg_id = owner[r, c]
    if seg_id == 0:  # clicked on a junction: take the nearest segment pixel
        _, (jr, jc) = ndimage.distance_transform_edt(segments == 0, return_indices=True)
        seg_id = segments[jr[r, c], jc[r, c]]
        if seg_id == 0:
            return comp
    return comp & (owner == seg_id)


def remove_branch(mask: np.ndarray, point) -> np.ndarray:
    """The mask without the branch clicked at ``point``: the skeleton segment is cut at the nearest
    junctions and only its pixels go, never the rest of the tree."""
    mask = np.asarray(mask, bool)
    return mask & ~branch_pixels(mask, point)


def click_radius(shape) -> int:
    """Half the side of the window a click tool may change: about one vessel segment between two
    junctions (4% of the longer side, at least 40 px: 40 px on DRIVE, 140 px on a 3500-px photo)."""
    return max(40, int(round(0.04 * max(shape[:2]))))


def vessel_region(prob: np.ndarray, mask: np.ndarray, point, low: float, radius: int | None = None) -> np.ndarray:
    """The pixels *Add vessel here* adds: the missed vessel segment at the click, nothing else.

    The connected region of ``prob >= low`` that is not vessel yet, grown from the click (the
    nearest such pixel within 3 px) inside a window of ``radius`` px around it
    (:func:`click_radius`).  It does not run along the halo of the existing vessels (the pixels
    within ``HALO_PX`` of them, which at a low threshold ring the whole tree) except at the click;
    where the segment meets the tree the halo between them is added, so the new segment joins it.
    """
    prob = np.asarray(prob)
    mask = np.asarray(mask, bool)
    out = np.zeros(prob.shape, bool)
    r, c = (int(round(v)) for v in point)
    h, w = prob.shape
    if not (0 <= r < h and 0 <= c < w):
        return out
    rad = int(radius) if radius else click_radius(prob.shape)
    y0, y1, x0, x1 = max(0, r - rad), min(h, r + rad + 1), max(0, c - rad), min(w, c + rad + 1)
    p, m = prob[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    cand = (p >= low) & ~m
    r, c = r - y0, c - x0
    if not cand[r, c]:
        a0, a1, b0, b1 = max(0, r - 3), min(cand.shape[0], r + 4), max(0, c - 3), min(cand.shape[1], c + 4)
        win = np.where(cand[a0:a1, b0:b1], p[a0:a1, b0:b1], -1)
        if win.max() < 0:
            return out
        dr, dc = np.unravel_index(np.argmax(win), win.shape)
        r, c = a0 + dr, b0 + dc
    near = (ndimage.distance_transform_edt(~m) <= HALO_PX) & cand if m.any() else np.zeros(m.shape, bool)
    yy, xx = np.ogrid[: m.shape[0], : m.shape[1]]
    at_click = (yy - r) ** 2 + (xx - c) ** 2 <= (HALO_PX + 2) ** 2
    labels, _ = ndimage.label(cand & (~near | at_click), structure=_EIGHT)
    region = labels == labels[r, c]
    # Join the segment to the vessels it meets: the halo pixels next to its ends.
    region |= ndimage.binary_dilation(region, structure=_EIGHT, iterations=HALO_PX + 1) & near
    out[y0:y1, x0:x1] = region
    return out


def trace_pixels(prob: np.ndarray, mask: np.ndarray, start, end, width: int = 1) -> np.ndarray:
    """The pixels a drag from ``start`` to ``end`` adds: the cheapest path along the ridge of
    the probability map (cost 1 - p), ``width`` pixels wide, minus what is already vessel."""
    from skimage.graph import route_through_array

    prob = np.asarray(prob, np.float32)
    h, w = prob.shape

    def clip(p):
        return (min(max(int(round(p[0])), 0), h - 1), min(max(int(round(p[1])), 0), w - 1))

    start, end = clip(start), clip(end)
    # Search only the box around both ends (with a margin): a drag is local.
    m = max(16, abs(start[0] - end[0]) // 2, abs(start[1] - end[1]) // 2)
    y0, y1 = max(0, min(start[0], end[0]) - m), min(h, max(start[0], end[0]) + m + 1)
    x0, x1 = max(0, min(start[1], end[1]) - m), min(w, max(start[1], end[1]) + m + 1)
    cost = 1.0 - np.clip(prob[y0:y1, x0:x1], 0, 1) + 1e-3
    path, _ = route_through_array(
        cost, (start[0] - y0, start[1] - x0), (end[0] - y0, end[1] - x0), fully_connected=True, geometric=True
    )
    out = np.zeros(prob.shape, bool)
    rr, cc = np.asarray(path).T
    out[rr + y0, cc + x0] = True
    if width > 1:
        out = ndimage.binary_dilation(out, iterations=width // 2)
    return out & ~np.asarray(mask, bool)


def add_vessel(prob: np.ndarray, mask: np.ndarray, point, low: float, radius: int | None = None) -> np.ndarray:
    """The mask plus the missed vessel segment at ``point`` (:func:`vessel_region`)."""
    return np.asarray(mask, bool) | vessel_region(prob, mask, point, low, radius)


def threshold_box(
    prob: np.ndarray, mask: np.ndarray, fov: np.ndarray | None, box, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """A local threshold (a hazy area): inside ``box`` (y0, x0, y1, x1), the pixels to turn on
    and the pixels to turn off so that vessel = ``prob >= threshold`` inside the FOV there."""
    prob = np.asarray(prob)
    mask = np.asarray(mask, bool)
    y0, x0, y1, x1 = (int(v) for v in box[:4])
    want = np.zeros(mask.shape, bool)
    inside = np.zeros(mask.shape, bool)
    inside[y0:y1, x0:x1] = True
    if fov is not None:
        inside &= np.asarray(fov, bool)
    want[inside] = prob[inside] >= threshold
    return want & ~mask & inside, mask & ~want & inside


def speck_components(mask: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(bool mask of the pixels of the 8-connected components smaller than ``n`` pixels, how many
    such components): what *Remove specks* removes, and the count its preview shows."""
    mask = np.asarray(mask, bool)
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return np.zeros(mask.shape, bool), 0
    small = np.bincount(labels.ravel()) < n
    small[0] = False
    return small[labels], int(np.count_nonzero(small))


def speck_pixels(mask: np.ndarray, n: int) -> np.ndarray:
    """The pixels of the 8-connected components smaller than ``n`` pixels (bool mask)."""
    return speck_components(mask, n)[0]


def remove_specks(mask: np.ndarray, n: int) -> np.ndarray:
    """The mask without its components smaller than ``n`` pixels."""
    mask = np.asarray(mask, bool)
    return mask & ~speck_pixels(mask, n)


@dataclass(frozen=True)
class ToolInput:
    """What a click tool may read: the vessels, the probability map and the widget's controls."""

    mask: np.ndarray  # the vessels now (bool)
    probability: np.ndarray | None  # the network's probability map
    point: Any = None  # the click (row, col); a drag's ((row, col), (row, col)); None for a button
    low: float = 0.5  # *Add vessel here*'s low threshold
    speck_size: int = 0  # *Remove specks*: components smaller than this many pixels go


@dataclass(frozen=True)
class Tool:
    """A correction tool: ``pixels(inputs)`` (run in a worker) returns the bool mask of the pixels
    it changes; they become vessel if ``adds``, background otherwise, as one undo step.  ``status``
    is what the widget then says; it may name :class:`ToolInput` fields (``{speck_size}``)."""

    name: str
    adds: bool
    status: str
    pixels: Callable[[ToolInput], np.ndarray]

    def describe(self, inputs: ToolInput) -> str:
        """The status text for ``inputs``."""
        return self.status.format(low=inputs.low, speck_size=inputs.speck_size)


TOOLS: dict[str, Tool] = {}


def register_tool(tool: Tool, replace: bool = False) -> Tool:
    """Add ``tool`` to :data:`TOOLS` (a name already taken is refused unless ``replace``)."""
    if tool.name in TOOLS and not replace:
        raise ValueError(f"A correction tool named {tool.name!r} is already registered.")
    TOOLS[tool.name] = tool
    return tool


def _probability(i: ToolInput) -> np.ndarray:
    """The map a probability-following tool needs (the panel always passes the one on screen)."""
    if i.probability is None:
        raise ValueError("this tool follows the probability map, and none was given")
    return i.probability


register_tool(Tool("branch", False, "Removed a branch", lambda i: branch_pixels(i.mask, i.point)))
register_tool(
    Tool("add", True, "Added a vessel", lambda i: vessel_region(_probability(i), i.mask, i.point, i.low)),
)
register_tool(
    Tool("trace", True, "Traced a vessel", lambda i: trace_pixels(_probability(i), i.mask, i.point[0], i.point[1], 2)),
)
register_tool(Tool("specks", False, "Removed specks < {speck_size} px", lambda i: speck_pixels(i.mask, i.speck_size)))

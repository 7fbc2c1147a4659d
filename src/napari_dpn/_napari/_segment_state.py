"""What the Segment widget keeps and shares between its parts (Qt-free).

The widget's sections (running, layers, threshold, comparison, saving) live in their own modules
as mixins of :class:`~napari_dpn._napari._segment_widget.SegmentWidget`; the constants, the
records they pass around (:class:`_Outcome` from the background job, :class:`_Result` per image
layer) and a few small helpers are here, so that no part imports another and none of this needs a
Qt import.  Everything is re-exported by ``_segment_widget``, where scripts and tests find it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import _roles

if TYPE_CHECKING:
    from napari.layers import Image

NO_GT = "(none)"
VESSEL_COLOUR = _roles.VESSEL_COLOUR  # the colour scheme of every layer role is _roles.style
FP_COLOUR = _roles.FP_COLOUR
FN_COLOUR = _roles.FN_COLOUR
BRUSH_SIZE = 3
SPECK_PIXELS = 30
# Comparisons and speck removal on images up to this many pixels run at once on the GUI thread
# (tens of milliseconds); larger images go to a worker thread (an 8-Mpx AUC takes ~0.4 s).
INLINE_PIXELS = 1_000_000
EDIT_CHECK_MS = 300
# Between two steps of putting a result into the viewer: a real timer, not a zero-time one (a
# chain of those runs back to back without letting the event loop paint or take input).
STEP_MS = 10
NO_IMAGE_MESSAGE = "Open a fundus photograph first (File > Open, or File > Open Sample > DPN retinal vessels)."


@dataclass
class _Outcome:
    """What the background job hands back (it never raises)."""

    run: int = 0
    layer: object = None
    fov_layer: object = None
    prediction: object = None
    prob: np.ndarray | None = None
    fov: np.ndarray | None = None
    mask: np.ndarray | None = None  # bool: prob >= threshold inside the FOV
    threshold: float = 0.5
    card: object = None
    model_label: str = ""
    scale: object = None  # scale.Scale: what the photograph was resampled by, and why
    error: str | None = None
    cancelled: bool = False


@dataclass
class _Result:
    """Everything the widget keeps for one image layer (segmented, or a resumed annotation)."""

    image: Image
    name: str
    prob: np.ndarray | None  # None: a resumed annotation not segmented yet
    fov: np.ndarray | None
    threshold: float
    card: object = None
    model_label: str = ""
    device: str = ""
    seconds: float = 0.0
    note: str | None = None
    scale: str = ""  # the scale the network saw, in words (scale.Scale.describe)
    layers: dict = field(default_factory=dict)  # "probability", "vessels", "fov", "errors"
    edited: bool = False
    edits: int = 0  # paint events on the vessels layer, ever
    resumed: str | None = None  # the annotation file it was resumed from
    roc_cache: dict = field(default_factory=dict)  # id(gt layer) -> (auc, youden)
    metrics: dict | None = None
    _mask: tuple | None = None  # (prob, threshold, mask) of the last vessel_mask()

    def vessel_mask(self) -> np.ndarray | None:
        """What the threshold gives: probability >= threshold inside the FOV (cached).

        Outside the FOV there is no retina to annotate, and a network trained with an FOV-only loss
        (ours) is free to answer anything there (a false vessel along the photograph's edge, say).
        """
        if self.prob is None:
            return None
        cached = self._mask
        if cached is not None and cached[0] is self.prob and cached[1] == self.threshold:
            return cached[2]
        mask = self.prob >= self.threshold
        if self.fov is not None:
            mask &= self.fov
        self._mask = (self.prob, self.threshold, mask)
        return mask

    def layer(self, viewer, kind):
        lyr = self.layers.get(kind)
        return lyr if lyr is not None and lyr in viewer.layers else None


def _label_colormap(colours: dict):
    return _roles.label_colormap(colours)


def _light_worker(func, *args):
    """A plain napari worker for short numeric jobs (comparison, specks)."""
    from napari.qt.threading import create_worker

    return create_worker(func, *args, _start_thread=False)


def looks_like_annotation(layer) -> bool:
    """True for an image layer that is a mask (a ground truth or saved annotation opened by
    napari's own reader, say): never preselected as the photograph to segment."""
    from ._reader import annotation_of

    if _roles.role_of(layer) in ("ground_truth", "fov", "mask", "vessels", "errors"):
        return True
    source = getattr(getattr(layer, "source", None), "path", None)
    return annotation_of(layer.name) is not None or (source is not None and annotation_of(Path(source)) is not None)

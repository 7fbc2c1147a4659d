"""The Segment widget's state: one typed object that every panel reads and changes (Qt-free).

:class:`SegmentState` holds what the widget knows: the current image and ground truth, the
loaded models, one :class:`ImageResult` per image layer (its probability map, FOV, threshold,
layers, the lock that its edits set), the ground truth chosen for each image, the save folder
and what runs in the background.  The panels observe it through two signals (``changed``: re-read
the controls; ``mask_changed``: compare the vessels with the ground truth again) and a few
methods; none of them reaches into another panel.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from . import _roles

NO_GT = "(none)"
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
class Outcome:
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
class ImageResult:
    """Everything the widget keeps for one image layer (segmented, or a resumed annotation)."""

    image: Any
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
    edited: bool = False  # the threshold lock: corrections exist
    edits: int = 0  # paint events on the vessels layer, ever
    resumed: str | None = None  # the annotation file it was resumed from
    roc_cache: dict = field(default_factory=dict)  # gt layer -> (auc, youden)
    metrics: dict | None = None
    mask_cache: tuple | None = None  # (prob, threshold, mask) of the last vessel_mask()

    def vessel_mask(self) -> np.ndarray | None:
        """What the threshold gives: probability >= threshold inside the FOV (cached).

        Outside the FOV there is no retina to annotate, and a network trained with an FOV-only loss
        (ours) is free to answer anything there (a false vessel along the photograph's edge, say).
        """
        if self.prob is None:
            return None
        cached = self.mask_cache
        if cached is not None and cached[0] is self.prob and cached[1] == self.threshold:
            return cached[2]
        mask = self.prob >= self.threshold
        if self.fov is not None:
            mask &= self.fov
        self.mask_cache = (self.prob, self.threshold, mask)
        return mask

    def layer(self, viewer, kind):
        """The result's layer of this kind while it is in the viewer, else None."""
        lyr = self.layers.get(kind)
        return lyr if lyr is not None and lyr in viewer.layers else None


@dataclass
class SegmentState:
    """What the Segment widget knows; the panels read and change it and listen to its signals."""

    changed = Signal()  # the current result, its lock or the busy flags changed: re-read the controls
    mask_changed = Signal()  # the vessels mask or the ground truth changed: compare again
    run_info = Signal(object)  # show this result's run in the status line
    edit_note = Signal(str)  # a line for the corrections' status

    layers: Any = None  # the viewer's layer list (membership checks)
    image: Any = None  # the chosen image layer
    ground_truth: Any = None  # the chosen ground-truth layer (or None)
    threshold: float = 0.5  # the slider's value
    results: dict = field(default_factory=dict)  # image layer -> ImageResult
    gt_choice: dict = field(default_factory=dict)  # image layer -> ground truth chosen for it (or None)
    models: dict = field(default_factory=dict)  # (path, mtime) -> LoadedModel, loaded in the worker
    save_folder: Path | None = None
    running: bool = False  # segmenting, or putting a result in the viewer
    comparing: bool = False  # a comparison computed in the background
    specking: bool = False  # speck removal in the background
    putting: bool = False  # adding our own layer: nothing to re-list
    adopt_seen: weakref.WeakSet = field(default_factory=weakref.WeakSet)  # layers looked at for annotations
    is_alive: Callable[[], bool] = lambda: True  # False once the widget is gone

    @property
    def alive(self) -> bool:
        return self.is_alive()

    @property
    def busy(self) -> bool:
        """True while anything runs in the background (segmenting, comparing, speck removal)."""
        return self.running or self.comparing or self.specking

    def is_open(self, layer) -> bool:
        return layer is not None and (self.layers is None or layer in self.layers)

    def current_image(self):
        return self.image if self.is_open(self.image) else None

    def current_ground_truth(self):
        return self.ground_truth if self.is_open(self.ground_truth) else None

    def current_result(self) -> ImageResult | None:
        image = self.current_image()
        return self.results.get(image) if image is not None else None

    def result_of_vessels(self, layer) -> ImageResult | None:
        return next((res for res in self.results.values() if res.layers.get("vessels") is layer), None)

    def forget(self, layer) -> None:
        """A layer left the viewer: drop its result and choice; corrections gone with a vessels
        layer unlock its result."""
        self.results.pop(layer, None)
        self.gt_choice.pop(layer, None)
        for res in self.results.values():
            if res.layers.get("vessels") is layer:
                res.edited = False
                res.resumed = None

    def touch(self, res: ImageResult | None = None, mask: bool = True) -> None:
        """Tell the panels that ``res`` (default: the current result) changed."""
        if res is None or res is self.current_result():
            self.changed.emit()
            if mask:
                self.mask_changed.emit()


def image_shape(image) -> tuple:
    """The (rows, columns) of an image layer (its first scale, without colour)."""
    shape = (image.data[0] if image.multiscale else image.data).shape
    return tuple(shape[:2] if image.rgb else shape[-2:])


def image_path(layer) -> Path | None:
    """The file the image layer came from, if any."""
    path = _roles.info_of(layer).get("path")
    if not path:
        path = getattr(getattr(layer, "source", None), "path", None)
    if path and Path(path).is_file():
        return Path(path)
    return None


def ground_truth_mask(res: ImageResult | None, gt) -> np.ndarray | None:
    """The ground truth as a bool mask when it fits the result's image, else None."""
    if res is None or gt is None:
        return None
    data = np.asarray(gt.data[0] if getattr(gt, "multiscale", False) else gt.data)
    if data.shape != image_shape(res.image):
        return None
    return data > 0


def looks_like_annotation(layer) -> bool:
    """True for an image layer that is a mask (a ground truth or saved annotation opened by
    napari's own reader, say): never preselected as the photograph to segment."""
    from ._reader import annotation_of  # here: the reader's dataset layouts load only once an image is open

    if _roles.role_of(layer) in ("ground_truth", "fov", "mask", "vessels", "errors"):
        return True
    source = getattr(getattr(layer, "source", None), "path", None)
    return annotation_of(layer.name) is not None or (source is not None and annotation_of(Path(source)) is not None)

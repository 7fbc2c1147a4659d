"""Which image and which ground truth the Segment widget works on, and the canvas that follows them.

:class:`LayerChoice` fills the *Image* box (of the run panel) and the *Ground truth* box (of the
comparison panel) from the viewer's layers, keeps the state's ``image`` and ``ground_truth`` in
step with them, pairs each image with its own ground truth (the one chosen for it before, its
reader metadata, or the name ``"<image> ground truth"``) and shows the chosen image's layers
while hiding the other images'.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QComboBox

from . import _roles
from ._segment_compare import ComparePanel
from ._segment_state import NO_GT, SegmentState, looks_like_annotation


def fill_combo(combo: QComboBox, layers, keep, first: str | None = None) -> None:
    """List ``layers`` in ``combo`` (after ``first``, an item for none), keeping ``keep`` chosen."""
    combo.blockSignals(True)
    combo.clear()
    if first is not None:
        combo.addItem(first, None)
    for lyr in layers:
        combo.addItem(lyr.name, lyr)
    idx = next((i for i in range(combo.count()) if combo.itemData(i) is keep), -1)
    if idx < 0:
        idx = 0 if first is not None or keep is not None else -1
    combo.setCurrentIndex(idx if combo.count() else -1)
    combo.blockSignals(False)


class LayerChoice:
    """The image and ground-truth boxes, kept in step with the viewer and the state."""

    def __init__(self, state: SegmentState, viewer, image_combo: QComboBox, compare: ComparePanel, image_layers):
        self.state = state
        self.image_layers = image_layers  # () -> the image layers the widget lists
        self.viewer = viewer
        self.image_combo = image_combo
        self.compare = compare
        self.gt_combo = compare.gt_combo

    def _read_image(self) -> None:
        self.state.image = self.image_combo.currentData() if self.image_combo.count() else None

    def refill(self, images: list, candidates: list) -> bool:
        """List ``images`` and ground-truth ``candidates``; True when the image changed."""
        state = self.state
        old_image = state.current_image()
        keep = old_image
        if keep is None or keep not in images:
            photos = [lyr for lyr in images if not looks_like_annotation(lyr)]
            active = self.viewer.layers.selection.active
            keep = active if active in photos else (photos[-1] if photos else None)
        fill_combo(self.image_combo, images, keep)
        self._read_image()
        old_gt = self.gt_combo.currentData()
        old_candidates = self.compare.candidates()
        fill_combo(self.gt_combo, candidates, old_gt, first=NO_GT)
        state.ground_truth = self.gt_combo.currentData()
        if state.current_image() is not old_image:
            self.on_image_changed(show=False)  # a new layer: napari shows it already
        elif old_gt is not None and self.gt_combo.currentData() is not old_gt:
            self.compare.on_gt_changed()
        elif any(all(lyr is not old for old in old_candidates) for lyr in candidates):
            self.autoselect_gt()  # a new annotation layer appeared (e.g. a dataset folder)
        return state.current_image() is not old_image

    def set_image(self, layer) -> None:
        idx = next(i for i in range(self.image_combo.count()) if self.image_combo.itemData(i) is layer)
        self.image_combo.setCurrentIndex(idx)

    def set_ground_truth(self, layer) -> None:
        idx = next(i for i in range(self.gt_combo.count()) if self.gt_combo.itemData(i) is layer)
        self.gt_combo.setCurrentIndex(idx)

    def paired_ground_truth(self, image):
        """The ground truth that belongs to ``image``: the one chosen for it before, else its own
        annotation (reader metadata, or the name ``"<image> ground truth"``), else None."""
        if image is None:
            return None
        candidates = self.compare.candidates()
        if image in self.state.gt_choice:
            chosen = self.state.gt_choice[image]
            if chosen is None or chosen in candidates:
                return chosen
        for lyr in candidates:
            info = _roles.info_of(lyr)
            if info.get("role") == "ground_truth" and info.get("image") == image.name and not info.get("observer"):
                return lyr
        for lyr in candidates:
            if lyr.name == _roles.ground_truth_name(image.name):
                return lyr
        return None

    def autoselect_gt(self) -> None:
        """Pick the image's own ground truth when it appears and none is chosen."""
        image = self.state.current_image()
        if image is None or self.gt_combo.currentData() is not None:
            return
        gt = self.paired_ground_truth(image)
        if gt is not None:
            self.compare.select(gt)
            self.compare.on_gt_changed(remember=False)

    def on_image_changed(self, *_, show: bool = True) -> None:
        """The chosen image changed: its ground truth, its errors layer and its controls follow."""
        self._read_image()
        state = self.state
        image = state.current_image()
        if show:
            self.show_image(image)
        # The ground truth follows the image (never the previous image's annotation).
        self.compare.select(self.paired_ground_truth(image))
        # Errors layers of the other images would lie over this one as if they were its own.
        for res in state.results.values():
            errors = res.layer(self.viewer, "errors")
            if errors is not None:
                errors.visible = res.image is image
        res = state.current_result()
        if res is not None:
            state.run_info.emit(res)
        state.touch()

    def show_image(self, image) -> None:
        """The canvas follows the Image box: the chosen photograph and its layers (probability,
        vessels, ground truth) are shown, the other images' photographs and layers hidden (their
        eye in the layer list brings them back; FOV layers stay as they are), its vessels layer
        (else the photograph) is selected, and the view fits it when its size differs."""
        if image is None:
            return
        previous = self.viewer.layers.selection.active
        res = self.state.results.get(image)
        mine = [image] + ([res.layer(self.viewer, k) for k in ("probability", "vessels")] if res else [])
        mine = [lyr for lyr in [*mine, self.paired_ground_truth(image)] if lyr is not None]
        for lyr in self._theirs(image):
            if lyr is not None and lyr not in mine:
                lyr.visible = False
        for lyr in mine:
            lyr.visible = True
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        self.viewer.layers.selection.active = vessels if vessels is not None else image
        prev_shape = None
        if previous is not None and previous in self.viewer.layers and getattr(previous, "ndim", 0) >= 2:
            prev_shape = tuple(round(float(v)) for v in previous.extent.world[1][-2:])
        if prev_shape != tuple(round(float(v)) for v in image.extent.world[1][-2:]):
            self.fit_view(image)

    def _theirs(self, image) -> list:
        """The other photographs in the Image box and their layers."""
        theirs = []
        for other in self.image_layers():
            if other is image or looks_like_annotation(other):
                continue
            theirs.append(other)
            r = self.state.results.get(other)
            if r is not None:
                theirs += [r.layer(self.viewer, k) for k in ("probability", "vessels", "errors")]
            theirs.append(self.paired_ground_truth(other))
        return theirs

    def fit_view(self, layer) -> None:
        """Centre and zoom the camera on ``layer`` alone (napari's reset_view fits all layers)."""
        lo, hi = (np.asarray(v, float)[-2:] for v in layer.extent.world)
        size = np.maximum(hi - lo, 1.0)
        self.viewer.camera.center = tuple((lo + hi) / 2 - 0.5)
        canvas = np.asarray(getattr(self.viewer, "_canvas_size", (0, 0)), float)[-2:]
        if canvas.min() > 0:
            self.viewer.camera.zoom = 0.95 * float(np.min(canvas / size))

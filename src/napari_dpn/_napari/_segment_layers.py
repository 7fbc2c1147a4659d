"""The Segment widget's layers: a result's layers in the viewer, and the lock that follows paint edits.

:class:`ResultLayers` adds or updates the probability, FOV, vessels and errors layers of an
:class:`~._segment_state.ImageResult` (never stacking duplicates), and follows the edits on a
vessels layer: the first stroke locks the threshold, undoing every edit unlocks it again.  Every
panel that shows a result uses one, shared through the widget (or its own, alone in a test).
"""

from __future__ import annotations

import contextlib

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from . import _roles
from ._segment_state import BRUSH_SIZE, EDIT_CHECK_MS, ImageResult, SegmentState, image_shape


class ResultLayers:
    """Puts results' layers in ``viewer`` and watches their vessels layers for edits."""

    def __init__(self, state: SegmentState, viewer):
        self.state = state
        self.viewer = viewer
        self.edit_timer = QTimer()
        self.edit_timer.setSingleShot(True)
        self.edit_timer.setInterval(EDIT_CHECK_MS)
        self.edit_timer.timeout.connect(self.check_edits)

    def loaded_fov_layer(self, image):
        """A FOV mask opened from a file for this image (dataset folder), if any."""
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if (
                isinstance(lyr, Labels)
                and info.get("role") == "fov"
                and info.get("source") == "file"
                and (info.get("image") == image.name or lyr.name == _roles.fov_name(image.name))
                and tuple(lyr.data.shape) == image_shape(image)
            ):
                return lyr
        return None

    def linked_labels(self, image, role: str, name: str):
        """A labels layer of ``image``'s size that belongs to it in ``role`` (metadata or name)."""
        shape = image_shape(image)
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if (
                isinstance(lyr, Labels)
                and tuple(np.shape(lyr.data)) == shape
                and (
                    (info.get("role") == role and info.get("image") == image.name)
                    or (lyr.name == name and info.get("role") in (role, None))
                )
            ):
                return lyr
        return None

    def put(self, res: ImageResult, kind: str, name: str, data, layer_type: str, **kwargs):
        """Update the result's layer of this kind, or add it (never stack duplicates)."""
        lyr = res.layer(self.viewer, kind)
        if lyr is None and name in self.viewer.layers:
            cand = self.viewer.layers[name]
            if _roles.role_of(cand) == kind and (layer_type == "labels") == isinstance(cand, Labels):
                lyr = cand
        if lyr is not None:
            lyr.data = data
            lyr.name = name
        else:
            kwargs.setdefault("metadata", _roles.meta(kind, image=res.name))
            cls = Labels if layer_type == "labels" else Image
            self.state.putting = True  # our own output: nothing to re-list
            try:
                image = res.image
                lyr = cls(
                    data, name=name, translate=tuple(image.translate[-2:]), scale=tuple(image.scale[-2:]), **kwargs
                )
                _roles.add_in_place(self.viewer, lyr)  # stacked by role at once, no move later
            finally:
                self.state.putting = False
        res.layers[kind] = lyr
        return lyr

    def put_probability(self, res: ImageResult) -> None:
        self.put(
            res, "probability", _roles.probability_name(res.name), res.prob, "image", **_roles.style("probability")
        )

    def put_fov(self, res: ImageResult, fov_layer) -> None:
        if fov_layer is not None:
            res.layers["fov"] = fov_layer
        elif res.fov is not None and not (res.edited and res.layer(self.viewer, "fov") is not None):
            self.put(
                res,
                "fov",
                _roles.fov_name(res.name),
                res.fov.astype(np.uint8),
                "labels",
                visible=False,
                metadata=_roles.meta("fov", image=res.name, source="estimated"),
                **_roles.style("fov"),
            )

    def put_vessels(self, res: ImageResult, mask: np.ndarray) -> None:
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None:
            self.unwatch(vessels)
        vessels = self.put(res, "vessels", _roles.vessels_name(res.name), mask, "labels", **_roles.style("vessels"))
        _roles.set_info(vessels, corrected=None, saved=None)
        res.edited = False
        self.watch(vessels)
        vessels.mode = "paint"
        self.viewer.layers.selection.active = vessels

    def show_all(self, res: ImageResult) -> None:
        """All of a result's layers at once (a re-threshold whose vessels layer was deleted)."""
        self.put_probability(res)
        self.put_fov(res, self.loaded_fov_layer(res.image))
        self.put_vessels(res, res.vessel_mask().astype(np.uint8))

    def put_errors(self, res: ImageResult, errors: np.ndarray) -> None:
        self.put(res, "errors", _roles.errors_name(res.name), errors, "labels", **_roles.style("errors"))

    def remove_errors(self, res: ImageResult) -> None:
        errors = res.layer(self.viewer, "errors")
        if errors is not None:
            self.viewer.layers.remove(errors)
        res.metrics = None

    # ------------------------------------------------------------------ edits and the lock

    def watch(self, layer) -> None:
        """Follow the edits of a vessels layer (and make it ready to paint)."""
        self.unwatch(layer)
        layer.events.paint.connect(self.on_paint)
        layer.events.set_data.connect(self.on_vessels_data)
        layer.selected_label = 1
        layer.brush_size = BRUSH_SIZE

    def unwatch(self, layer) -> None:
        for emitter, slot in ((layer.events.paint, self.on_paint), (layer.events.set_data, self.on_vessels_data)):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(slot)

    def on_paint(self, event=None) -> None:
        state = self.state
        if not state.alive:
            return
        source = getattr(event, "source", None)
        res = state.result_of_vessels(source) if source is not None else state.current_result()
        if res is None:
            return
        res.edits += 1
        if not res.edited:
            res.edited = True
            vessels = res.layer(self.viewer, "vessels")
            if vessels is not None:
                _roles.set_info(vessels, corrected=True)
        self.edit_timer.start()
        state.touch(res)

    def on_vessels_data(self, event=None) -> None:
        # Undo and redo replace pixels without a paint event: look again shortly.
        if self.state.alive:
            self.edit_timer.start()

    def check_edits(self) -> None:
        """Make the lock follow the pixels: unlock a result whose vessels layer is back to the
        thresholded mask (every stroke undone), lock one that differs from it (a redo, or a
        change made from the console)."""
        state = self.state
        if not state.alive:
            return
        for res in list(state.results.values()):
            vessels = res.layer(self.viewer, "vessels")
            mask = res.vessel_mask()
            if vessels is None or mask is None:
                continue
            data = np.asarray(vessels.data)
            same = data.shape == mask.shape and np.array_equal(data > 0, mask)
            if same == (not res.edited):
                continue
            res.edited = not same
            if same:
                res.resumed = None
            saved = None if same else _roles.info_of(vessels).get("saved")
            _roles.set_info(vessels, corrected=None if same else True, saved=saved)
            if res is state.current_result():
                state.touch(res)
                if same:
                    state.edit_note.emit("All corrections undone: the threshold is unlocked.")

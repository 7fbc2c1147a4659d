"""The Segment widget's layers: putting a result's layers into the viewer and watching paint edits.

:class:`LayersMixin` adds or updates the probability, FOV and vessels layers of a result (never
stacking duplicates), and follows the edits on a vessels layer: the first stroke locks the
threshold, undoing every edit unlocks it again.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from . import _roles
from ._segment_state import BRUSH_SIZE, _Result


class LayersMixin:
    """The layers of each result, and the lock that follows their edits (part of :class:`SegmentWidget`).

    Uses the widget's ``viewer``, ``alive``, ``_results``, ``_putting``, ``_edit_timer``,
    ``edit_status``, ``current_result()``, ``_sync_controls`` and ``_update_comparison``.
    """

    def _loaded_fov_layer(self, image):
        """A FOV mask opened from a file for this image (dataset folder), if any."""
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if (
                isinstance(lyr, Labels)
                and info.get("role") == "fov"
                and info.get("source") == "file"
                and (info.get("image") == image.name or lyr.name == _roles.fov_name(image.name))
                and tuple(lyr.data.shape) == tuple(self._image_shape(image))
            ):
                return lyr
        return None

    @staticmethod
    def _image_shape(image):
        shape = (image.data[0] if image.multiscale else image.data).shape
        return shape[:2] if image.rgb else shape[-2:]

    def _put(self, res: _Result, kind: str, name: str, data, layer_type: str, **kwargs):
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
            self._putting = True  # our own output: nothing to re-list
            try:
                lyr = cls(
                    data,
                    name=name,
                    translate=tuple(res.image.translate[-2:]),
                    scale=tuple(res.image.scale[-2:]),
                    **kwargs,
                )
                _roles.add_in_place(self.viewer, lyr)  # stacked by role at once, no move later
            finally:
                self._putting = False
        res.layers[kind] = lyr
        return lyr

    def _put_probability(self, res: _Result) -> None:
        self._put(
            res,
            "probability",
            _roles.probability_name(res.name),
            res.prob,
            "image",
            **_roles.style("probability"),
        )

    def _put_fov(self, res: _Result, fov_layer) -> None:
        if fov_layer is not None:
            res.layers["fov"] = fov_layer
        elif res.fov is not None and not (res.edited and res.layer(self.viewer, "fov") is not None):
            self._put(
                res,
                "fov",
                _roles.fov_name(res.name),
                res.fov.astype(np.uint8),
                "labels",
                visible=False,
                metadata=_roles.meta("fov", image=res.name, source="estimated"),
                **_roles.style("fov"),
            )

    def _put_vessels(self, res: _Result, mask: np.ndarray) -> None:
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None:
            self._unwatch_vessels(vessels)
        vessels = self._put(
            res,
            "vessels",
            _roles.vessels_name(res.name),
            mask,
            "labels",
            **_roles.style("vessels"),
        )
        _roles.set_info(vessels, corrected=None, saved=None)
        res.edited = False
        self._watch_vessels(vessels)
        vessels.selected_label = 1
        vessels.brush_size = BRUSH_SIZE
        vessels.mode = "paint"
        self.viewer.layers.selection.active = vessels

    def _show_layers(self, res: _Result, fov_layer) -> None:
        """All of a result's layers at once (a re-threshold whose vessels layer was deleted)."""
        self._put_probability(res)
        self._put_fov(res, fov_layer)
        self._put_vessels(res, res.vessel_mask().astype(np.uint8))

    def _watch_vessels(self, layer) -> None:
        self._unwatch_vessels(layer)
        layer.events.paint.connect(self._on_paint)
        layer.events.set_data.connect(self._on_vessels_data)

    def _unwatch_vessels(self, layer) -> None:
        for emitter, slot in ((layer.events.paint, self._on_paint), (layer.events.set_data, self._on_vessels_data)):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _result_of_vessels(self, layer) -> _Result | None:
        for res in self._results.values():
            if res.layers.get("vessels") is layer:
                return res
        return None

    def _on_paint(self, event=None) -> None:
        if not self.alive:
            return
        source = getattr(event, "source", None)
        res = self._result_of_vessels(source) if source is not None else self.current_result()
        if res is None:
            return
        res.edits += 1
        if not res.edited:
            res.edited = True
            vessels = res.layer(self.viewer, "vessels")
            if vessels is not None:
                _roles.set_info(vessels, corrected=True)
        self._edit_timer.start()
        if res is self.current_result():
            self._sync_controls()
            self._update_comparison()

    def _on_vessels_data(self, event=None) -> None:
        # Undo and redo replace pixels without a paint event: look again shortly.
        if self.alive:
            self._edit_timer.start()

    def _check_edits(self) -> None:
        """Make the lock follow the pixels: unlock a result whose vessels layer is back to the
        thresholded mask (every stroke undone), lock one that differs from it (a redo, or a
        change made from the console)."""
        if not self.alive:
            return
        for res in list(self._results.values()):
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
            _roles.set_info(
                vessels, corrected=None if same else True, saved=None if same else _roles.info_of(vessels).get("saved")
            )
            if res is self.current_result():
                self._sync_controls()
                self._update_comparison()
                if same:
                    self.edit_status.setText("All corrections undone: the threshold is unlocked.")

"""The three layers of the *Correct a folder* widget (photograph, uncertainty, vessels).

They are made once and then reused: napari's layer removal runs a full garbage collection
(0.6 s each) and a new layer builds its visual, so replacing layers would freeze the viewer on
every Next.  One layer is filled per 10 ms timer tick; while the next image is being segmented
the old one is hidden and takes no edits, so it cannot pass for the new one.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from . import _roles
from ._session_state import FolderState, Prepared

META = _roles.SESSION_KEY  # marks the layers as the session's
KINDS = ("image", "uncertainty", "vessels")


class FolderLayers:
    """The viewer's layers of the session; ``on_paint`` and ``on_click`` are the vessels
    layer's paint event and mouse-drag callback (the tools panel's)."""

    def __init__(self, viewer, state: FolderState, on_paint, on_click, alive):
        self.viewer, self.state, self.alive = viewer, state, alive
        self.on_paint, self.on_click = on_paint, on_click
        self.layers: dict = {}
        self.outline = False
        self._hidden: dict = {}  # layer kind -> visibility, while the next image is being prepared
        self._steps: list = []

    @property
    def vessels(self):
        return self.layers.get("vessels")

    def vessels_mask(self) -> np.ndarray | None:
        vessels = self.vessels
        return None if vessels is None else np.asarray(vessels.data) > 0

    def set_outline(self, on: bool) -> None:
        self.outline = on
        if self.vessels is not None:
            self.vessels.contour = 1 if on else 0

    def clear(self) -> None:
        """Remove the session's layers (saved, or declined, before: removing them must not save)."""
        self.state.edits = 0
        for layer in list(self.layers.values()):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}

    def deleted(self) -> list[tuple[str, object]]:
        """Forget the layers the user deleted; returns them (kind, layer)."""
        gone = [(kind, layer) for kind, layer in self.layers.items() if layer not in self.viewer.layers]
        for kind, _ in gone:
            del self.layers[kind]
        return gone

    def hide(self) -> None:
        """The image to show is being segmented: the old one is hidden and takes no edits."""
        if self.vessels is not None:
            self.vessels.editable = False
        for kind, layer in self.layers.items():
            if layer in self.viewer.layers:
                self._hidden.setdefault(kind, layer.visible)
                layer.visible = False

    def show(self, prep: Prepared, name: str, finish) -> None:
        """Fill the layers with ``prep``, one per timer tick, then call ``finish(prep)``."""
        self.state.shown, self.state.arrival = None, prep
        meta = {META: True, "image": name}
        have = all(k in self.layers and self.layers[k] in self.viewer.layers for k in KINDS)
        if not have:
            self.clear()
        self._steps = [
            lambda: self._fill_image(prep, name, meta),
            lambda: self._fill_uncertainty(prep, name, meta),
            lambda: self._fill_vessels(prep, name, meta),
            lambda: self._finish(finish, prep),
        ]
        self._next_step(prep)

    def _next_step(self, prep) -> None:
        if not self.alive() or self.state.arrival is not prep or not self._steps:
            return
        self._steps.pop(0)()
        if self._steps:
            QTimer.singleShot(10, lambda: self._next_step(prep))

    def _unhide(self, kind: str) -> None:  # each layer shows again with its new data, not before
        visible = self._hidden.pop(kind, None)
        if visible is not None and kind in self.layers:
            self.layers[kind].visible = visible

    def _fill_image(self, prep, name, meta) -> None:
        self._unhide("image")
        layer = self.layers.get("image")
        if layer is not None:
            layer.data = prep.display
            layer.name, layer.metadata = name, dict(meta)
        else:
            self.layers["image"] = self.viewer.add_image(prep.display, name=name, rgb=True, metadata=dict(meta))

    def _fill_uncertainty(self, prep, name, meta) -> None:
        self._unhide("uncertainty")
        layer = self.layers.get("uncertainty")
        if layer is not None:
            layer.data = prep.uncertainty
            layer.name, layer.metadata = f"{name} uncertainty", dict(meta)
            return
        self.layers["uncertainty"] = self.viewer.add_image(
            prep.uncertainty,
            name=f"{name} uncertainty",
            colormap="inferno",
            opacity=0.35,
            blending="additive",
            contrast_limits=(0, 1),
            metadata=dict(meta),
        )

    def _fill_vessels(self, prep, name, meta) -> None:
        self._unhide("vessels")
        data = prep.mask.astype(np.uint8)
        layer = self.layers.get("vessels")
        if layer is not None:
            layer.events.paint.disconnect(self.on_paint)
            layer.data = data
            layer.editable = True
            layer._reset_history()  # Ctrl+Z must not bring back the previous image's pixels
            layer.name, layer.metadata = f"{name} vessels", dict(meta)
            layer.events.paint.connect(self.on_paint)
        else:
            layer = self.viewer.add_labels(data, name=f"{name} vessels", metadata=dict(meta), **_roles.style("vessels"))
            layer.events.paint.connect(self.on_paint)
            layer.mouse_drag_callbacks.append(self.on_click)
            self.layers["vessels"] = layer
        layer.contour = 1 if self.outline else 0
        self.viewer.layers.selection.active = layer

    def _finish(self, finish, prep) -> None:
        self.viewer.reset_view()
        self.state.fit_zoom = float(self.viewer.camera.zoom)
        finish(prep)

    def reset_vessels(self, mask: np.ndarray) -> None:
        """Put ``mask`` back into the vessels layer with no undo history (edits dropped)."""
        self.vessels.data = mask.astype(np.uint8)
        self.vessels._reset_history()

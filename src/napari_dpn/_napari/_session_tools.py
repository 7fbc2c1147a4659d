"""Correction tools of the Correct-a-folder widget, each one undoable step, and where to look next.

*Remove this branch* and *Add vessel here* (a click; in 'add' a drag traces along the ridge of the
probability map), *Remove specks*, a threshold for the region on screen only, and **Next uncertain
region**.  The pixel work runs in a worker (:mod:`napari_dpn.session` holds it, Qt-free); the
result is applied on the GUI thread only if the vessels did not change meanwhile.
"""

from __future__ import annotations

import numpy as np

from napari_dpn import session as S

from ._dock import unstarted_worker


class ToolsMixin:
    """Click tools and the uncertain-region tour (part of :class:`SessionWidget`).

    Uses the widget's ``viewer``, ``alive``, ``session``, ``shown``, ``layers``, ``edits``, ``dirty``,
    ``mode``, ``region``, ``_tool_worker``, ``_fit_zoom``, ``_say``, ``_warn_write``, ``_refresh_list``,
    ``_sync`` and the tool controls built in ``_build_ui``.
    """

    def _on_paint(self, event=None) -> None:
        if not self.alive or self.shown is None:
            return
        self.edits += 1
        self.dirty = True  # an edit: a correction to save (moving on alone approves nothing)
        self.session.mark_corrected(self.shown.index)  # never raises: a full disk keeps the stroke
        self._warn_write()
        self._refresh_list()

    def _on_outline(self, on: bool) -> None:
        vessels = self.layers.get("vessels")
        if vessels is not None:
            vessels.contour = 1 if on else 0

    def set_mode(self, mode: str | None) -> None:
        """'branch', 'add' or None: what a click on the vessels layer does."""
        self.mode = mode
        for button, m in ((self.branch_button, "branch"), (self.add_button, "add")):
            button.blockSignals(True)
            button.setChecked(mode == m)
            button.blockSignals(False)
        vessels = self.layers.get("vessels")
        if vessels is not None:
            vessels.mouse_pan = mode != "add"  # in 'add' a drag traces, it does not pan
        if mode is not None and vessels is not None:
            vessels.mode = "pan_zoom"  # the click is the tool's, not the brush's
            vessels.mouse_pan = mode != "add"
            self.viewer.layers.selection.active = vessels
            self._say(
                "Click a false branch to remove it."
                if mode == "branch"
                else "Click a missed vessel to add it, or drag along it to trace it."
            )

    def _on_click(self, layer, event):
        """A press applies the click tool; in 'Add vessel here' a drag traces the vessel along
        the ridge of the probability map from the press to the release."""
        if self.mode is None or event.type != "mouse_press" or layer is not self.layers.get("vessels"):
            return
        mode = self.mode
        pos = layer.world_to_data(event.position)
        start = (float(pos[-2]), float(pos[-1]))
        if mode != "add":
            self.apply_tool(mode, start)
            return
        yield
        while event.type == "mouse_move":
            yield
        pos = layer.world_to_data(event.position)
        end = (float(pos[-2]), float(pos[-1]))
        if max(abs(end[0] - start[0]), abs(end[1] - start[1])) < 3:
            self.apply_tool("add", start)
        else:
            self.apply_tool("trace", (start, end))

    def apply_tool(self, mode: str, point) -> bool:
        """Run a click tool at ``point`` (row, col) in a worker; the change is one undo step."""
        vessels, prep = self.layers.get("vessels"), self.shown
        if vessels is None or prep is None or self._tool_worker is not None:
            return False
        mask = np.asarray(vessels.data) > 0
        if mode == "branch":
            worker = unstarted_worker(S.branch_pixels, mask, point)
            value, what = 0, "Removed a branch"
        elif mode == "add":
            worker = unstarted_worker(S.vessel_region, prep.seg.probability, mask, point, self.low_spin.value())
            value, what = 1, "Added a vessel"
        elif mode == "trace":
            worker = unstarted_worker(S.trace_pixels, prep.seg.probability, mask, point[0], point[1], 2)
            value, what = 1, "Traced a vessel"
        elif mode == "specks":
            worker = unstarted_worker(S.speck_pixels, mask, int(self.speck_spin.value()))
            value, what = 0, f"Removed specks < {int(self.speck_spin.value())} px"
        else:
            return False
        edits = self.edits
        worker.returned.connect(lambda pix, v=vessels, e=edits: self._apply(v, e, pix, value, what))
        worker.finished.connect(self._on_tool_finished)
        self._tool_worker = worker
        worker.start()
        return True

    def remove_specks(self, *_) -> bool:
        return self.apply_tool("specks", None)

    def threshold_region(self, *_) -> bool:
        """Re-threshold the region on screen (from Next uncertain region) only: one undo step."""
        vessels, prep, box = self.layers.get("vessels"), self.shown, self.region
        if vessels is None or prep is None or box is None or self._tool_worker is not None:
            return False
        worker = unstarted_worker(
            S.threshold_box,
            prep.seg.probability,
            np.asarray(vessels.data) > 0,
            prep.seg.fov,
            box,
            float(self.local_spin.value()),
        )
        edits, t = self.edits, float(self.local_spin.value())
        worker.returned.connect(lambda out, v=vessels, e=edits: self._apply_pair(v, e, out, t))
        worker.finished.connect(self._on_tool_finished)
        self._tool_worker = worker
        worker.start()
        return True

    def _apply_pair(self, vessels, edits, out, t) -> None:
        if not self.alive or vessels is not self.layers.get("vessels") or edits != self.edits:
            return
        on, off = out
        with vessels.block_history():  # one Ctrl+Z undoes both
            if on.any():
                vessels.data_setitem(np.nonzero(on), 1)
            if off.any():
                vessels.data_setitem(np.nonzero(off), 0)
        self._say(f"Threshold {t:.2f} in this region: +{int(on.sum()):,} / -{int(off.sum()):,} px. Ctrl+Z undoes it.")

    def _on_tool_finished(self) -> None:
        self._tool_worker = None

    def _apply(self, vessels, edits, pixels, value, what) -> None:
        if not self.alive or vessels is not self.layers.get("vessels"):
            return
        if edits != self.edits:
            self._say("The vessels changed meanwhile; click again.")
            return
        indices = np.nonzero(pixels)
        if indices[0].size == 0:
            self._say(f"{what}: nothing to change there.")
            return
        with vessels.block_history():  # one Ctrl+Z undoes it
            vessels.data_setitem(indices, value)
        self._say(f"{what} ({indices[0].size:,} px). Ctrl+Z undoes it.")

    # ------------------------------------------------------------------ where to look next

    def next_uncertain(self, *_):
        """Zoom onto the most uncertain region of this image not yet visited; returns it."""
        prep = self.shown
        if prep is None:
            return None
        entry = self.session.entries[prep.index]
        seen = {tuple(v) for v in entry.visited}
        region = next((r for r in prep.regions if (r[0], r[1]) not in seen), None)
        if region is None:
            self._say("Every region of this image was visited.")
            return None
        y0, x0, y1, x1, _ = region
        h, w = prep.mask.shape
        self.viewer.camera.center = ((y0 + y1) / 2, (x0 + x1) / 2)
        self.viewer.camera.zoom = self._fit_zoom * max(h, w) / (1.25 * max(y1 - y0, x1 - x0))
        self.session.visit(prep.index, region)
        self.region = region
        self.local_spin.setValue(round(float(prep.seg.threshold), 2))
        self._sync()
        rank = len(seen) + 1
        self._say(f"Uncertain region {rank} of {len(prep.regions)}: rows {y0}-{y1}, columns {x0}-{x1}.")
        return region

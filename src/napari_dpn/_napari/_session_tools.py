"""The *Tools* panel of *Correct a folder*: correction tools, each one undoable step, and where
to look next.

*Remove this branch* and *Add vessel here* (a click; in 'add' a drag traces along the ridge of the
probability map), *Remove specks*, a threshold for the region on screen only, and **Next uncertain
region**.  The pixel work runs in a worker (:mod:`napari_dpn.vessel_tools`, Qt-free); the result is
applied on the GUI thread only if the vessels did not change meanwhile.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QPushButton, QSpinBox, QWidget

from napari_dpn import vessel_tools

from ._dock import unstarted_worker
from ._session_layers import FolderLayers
from ._session_state import FolderState
from ._session_tool_controls import build_controls


class ToolsPanel(QWidget):
    """Click tools, specks, a local threshold, the uncertain-region tour and the outline view."""

    branch_button: QPushButton
    add_button: QPushButton
    low_spin: QDoubleSpinBox
    speck_spin: QSpinBox
    speck_button: QPushButton
    outline_check: QCheckBox
    local_spin: QDoubleSpinBox
    local_button: QPushButton
    uncertain_button: QPushButton

    def __init__(self, state: FolderState, layers: FolderLayers, viewer):
        super().__init__()
        self.state, self.layers, self.viewer = state, layers, viewer
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        build_controls(self, form)
        self.branch_button.toggled.connect(lambda on: self.set_mode("branch" if on else None))
        self.add_button.toggled.connect(lambda on: self.set_mode("add" if on else None))
        self.speck_button.clicked.connect(self.remove_specks)
        self.local_button.clicked.connect(self.threshold_region)
        self.uncertain_button.clicked.connect(self.next_uncertain)
        self.outline_check.toggled.connect(self.layers.set_outline)
        state.changed.connect(self.sync)
        state.arriving.connect(lambda: self.set_mode(None))
        state.arrived.connect(lambda prep: self.low_spin.setValue(round(max(0.05, prep.seg.threshold / 2), 2)))
        self.sync()

    def sync(self) -> None:
        shown = self.state.shown is not None and self.layers.vessels is not None
        for w in (self.branch_button, self.add_button, self.speck_button, self.uncertain_button):
            w.setEnabled(shown)
        self.local_button.setEnabled(shown and self.state.region is not None)

    def on_paint(self, event=None) -> None:
        """A brush stroke: an edit, a correction to save (moving on alone approves nothing)."""
        st = self.state
        if not self.layers.alive() or st.shown is None:
            return
        st.edits += 1
        st.dirty = True
        st.session.mark_corrected(st.shown.index)  # never raises: a full disk keeps the stroke
        st.warn_write()
        st.listed.emit()

    def set_mode(self, mode: str | None) -> None:
        """'branch', 'add' or None: what a click on the vessels layer does."""
        self.state.mode = mode
        for button, m in ((self.branch_button, "branch"), (self.add_button, "add")):
            button.blockSignals(True)
            button.setChecked(mode == m)
            button.blockSignals(False)
        vessels = self.layers.vessels
        if vessels is not None:
            vessels.mouse_pan = mode != "add"  # in 'add' a drag traces, it does not pan
        if mode is not None and vessels is not None:
            vessels.mode = "pan_zoom"  # the click is the tool's, not the brush's
            vessels.mouse_pan = mode != "add"
            self.viewer.layers.selection.active = vessels
            self.state.say(
                "Click a false branch to remove it."
                if mode == "branch"
                else "Click a missed vessel to add it, or drag along it to trace it."
            )

    def on_click(self, layer, event):
        """A press applies the click tool; in 'Add vessel here' a drag traces the vessel along
        the ridge of the probability map from the press to the release."""
        mode = self.state.mode
        if mode is None or event.type != "mouse_press" or layer is not self.layers.vessels:
            return
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
        """Run the tool ``mode`` (:data:`vessel_tools.TOOLS`) at ``point`` (row, col) in a worker;
        the change is one undo step."""
        vessels, prep = self.layers.vessels, self.state.shown
        if vessels is None or prep is None or "tool" in self.state.workers:
            return False
        tool = vessel_tools.TOOLS.get(mode)
        if tool is None:
            return False
        inputs = vessel_tools.ToolInput(
            mask=np.asarray(vessels.data) > 0,
            probability=prep.seg.probability,
            point=point,
            low=float(self.low_spin.value()),
            speck_size=int(self.speck_spin.value()),
        )
        value, what = int(tool.adds), tool.describe(inputs)
        edits = self.state.edits
        self._run(unstarted_worker(tool.pixels, inputs), lambda pix: self._apply(vessels, edits, pix, value, what))
        return True

    def _run(self, worker, on_result) -> None:
        worker.returned.connect(on_result)
        worker.finished.connect(lambda: self.state.worker_done("tool", self.layers.alive()))
        self.state.set_worker("tool", worker)
        worker.start()

    def remove_specks(self, *_) -> bool:
        return self.apply_tool("specks", None)

    def threshold_region(self, *_) -> bool:
        """Re-threshold the region on screen (from Next uncertain region) only: one undo step."""
        vessels, prep, box = self.layers.vessels, self.state.shown, self.state.region
        if vessels is None or prep is None or box is None or "tool" in self.state.workers:
            return False
        edits, t = self.state.edits, float(self.local_spin.value())
        mask = np.asarray(vessels.data) > 0
        worker = unstarted_worker(vessel_tools.threshold_box, prep.seg.probability, mask, prep.seg.fov, box, t)
        self._run(worker, lambda out: self._apply_pair(vessels, edits, out, t))
        return True

    def _apply_pair(self, vessels, edits, out, t) -> None:
        if not self.layers.alive() or vessels is not self.layers.vessels or edits != self.state.edits:
            return
        on, off = out
        with vessels.block_history():  # one Ctrl+Z undoes both
            if on.any():
                vessels.data_setitem(np.nonzero(on), 1)
            if off.any():
                vessels.data_setitem(np.nonzero(off), 0)
        self.state.say(
            f"Threshold {t:.2f} in this region: +{int(on.sum()):,} / -{int(off.sum()):,} px. Ctrl+Z undoes it."
        )

    def _apply(self, vessels, edits, pixels, value, what) -> None:
        if not self.layers.alive() or vessels is not self.layers.vessels:
            return
        if edits != self.state.edits:
            self.state.say("The vessels changed meanwhile; click again.")
            return
        indices = np.nonzero(pixels)
        if indices[0].size == 0:
            self.state.say(f"{what}: nothing to change there.")
            return
        with vessels.block_history():  # one Ctrl+Z undoes it
            vessels.data_setitem(indices, value)
        self.state.say(f"{what} ({indices[0].size:,} px). Ctrl+Z undoes it.")

    def next_uncertain(self, *_):
        """Zoom onto the most uncertain region of this image not yet visited; returns it."""
        st, prep = self.state, self.state.shown
        if prep is None:
            return None
        seen = {tuple(v) for v in st.session.entries[prep.index].visited}
        region = next((r for r in prep.regions if (r[0], r[1]) not in seen), None)
        if region is None:
            st.say("Every region of this image was visited.")
            return None
        y0, x0, y1, x1, _ = region
        h, w = prep.mask.shape
        self.viewer.camera.center = ((y0 + y1) / 2, (x0 + x1) / 2)
        self.viewer.camera.zoom = st.fit_zoom * max(h, w) / (1.25 * max(y1 - y0, x1 - x0))
        st.session.visit(prep.index, region)
        st.region = region
        self.local_spin.setValue(round(float(prep.seg.threshold), 2))
        st.changed.emit()
        st.say(f"Uncertain region {len(seen) + 1} of {len(prep.regions)}: rows {y0}-{y1}, columns {x0}-{x1}.")
        return region

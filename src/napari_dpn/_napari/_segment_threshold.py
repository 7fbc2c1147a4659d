"""The Segment widget's "Threshold and corrections" panel: slider, ROC-optimal, re-apply, remove specks.

:class:`ThresholdPanel` recomputes only ``(probability >= t) & FOV`` when the slider moves (the
network is not run again), never overwrites corrections without a confirmation, erases specks in
one undoable step (in a worker for a large image), and keeps its controls in step with the
current result of the :class:`~._segment_state.SegmentState` (``sync``, on ``state.changed``).
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSpinBox, QVBoxLayout
from superqt import QLabeledDoubleSlider

from napari_dpn import comparison

from . import _roles
from ._dock import Section, unstarted_worker, wrapped_label
from ._segment_layers import ResultLayers
from ._segment_state import INLINE_PIXELS, SPECK_PIXELS, ImageResult, SegmentState, ground_truth_mask


def ask_nothing(*_, **__) -> bool:
    """The default confirmation of a panel used alone: never discard anything."""
    return False


class ThresholdPanel(Section):
    """Threshold slider, ROC-optimal, speck removal and re-apply, over the current result."""

    def __init__(self, state: SegmentState, viewer, layers: ResultLayers | None = None, confirm=ask_nothing):
        super().__init__("Threshold and corrections")
        self.state = state
        self.viewer = viewer
        self.layers = layers or ResultLayers(state, viewer)
        self.confirm = confirm  # (title, text, ok=...) -> bool
        self._syncing = False
        self._speck_worker = None
        self._build()
        state.changed.connect(self.sync)
        state.edit_note.connect(self.note)
        state.run_info.connect(self.show_result)
        self.sync()

    def _build(self) -> None:
        lay = QVBoxLayout(self.body)
        lay.setContentsMargins(4, 2, 0, 2)
        row = QHBoxLayout()
        self.slider = QLabeledDoubleSlider(Qt.Horizontal)
        self.slider.setRange(0.0, 1.0)
        self.slider.setDecimals(3)
        self.slider.setSingleStep(0.01)
        self.slider.setValue(0.5)
        self.slider.setToolTip(
            "Vessel = probability >= threshold, inside the FOV. Starts at the model card's recommended value."
        )
        row.addWidget(self.slider, 1)
        self.youden_button = QPushButton("ROC-optimal")
        self.youden_button.setToolTip("Set the threshold that maximises Se + Sp - 1 (Youden) against the ground truth.")
        row.addWidget(self.youden_button)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.speck_spin = QSpinBox()
        self.speck_spin.setRange(2, 100_000)
        self.speck_spin.setValue(SPECK_PIXELS)
        self.speck_spin.setPrefix("< ")
        self.speck_spin.setSuffix(" px")
        self.speck_spin.setToolTip("Vessel pieces smaller than this many pixels (8-connected) count as specks.")
        self.speck_button = QPushButton("Remove specks")
        self.speck_button.setToolTip(
            "Erase every isolated vessel piece smaller than the size on the left, in one undoable step "
            "(Ctrl+Z). Unlike the fill tool, it never touches a connected vessel tree."
        )
        row.addWidget(self.speck_button, 1)
        row.addWidget(self.speck_spin)
        lay.addLayout(row)
        self.edit_status = wrapped_label()
        lay.addWidget(self.edit_status)
        self.reapply_button = QPushButton("Re-apply threshold…")
        self.reapply_button.setToolTip(
            "Replace the corrected vessels by probability >= threshold (discards your corrections after asking)."
        )
        lay.addWidget(self.reapply_button)
        self.slider.valueChanged.connect(self._on_threshold)
        self.youden_button.clicked.connect(self.apply_youden)
        self.reapply_button.clicked.connect(self.reapply_threshold)
        self.speck_button.clicked.connect(self.remove_specks)

    def note(self, text: str) -> None:
        """A line under the controls about the corrections."""
        self.edit_status.setText(text)

    @property
    def threshold(self) -> float:
        return float(self.slider.value())

    def set_threshold(self, value: float) -> None:
        """Move the slider (as a user would)."""
        self.slider.setValue(float(value))

    def show_threshold(self, value: float) -> None:
        """Move the slider to a result's own threshold without applying it."""
        self._syncing = True
        self.slider.setValue(float(value))
        self._syncing = False

    def show_result(self, res: ImageResult) -> None:
        """A result is shown (new, or its image chosen): the slider moves to its threshold."""
        if res is self.state.current_result():
            self.show_threshold(res.threshold)

    def _on_threshold(self, value) -> None:
        self.state.threshold = float(value)
        if self._syncing or not self.state.alive:
            return
        res = self.state.current_result()
        if res is None or res.prob is None:
            return
        if res.edited:
            # Never overwrite corrections; the slider is disabled, this is only a safeguard.
            self.sync()
            return
        res.threshold = float(value)
        self._apply_threshold(res)
        self.state.mask_changed.emit()

    def _apply_threshold(self, res: ImageResult) -> None:
        vessels = res.layer(self.viewer, "vessels")
        if vessels is None:
            self.layers.show_all(res)
            return
        vessels.data = res.vessel_mask().astype(np.uint8)
        _roles.set_info(vessels, corrected=None, saved=None)

    def reapply_threshold(self, *_) -> bool:
        """Discard corrections (after confirmation) and threshold the probability again."""
        res = self.state.current_result()
        if res is None:
            return False
        if res.prob is None:
            show_warning("Segment the image first: there is no probability map to threshold yet.")
            return False
        if res.edited and not self.confirm(
            "Discard corrections?",
            f"Re-applying the threshold {self.threshold:.3f} replaces "
            f"'{_roles.vessels_name(res.name)}' and discards your corrections "
            f"({self._edited_pixels(res):,} pixels differ from the thresholded result).",
            ok="Discard corrections",
        ):
            return False
        res.edited = False
        res.resumed = None
        res.threshold = self.threshold
        self._apply_threshold(res)
        self.state.touch(res)
        return True

    def _edited_pixels(self, res: ImageResult) -> int:
        vessels = res.layer(self.viewer, "vessels")
        mask = res.vessel_mask()
        if vessels is None or mask is None:
            return 0
        return int(np.count_nonzero((np.asarray(vessels.data) > 0) != mask))

    def apply_youden(self, *_) -> float | None:
        """Set the ROC-optimal threshold (needs a ground-truth layer)."""
        res = self.state.current_result()
        gt_layer = self.state.current_ground_truth()
        gt = ground_truth_mask(res, gt_layer)
        if res is None or res.prob is None or gt is None:
            show_warning("The ROC-optimal threshold needs a segmented image and its ground truth.")
            return None
        cached = res.roc_cache.get(gt_layer)
        t = cached[1] if cached is not None else comparison.youden_threshold(res.prob, gt, res.fov)
        if t is None:
            show_warning("The ground truth has no vessel (or only vessel) inside the FOV.")
            return None
        self.set_threshold(t)
        return t

    def remove_specks(self, *_) -> bool:
        """Erase vessel pieces smaller than the speck size, as one undoable edit."""
        from napari_dpn.vessel_tools import speck_components

        res = self.state.current_result()
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        if vessels is None:
            show_warning("Segment the image first: there is no vessels layer to clean.")
            return False
        if self._speck_worker is not None:
            return False
        size = int(self.speck_spin.value())
        mask = np.asarray(vessels.data) > 0
        edits = res.edits
        if mask.size <= INLINE_PIXELS:
            self._apply_specks(res, vessels, edits, size, speck_components(mask, size))
            return True
        worker = unstarted_worker(speck_components, mask, size)
        worker.returned.connect(lambda out, r=res, v=vessels, e=edits, s=size: self._apply_specks(r, v, e, s, out))
        worker.finished.connect(self._on_speck_finished)
        self._speck_worker = worker
        self.state.specking = True
        self.speck_button.setEnabled(False)
        self.edit_status.setText("Looking for specks…")
        worker.start()
        return True

    def _on_speck_finished(self) -> None:
        if self.state.alive:
            self._speck_worker = None
            self.state.specking = False
            self.speck_button.setEnabled(self.state.current_result() is not None)

    def _apply_specks(self, res, vessels, edits, size, found) -> None:
        if not self.state.alive or vessels not in self.viewer.layers:
            return
        if res.edits != edits:  # painted meanwhile: the pieces found may have changed
            self._speck_worker = None
            self.state.specking = False
            self.remove_specks()
            return
        pixels, n = found
        indices = np.nonzero(pixels)
        if n == 0:
            self.edit_status.setText(f"No speck smaller than {size} px.")
            return
        with vessels.block_history():  # one Ctrl+Z undoes it all; emits one paint event
            vessels.data_setitem(indices, 0)
        self.edit_status.setText(
            f"Removed {n} speck(s) ({indices[0].size:,} px) smaller than {size} px. Ctrl+Z undoes it."
        )

    def sync(self) -> None:
        """Enable the controls the current result allows, and say whether it is locked."""
        res = self.state.current_result()
        has = res is not None
        has_prob = has and res.prob is not None
        edited = has and res.edited
        self.slider.setEnabled(has_prob and not edited)
        self.youden_button.setEnabled(has_prob and not edited and self.state.current_ground_truth() is not None)
        self.reapply_button.setVisible(edited and has_prob)
        self.speck_button.setEnabled(has and self._speck_worker is None)
        self.edit_status.setStyleSheet("color: #f0a000; font-weight: bold;" if edited else "color: gray;")
        if edited and not has_prob:
            self.edit_status.setText(
                "Your saved annotation — 'Segment vessels' adds a probability map without changing it."
            )
        elif edited:
            self.edit_status.setText("Edited — threshold locked; 'Re-apply threshold' discards edits.")
        elif has:
            self.edit_status.setText("Paint or erase on the vessels layer to correct it.")
        else:
            self.edit_status.setText("")
        self.set_summary("" if not has_prob else f"{res.threshold:.3f}, edited" if edited else f"{res.threshold:.3f}")

"""The Segment widget's threshold and corrections: the slider, ROC-optimal, re-apply, remove specks.

:class:`ThresholdMixin` recomputes only ``(probability >= t) & FOV`` when the slider moves (the
network is not run again), never overwrites corrections without a confirmation, erases specks in
one undoable step (in a worker for a large image), and keeps the controls of the section in step
with the current result (``_sync_controls``).
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_warning

from napari_dpn import comparison

from . import _roles
from ._segment_state import INLINE_PIXELS, _light_worker, _Result


class ThresholdMixin:
    """Threshold, ROC-optimal threshold, re-apply and speck removal (part of :class:`SegmentWidget`).

    Uses the widget's ``viewer``, ``alive``, ``_syncing``, ``_speck_worker``, the controls
    ``slider``, ``youden_button``, ``reapply_button``, ``speck_spin``, ``speck_button``,
    ``save_button``, ``edit_status`` and ``threshold_section``, and ``current_result()``,
    ``current_ground_truth()``, ``_confirm``, ``_show_layers``, ``_loaded_fov_layer``,
    ``_gt_mask`` and ``_update_comparison``.
    """

    @property
    def threshold(self) -> float:
        return float(self.slider.value())

    def set_threshold(self, value: float) -> None:
        """Move the slider (as a user would)."""
        self.slider.setValue(float(value))

    def _on_threshold(self, value) -> None:
        if self._syncing or not self.alive:
            return
        res = self.current_result()
        if res is None or res.prob is None:
            return
        if res.edited:
            # Never overwrite corrections; the slider is disabled, this is only a safeguard.
            self._sync_controls()
            return
        res.threshold = float(value)
        self._apply_threshold(res)
        self._update_comparison()

    def _apply_threshold(self, res: _Result) -> None:
        vessels = res.layer(self.viewer, "vessels")
        mask = res.vessel_mask().astype(np.uint8)
        if vessels is None:
            self._show_layers(res, self._loaded_fov_layer(res.image))
            return
        vessels.data = mask
        _roles.set_info(vessels, corrected=None, saved=None)

    def reapply_threshold(self, *_) -> bool:
        """Discard corrections (after confirmation) and threshold the probability again."""
        res = self.current_result()
        if res is None:
            return False
        if res.prob is None:
            show_warning("Segment the image first: there is no probability map to threshold yet.")
            return False
        if res.edited:
            changed = self._edited_pixels(res)
            if not self._confirm(
                "Discard corrections?",
                f"Re-applying the threshold {self.threshold:.3f} replaces "
                f"'{_roles.vessels_name(res.name)}' and discards your corrections "
                f"({changed:,} pixels differ from the thresholded result).",
                ok="Discard corrections",
            ):
                return False
        res.edited = False
        res.resumed = None
        res.threshold = self.threshold
        self._apply_threshold(res)
        self._sync_controls()
        self._update_comparison()
        return True

    def _edited_pixels(self, res: _Result) -> int:
        vessels = res.layer(self.viewer, "vessels")
        mask = res.vessel_mask()
        if vessels is None or mask is None:
            return 0
        return int(np.count_nonzero((np.asarray(vessels.data) > 0) != mask))

    def apply_youden(self, *_) -> float | None:
        """Set the ROC-optimal threshold (needs a ground-truth layer)."""
        res = self.current_result()
        gt_layer = self.current_ground_truth()
        gt = self._gt_mask(res) if res is not None else None
        if res is None or res.prob is None or gt is None:
            show_warning("The ROC-optimal threshold needs a segmented image and its ground truth.")
            return None
        cached = res.roc_cache.get(id(gt_layer))
        t = cached[1] if cached is not None else comparison.youden_threshold(res.prob, gt, res.fov)
        if t is None:
            show_warning("The ground truth has no vessel (or only vessel) inside the FOV.")
            return None
        self.set_threshold(t)
        return t

    def remove_specks(self, *_) -> bool:
        """Erase vessel pieces smaller than the speck size, as one undoable edit."""
        from napari_dpn.vessel_tools import speck_components

        res = self.current_result()
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
        worker = _light_worker(speck_components, mask, size)
        worker.returned.connect(lambda out, r=res, v=vessels, e=edits, s=size: self._apply_specks(r, v, e, s, out))
        worker.finished.connect(self._on_speck_finished)
        self._speck_worker = worker
        self.speck_button.setEnabled(False)
        self.edit_status.setText("Looking for specks…")
        worker.start()
        return True

    def _on_speck_finished(self) -> None:
        if self.alive:
            self._speck_worker = None
            self.speck_button.setEnabled(self.current_result() is not None)

    def _apply_specks(self, res, vessels, edits, size, found) -> None:
        if not self.alive or vessels not in self.viewer.layers:
            return
        if res.edits != edits:  # painted meanwhile: the pieces found may have changed
            self._speck_worker = None
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

    def _sync_controls(self) -> None:
        res = self.current_result()
        has = res is not None
        has_prob = has and res.prob is not None
        edited = has and res.edited
        self.slider.setEnabled(has_prob and not edited)
        self.youden_button.setEnabled(has_prob and not edited and self.current_ground_truth() is not None)
        self.reapply_button.setVisible(edited and has_prob)
        self.speck_button.setEnabled(has and self._speck_worker is None)
        self.save_button.setEnabled(has)
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
        self.threshold_section.set_summary(
            "" if not has_prob else f"{res.threshold:.3f}, edited" if edited else f"{res.threshold:.3f}"
        )

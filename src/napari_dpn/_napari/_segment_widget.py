"""The "Segment vessels" dock widget.

One button turns a fundus photograph into three layers (``<image>`` is the photograph's layer
name):

- ``"<image> vessel probability"``  image layer, 0..1, grey, additive blending (colours: ``_roles.style``);
- ``"<image> vessels"``             labels layer = probability >= threshold inside the FOV, ready to paint;
- ``"<image> FOV"``                 field-of-view mask (from the dataset, else estimated), hidden.

The threshold slider recomputes only ``(probability >= t) & FOV`` (the network is not run again).
With a ground-truth layer the widget shows Se/Sp/Acc/AUC/F1 inside the FOV and a
``"<image> errors"`` labels layer (1 = false positive, magenta; 2 = false negative, green).  The
ground truth follows the image: switching *Image* picks that image's own annotation (by the
reader's metadata or the name ``"<image> ground truth"``), or the one chosen for it before, or
none.

Corrections are never lost or overwritten silently:

- the first brush stroke, erase, fill or *Remove specks* on the vessels layer *locks* the
  threshold (slider and Youden button disabled, a status line says so); undoing every edit
  unlocks it again;
- only "Re-apply threshold…", after a confirmation, replaces the corrected mask by a fresh
  thresholded one;
- segmenting an edited image again (also when the edits are made while the network runs) keeps
  the corrected layer: the new result goes to the probability layer only, and the status line
  says that "Re-apply threshold…" applies it;
- a photograph whose saved annotation (``<stem>_vessels.png``, :mod:`napari_dpn.annotations`)
  lies beside it, or in the chosen save folder, resumes it as its vessels layer (edited, ready
  to save); so does an annotation opened with the napari-dpn reader.

The GUI thread only moves layers: the float conversion, the network, the FOV, the thresholded
mask, the comparison with a ground truth of a large image and speck removal run in napari
worker threads, and a new result is put into the viewer one layer per event-loop turn.

Errors never raise into napari: they are shown with ``show_error`` and in the status line.

How it is built (in the style of napari-animation's ``_qt/``): one Qt-free
:class:`~._segment_state.SegmentState` holds what the widget knows (the image, the models, one
result per image, its threshold lock and edits, the ground truth, what runs in the background);
four panels read and change it through a few methods and its signals: *Segment*
(``_segment_running.RunPanel``), *Threshold and corrections* (``_segment_threshold``), *Compare
with ground truth* (``_segment_compare``) and *Save* (``_segment_saving``).  ``_segment_layers``
puts a result's layers in the viewer and follows their edits, ``_segment_lists`` keeps the image
and ground-truth boxes in step with the viewer, ``_segment_resume`` resumes saved annotations and
``_segment_job`` is the background job.  This module composes them, starts and stops the run
(the worker's life cycle is ``_dock.DockWidget``'s) and puts its result in the viewer.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QVBoxLayout

from napari_dpn.errors import DPNError

from ._dock import DockWidget
from ._segment_compare import ComparePanel
from ._segment_job import Request, image_data, segment_job
from ._segment_layers import ResultLayers
from ._segment_lists import LayerChoice
from ._segment_resume import Resumer
from ._segment_running import Arrival, RunPanel
from ._segment_saving import SavePanel
from ._segment_state import ImageResult, Outcome, SegmentState, image_path
from ._segment_threshold import ThresholdPanel


class SegmentWidget(DockWidget):
    """Dock widget: pick image/model/device, segment in the background, threshold, correct, save."""

    LAYER_EVENTS = ("inserted", "removed", "moved")
    IGNORED_ROLES = ("probability", "errors")  # neither an image to segment nor a ground truth

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        life = self._life
        self.state = SegmentState(layers=self.viewer.layers, is_alive=lambda: not life.closed)
        self.result_layers = ResultLayers(self.state, self.viewer)
        self._run_serial = 0
        self._start_up()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        state, viewer = self.state, self.viewer
        self.run_panel = RunPanel(state)
        self.threshold_panel = ThresholdPanel(state, viewer, self.result_layers, confirm=self._ask)
        self.compare_panel = ComparePanel(state, viewer, self.result_layers)
        self.save_panel = SavePanel(state, viewer, confirm=self._ask, ask_folder=lambda title: self._ask_folder(title))
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(4)
        for panel in (self.run_panel, self.threshold_panel, self.compare_panel, self.save_panel):
            outer.addWidget(panel)
        outer.addStretch(1)
        self.choice = LayerChoice(state, viewer, self.run_panel.image_combo, self.compare_panel, self._image_layers)
        self.resumer = Resumer(state, viewer, self.result_layers, self._image_layers)
        self.arrival = Arrival(state, viewer, self.result_layers, self.run_panel, done=self._on_arrived)
        self._expose_controls()
        self.image_combo.currentIndexChanged.connect(self.choice.on_image_changed)
        self.model_picker.error.connect(self.run_panel.error)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        state.changed.emit()

    def _ask(self, *args, **kwargs) -> bool:
        return self._confirm(*args, **kwargs)  # looked up when asked: tests replace _confirm

    def _expose_controls(self) -> None:
        """The controls scripts and tests reach on the widget itself (each belongs to a panel)."""
        run, threshold = self.run_panel, self.threshold_panel
        self.segment_section = run
        self.model_picker, self.model_info = run.model_picker, run.model_picker.summary
        self.image_combo, self.device_combo, self.field_combo = run.image_combo, run.device_combo, run.field_combo
        self.clahe_check, self.fusion_check = run.clahe_check, run.fusion_check
        self.run_button, self.cancel_button = run.run_button, run.cancel_button
        self.progress, self.status = run.progress, run.status
        self.threshold_section = threshold
        self.slider, self.youden_button, self.reapply_button = (
            threshold.slider,
            threshold.youden_button,
            threshold.reapply_button,
        )
        self.speck_spin, self.speck_button, self.edit_status = (
            threshold.speck_spin,
            threshold.speck_button,
            threshold.edit_status,
        )
        self.compare_section, self.gt_combo = self.compare_panel, self.compare_panel.gt_combo
        self.metrics_label = self.compare_panel.metrics_label
        self.save_section, self.save_button = self.save_panel, self.save_panel.save_button
        self.folder_label, self.save_status = self.save_panel.folder_label, self.save_panel.save_status

    # ------------------------------------------------------------------ viewer <-> lists

    def _on_layers_changed(self, event=None) -> None:
        if not self.alive:
            return
        kind = getattr(event, "type", "")
        if self.state.putting and kind == "inserted":
            self._connect_layer(event.value)
            return
        if event is not None and kind == "removed":
            self.state.forget(event.value)
        super()._on_layers_changed(event)

    def refresh_layers(self) -> None:
        """Re-list the image and ground-truth layers, keeping the current choices."""
        images = self._image_layers()
        self.choice.refill(images, self._gt_candidates())
        if self.resumer.wants_a_look(images):
            self.resumer.schedule()

    def current_image(self):
        return self.state.current_image()

    def current_result(self) -> ImageResult | None:
        return self.state.current_result()

    def current_ground_truth(self):
        return self.state.current_ground_truth()

    def set_image(self, layer) -> None:
        self.choice.set_image(layer)

    def set_ground_truth(self, layer) -> None:
        self.choice.set_ground_truth(layer)

    def paired_ground_truth(self, image):
        return self.choice.paired_ground_truth(image)

    def show_image(self, image) -> None:
        self.choice.show_image(image)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self.is_running:
            self.refresh_models_soon()

    # ------------------------------------------------------------------ what the panels do

    @property
    def threshold(self) -> float:
        return self.threshold_panel.threshold

    def set_threshold(self, value: float) -> None:
        self.threshold_panel.set_threshold(value)

    def reapply_threshold(self, *_) -> bool:
        return self.threshold_panel.reapply_threshold()

    def apply_youden(self, *_) -> float | None:
        return self.threshold_panel.apply_youden()

    def remove_specks(self, *_) -> bool:
        return self.threshold_panel.remove_specks()

    def save_annotation(self, *_):
        return self.save_panel.save_annotation()

    def set_save_folder(self, folder) -> None:
        self.save_panel.set_save_folder(folder)

    def choose_save_folder(self, *_) -> None:
        self.save_panel.choose_save_folder()

    def resume_annotation(self, image, files: bool = True) -> bool:
        return self.resumer.resume_annotation(image, files)

    @property
    def metrics(self) -> dict | None:
        res = self.current_result()
        return res.metrics if res is not None else None

    @property
    def comparing(self) -> bool:
        """True while a comparison with the ground truth is computed in the background."""
        return self.state.comparing

    @property
    def busy(self) -> bool:
        """True while anything runs in the background (segmenting, comparing, speck removal)."""
        return self.state.busy

    image_data = staticmethod(image_data)
    image_path = staticmethod(image_path)

    @staticmethod
    def image_rgb(layer) -> np.ndarray:
        """The layer's pixels as core RGB float (for scripts; the widget converts in its worker)."""
        from napari_dpn.image_io import as_rgb

        return as_rgb(image_data(layer))

    # ------------------------------------------------------------------ running

    @property
    def is_running(self) -> bool:
        return self.state.running

    def run(self, *_, layer=None):
        """Segment the chosen image layer (or ``layer``) in a background worker.

        Returns the worker (or None if nothing was started).  Corrections on the image's vessels
        layer are never replaced: with an edited layer the new result goes to the probability
        layer only.
        """
        if self.is_running or not self.alive:
            return None
        layer = layer if layer is not None else self.current_image()
        if layer is None and len(self.viewer.layers):
            layer = self.viewer.layers.selection.active
        try:
            data = image_data(layer)
        except DPNError as exc:
            self.run_panel.error(str(exc))
            return None
        card = self.current_card()
        model = self.model_combo.currentData()
        if card is None or not isinstance(model, tuple):
            self.run_panel.error("No model chosen: install the shipped weights or use Browse… to pick a weights file.")
            return None
        panel = self.run_panel
        fov_layer = self.result_layers.loaded_fov_layer(layer)
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else None
        device = panel.device_combo.currentText() or "auto"
        self._run_serial += 1
        field, fused = panel.field_combo.currentData(), panel.fusion_check.isChecked()
        req = Request(
            self._run_serial, layer, fov_layer, model[1], device, panel.clahe_check.isChecked(), field, fused, data, fov
        )
        worker = self._start_worker(
            segment_job,
            f"segmenting '{layer.name}' with {card.name}",
            req,
            self.state.models,
            panel.bridge.progress.emit,
            returned=self._on_returned,
            finished=self._on_finished,
        )
        panel.set_running(True)
        panel.status.setText(f"Segmenting '{layer.name}' with {card.name} on {device}…")
        worker.start()
        return worker

    def cancel(self, *_) -> None:
        """Stop the run: the network stops within one layer (``inference.predict``'s
        ``should_stop``); the last result on screen stays as it was."""
        if self._worker is not None:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("Stopping… the result on screen stays as it was.")

    def _stop_running(self) -> None:
        self.run_panel.set_running(False)
        self.state.changed.emit()

    def _on_finished(self) -> None:
        if not self.alive:
            return
        self._worker = None
        if not self.arrival.active:
            self._stop_running()

    def _on_arrived(self) -> None:
        if self._worker is None:
            self._stop_running()

    def _on_returned(self, out: Outcome) -> None:
        if not self.alive or out.run != self._run_serial:
            return
        if out.cancelled:
            self.status.setText("Cancelled; nothing was changed.")
            return
        if out.error:
            self.run_panel.error(out.error)
            return
        if out.layer not in self.viewer.layers:
            self.status.setText("The image layer was closed while segmenting.")
            return
        self.arrival.start(out)

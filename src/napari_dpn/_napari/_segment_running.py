"""The Segment widget's "Segment" panel: image, model, device and scale choices, Run/Cancel, progress.

:class:`RunPanel` holds the choices of a run and shows how it goes: the progress bar with its
ETA (fed from the worker thread through a queued Qt signal, :class:`Bridge`), the status line
(each result's model, time, device and scale: ``state.run_info``) and errors.  Starting and
stopping the run is the widget's (it owns the worker's life cycle, ``_dock.DockWidget``).
"""

from __future__ import annotations

import time
from pathlib import Path

from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QProgressBar, QPushButton

from napari_dpn.scale import COMMON_FIELD_ANGLES, card_fusion
from napari_dpn.text import duration

from ._dock import Section, wrapped_label
from ._model_picker import DeviceCombo, ModelPicker
from ._segment_state import ImageResult, SegmentState

CLAHE_TIP = (
    "Contrast equalisation of the green channel before the network; preset from the model card "
    "(the model was trained with it or without it)."
)
FUSION_TIP = (
    "Also run the network at 1.5x the working scale and average the two maps: more of the "
    "thin vessels, for about 3x the time (skipped for very large photographs); preset from "
    "the model card (on for models trained across scales, such as dpn-universal). With the "
    "field of view 'estimate (45° if unknown)' a pass at 1/1.5x joins them: the 45 degree guess may be too fine."
)
FIELD_TIP = (
    "The camera's field of view. The photograph is resampled to the scale the model was "
    "trained at (pixels per degree of retina = FOV diameter / this angle) and the map back "
    "to its own pixels. Unknown: 45° is assumed for a round field of view; without one "
    "(ultra-widefield) the photograph is used at its own scale."
)


class Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(float)


class RunPanel(Section):
    """What to segment and with what, and how the run goes."""

    def __init__(self, state: SegmentState):
        super().__init__("Segment")
        self.state = state
        self.started = 0.0  # when the current run started (time.monotonic)
        self.bridge = Bridge()
        self._build()
        self.bridge.progress.connect(self.on_progress)
        self.model_picker.changed.connect(self.on_model_changed)
        state.run_info.connect(self.show_run_info)

    def _build(self) -> None:
        form = QFormLayout(self.body)
        form.setContentsMargins(4, 2, 0, 2)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The fundus photograph to segment (colour or greyscale).")
        self.image_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.image_combo.setMinimumContentsLength(8)
        form.addRow("Image", self.image_combo)
        self.model_picker = ModelPicker(
            refresh_tip="Re-read the model list (picks up newly fine-tuned models).", summary=True
        )
        form.addRow("Model", self.model_picker)
        form.addRow("", self.model_picker.summary)
        row = QHBoxLayout()
        self.device_combo = DeviceCombo("Where the network runs; 'auto' picks a GPU when present.")
        self.clahe_check = QCheckBox("CLAHE")
        self.clahe_check.setToolTip(CLAHE_TIP)
        self.fusion_check = QCheckBox("Two scales")
        self.fusion_check.setToolTip(FUSION_TIP)
        row.addWidget(self.device_combo, 1)
        row.addWidget(self.clahe_check)
        row.addWidget(self.fusion_check)
        form.addRow("Device", row)
        self.field_combo = QComboBox()
        self.field_combo.addItem("estimate (45° if unknown)", None)
        for angle in COMMON_FIELD_ANGLES:
            self.field_combo.addItem(f"{angle:g}°", float(angle))
        self.field_combo.addItem("native scale (no resampling)", "native")
        self.field_combo.setToolTip(FIELD_TIP)
        form.addRow("Field of view", self.field_combo)
        row = QHBoxLayout()
        self.run_button = QPushButton("Segment vessels")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        form.addRow(self.progress)
        self.status = wrapped_label("Pick a photograph and press 'Segment vessels'.")
        form.addRow(self.status)

    def on_model_changed(self, card) -> None:
        """Preset CLAHE and the two-scale fusion from the chosen model's card."""
        if card is not None:
            self.clahe_check.setChecked(bool((card.input or {}).get("clahe")))
            self.fusion_check.setChecked(card_fusion(card) is not None)

    def error(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def set_running(self, running: bool) -> None:
        """Lock the choices while a run goes on; the bar is busy until a tiled run reports."""
        self.state.running = running
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.progress.setVisible(running)
        # Busy until a tiled run reports its first tile; a single pass has nothing to report.
        self.progress.setRange(0, 0)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        for w in (
            self.model_picker.combo,
            self.device_combo,
            self.clahe_check,
            self.fusion_check,
            self.field_combo,
            self.image_combo,
            self.model_picker.refresh_button,
        ):
            w.setEnabled(not running)
        if running:
            self.started = time.monotonic()

    def on_progress(self, fraction: float) -> None:
        if not self.state.alive or not self.state.running:
            return
        fraction = max(0.0, min(1.0, float(fraction)))
        if fraction >= 1.0:
            return  # the pass is over; the bar stays busy while the result is put in place
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 100)
        self.progress.setValue(int(round(100 * fraction)))
        if fraction > 0:
            elapsed = time.monotonic() - self.started
            self.progress.setFormat(f"%p% · ETA {duration(elapsed * (1 - fraction) / fraction)}")

    def show_run_info(self, res: ImageResult) -> None:
        """The status line tells what made the result (or where it was resumed from)."""
        if res.prob is None:
            self.status.setText(
                f"'{res.name}': resumed from {Path(res.resumed).name}; "
                "'Segment vessels' adds a probability map without touching it."
                if res.resumed
                else f"'{res.name}': not segmented yet."
            )
            return
        text = f"'{res.name}': {res.model_label}, {res.seconds:.2f} s on {res.device}."
        if res.scale:
            text += f" Scale: {res.scale}."
        if res.note:
            text += f" Note: {res.note}"
        self.status.setText(text)

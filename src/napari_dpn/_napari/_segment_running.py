"""The Segment widget's "Segment" panel: image, model, device and scale choices, Run/Cancel, progress.

:class:`RunPanel` holds the choices of a run and shows how it goes: the progress bar with its
ETA (fed from the worker thread through a queued Qt signal, :class:`Bridge`), the status line
(each result's model, time, device and scale: ``state.run_info``) and errors.  Starting and
stopping the run is the widget's (it owns the worker's life cycle, ``_dock.DockWidget``);
:class:`Arrival` puts a finished run's result into the viewer one layer per event-loop turn.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QProgressBar, QPushButton

from napari_dpn.messages import sentence
from napari_dpn.scale import card_fusion
from napari_dpn.text import duration

from . import _roles
from ._dock import Section, wrapped_label
from ._model_picker import DeviceCombo, FieldCombo, ModelPicker
from ._segment_layers import ResultLayers
from ._segment_state import STEP_MS, ImageResult, Outcome, SegmentState

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
        self.field_combo = FieldCombo(FIELD_TIP)
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


class Arrival:
    """Puts a new result into the viewer one layer per event-loop turn: adding a layer costs
    napari 0.1–0.3 s, three at once stalled the viewer for over half a second.  Corrections
    already made on the image's vessels layer are kept: the new result then goes to the
    probability layer only."""

    def __init__(self, state: SegmentState, viewer, layers: ResultLayers, panel: RunPanel, done):
        self.state = state
        self.viewer = viewer
        self.layers = layers
        self.panel = panel
        self.done = done  # () -> None: called once the result is in place
        self.steps: deque | None = None  # steps still to put a new result in the viewer

    @property
    def active(self) -> bool:
        return self.steps is not None

    def start(self, out: Outcome) -> None:
        """Schedule the layers of a finished run's outcome, one per event-loop turn."""
        res, keep = self.take(out)
        fov_layer = out.fov_layer if out.fov_layer in self.viewer.layers else None
        put = self.layers
        steps = [lambda: put.put_probability(res), lambda: put.put_fov(res, fov_layer)]
        if not keep:
            steps.append(lambda: put.put_vessels(res, res.vessel_mask().astype(np.uint8)))
        steps.append(lambda: self._arrived(res, keep))
        self.steps = deque(steps)
        QTimer.singleShot(STEP_MS, self._next)

    def take(self, out: Outcome) -> tuple[ImageResult, bool]:
        """The image's result, with the new outcome in it; True when its corrections stay
        (made before the run or while it ran: the new result goes beside them)."""
        layer, pred = out.layer, out.prediction
        old = self.state.results.get(layer)
        keep = old is not None and old.edited and old.layer(self.viewer, "vessels") is not None
        if keep:
            res = old
            res.prob, res.threshold, res.card = out.prob, out.threshold, out.card
            if res.fov is None or res.layer(self.viewer, "fov") is None:
                res.fov = out.fov
        else:
            layers = dict(old.layers) if old else {}
            res = ImageResult(
                image=layer, name=layer.name, prob=out.prob, fov=out.fov, threshold=out.threshold, layers=layers
            )
            self.state.results[layer] = res
        res.model_label, res.device = out.model_label, str(pred.device)
        res.seconds, res.note = float(pred.seconds), getattr(pred, "note", None) or getattr(out.scale, "note", None)
        res.scale = out.scale.describe() if out.scale is not None else ""
        res.roc_cache = {}
        res.mask_cache = (res.prob, res.threshold, out.mask) if res.fov is out.fov else None
        return res, keep

    def _next(self) -> None:
        """Put a new result into the viewer one layer per event-loop turn: adding a layer costs
        napari 0.1–0.3 s, three at once stalled the viewer for over half a second."""
        if not self.state.alive or self.steps is None:
            return
        step = self.steps.popleft()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - never leave the widget half-busy
            self.steps = None
            self.panel.error(sentence(exc, doing="Showing the result"))
        if self.steps:
            QTimer.singleShot(STEP_MS, self._next)
            return
        self.steps = None
        self.done()

    def _arrived(self, res: ImageResult, kept: bool) -> None:
        if res.image not in self.viewer.layers:
            self.panel.status.setText("The image layer was closed while segmenting.")
            return
        self.state.run_info.emit(res)
        if kept:
            message = (
                f"Your corrections in '{_roles.vessels_name(res.name)}' were kept; the new "
                f"result is in '{_roles.probability_name(res.name)}'. 'Re-apply "
                "threshold…' replaces the corrections by it."
            )
            self.panel.status.setText(self.panel.status.text() + " " + message)
            show_info(message)
        if res.note:
            show_warning(res.note)
        self.state.touch()

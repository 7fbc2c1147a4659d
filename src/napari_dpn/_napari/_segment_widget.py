"""The "Segment vessels" dock widget.

One button turns a fundus photograph into three layers (``<image>`` is the photograph's layer
name):

- ``"<image> vessel probability"``  image layer, 0..1, magma, additive blending;
- ``"<image> vessels"``             labels layer = probability >= threshold inside the FOV, ready to paint;
- ``"<image> FOV"``                 field-of-view mask (from the dataset, else estimated), hidden.

The threshold slider recomputes only ``(probability >= t) & FOV`` (the network is not run again).
With a ground-truth layer the widget shows Se/Sp/Acc/AUC/F1 inside the FOV and a
``"<image> errors"`` labels layer (1 = false positive, magenta; 2 = false negative, green).

Corrections: the first brush stroke, erase or fill on the vessels layer *locks* the threshold
(slider and Youden button are disabled, a status line says so).  Only "Re-apply threshold…",
after a confirmation, replaces the corrected mask by a fresh thresholded one.  Running the
segmentation again on an edited image asks the same question first.

Errors never raise into napari: they are shown with ``show_error`` and in the status line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
)
from superqt import QLabeledDoubleSlider

from napari_dpn.errors import DPNError, InputError

from . import _analysis, _roles
from ._dock import DockWidget, wrapped_label
from ._model_picker import DeviceCombo, ModelPicker

NO_GT = "(none)"
VESSEL_COLOUR = "#00e5ff"
FP_COLOUR = "#ff00ff"
FN_COLOUR = "#39ff14"
BRUSH_SIZE = 3
NO_IMAGE_MESSAGE = ("Open a fundus photograph first (File > Open, or File > Open Sample > "
                    "DPN retinal vessels).")


# --------------------------------------------------------------------------- state


@dataclass
class _Outcome:
    """What the background job hands back (it never raises)."""

    prediction: object = None
    fov: np.ndarray | None = None
    card: object = None
    model_label: str = ""
    error: str | None = None
    cancelled: bool = False


@dataclass
class _Result:
    """Everything the widget keeps for one segmented image layer."""

    image: Image
    name: str
    prob: np.ndarray
    fov: np.ndarray
    threshold: float
    card: object
    model_label: str
    device: str
    seconds: float
    note: str | None = None
    layers: dict = field(default_factory=dict)  # "probability", "vessels", "fov", "errors"
    edited: bool = False
    auc_cache: dict = field(default_factory=dict)
    metrics: dict | None = None

    def vessel_mask(self) -> np.ndarray:
        """What the threshold gives: probability >= threshold inside the FOV.

        Outside the FOV there is no retina to annotate, and a network trained with an FOV-only loss
        (ours) is free to answer anything there (a false vessel along the photograph's edge, say).
        """
        return (self.prob >= self.threshold) & self.fov

    def layer(self, viewer, kind):
        lyr = self.layers.get(kind)
        return lyr if lyr is not None and lyr in viewer.layers else None


class _Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(float)


def _label_colormap(colours: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colours})


# --------------------------------------------------------------------------- widget


class SegmentWidget(DockWidget):
    """Dock widget: pick image/model/device, segment in the background, threshold, correct, save."""

    LAYER_EVENTS = ("inserted", "removed", "moved")

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._results: dict[int, _Result] = {}
        self._models: dict[tuple, object] = {}    # (path, mtime) -> LoadedModel, worker-side
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._save_folder: Path | None = None
        self._syncing = False
        self._start_up()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)

        box = QGroupBox("Segment")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The fundus photograph to segment (colour or greyscale).")
        form.addRow("Image", self.image_combo)

        self.model_picker = ModelPicker(
            refresh_tip="Re-read the model list (picks up newly fine-tuned models).", summary=True)
        self.model_info = self.model_picker.summary
        form.addRow("Model", self.model_picker)
        form.addRow("", self.model_info)

        self.device_combo = DeviceCombo("Where the network runs; 'auto' picks a GPU when present.")
        form.addRow("Device", self.device_combo)
        self.clahe_check = QCheckBox("CLAHE on the green channel")
        self.clahe_check.setToolTip("Contrast equalisation before the network; preset from the "
                                    "model card (the model was trained with it or without it).")
        form.addRow("Preprocess", self.clahe_check)

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
        outer.addWidget(box)

        box = QGroupBox("Threshold")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.slider = QLabeledDoubleSlider(Qt.Horizontal)
        self.slider.setRange(0.0, 1.0)
        self.slider.setDecimals(3)
        self.slider.setSingleStep(0.01)
        self.slider.setValue(0.5)
        self.slider.setToolTip("Vessel = probability >= threshold, inside the FOV. Starts at the "
                               "model card's recommended value.")
        row.addWidget(self.slider, 1)
        self.youden_button = QPushButton("ROC-optimal")
        self.youden_button.setToolTip("Set the threshold that maximises Se + Sp - 1 (Youden) "
                                      "against the ground truth.")
        row.addWidget(self.youden_button)
        lay.addLayout(row)
        self.edit_status = wrapped_label()
        lay.addWidget(self.edit_status)
        self.reapply_button = QPushButton("Re-apply threshold…")
        self.reapply_button.setToolTip("Replace the corrected vessels by probability >= threshold "
                                       "(discards your corrections after asking).")
        lay.addWidget(self.reapply_button)
        outer.addWidget(box)

        box = QGroupBox("Compare with ground truth")
        form = QFormLayout(box)
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip("A manual annotation (labels layer) of the same image.")
        form.addRow("Ground truth", self.gt_combo)
        self.metrics_label = wrapped_label("No ground truth chosen.", selectable=True)
        form.addRow(self.metrics_label)
        outer.addWidget(box)

        box = QGroupBox("Save")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.folder_label = wrapped_label("Folder: next to the image")
        self.folder_button = QToolButton()
        self.folder_button.setText("…")
        self.folder_button.setToolTip("Choose the folder for saved annotations.")
        row.addWidget(self.folder_label, 1)
        row.addWidget(self.folder_button)
        lay.addLayout(row)
        self.save_button = QPushButton("Save annotation")
        self.save_button.setToolTip("Write '<image>_vessels.png' and '<image>_fov.png'.")
        lay.addWidget(self.save_button)
        self.save_status = wrapped_label()
        lay.addWidget(self.save_status)
        outer.addWidget(box)
        outer.addStretch(1)

        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.model_picker.changed.connect(self._on_model_changed)
        self.model_picker.error.connect(self._error)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.slider.valueChanged.connect(self._on_threshold)
        self.youden_button.clicked.connect(self.apply_youden)
        self.reapply_button.clicked.connect(self.reapply_threshold)
        self.gt_combo.currentIndexChanged.connect(self._on_gt_changed)
        self.folder_button.clicked.connect(self.choose_save_folder)
        self.save_button.clicked.connect(self.save_annotation)
        self._sync_controls()

    # ------------------------------------------------------------------ viewer <-> combos

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "removed":
            self._results.pop(id(event.value), None)
            for res in self._results.values():
                if res.layers.get("vessels") is event.value:
                    res.edited = False  # the corrections went with the layer; unlock
        super()._on_layers_changed(event)

    @staticmethod
    def _fill_combo(combo: QComboBox, layers, keep, first: str | None = None) -> None:
        combo.blockSignals(True)
        combo.clear()
        if first is not None:
            combo.addItem(first, None)
        for lyr in layers:
            combo.addItem(lyr.name, lyr)
        idx = next((i for i in range(combo.count()) if combo.itemData(i) is keep), -1)
        combo.setCurrentIndex(idx if idx >= 0 else 0 if combo.count() else -1)
        combo.blockSignals(False)

    def refresh_layers(self) -> None:
        """Re-list the image and ground-truth layers, keeping the current choices."""
        old_image = self.current_image()
        images = self._image_layers()
        keep = old_image
        if keep is None or keep not in images:
            active = self.viewer.layers.selection.active
            keep = active if active in images else (images[-1] if images else None)
        self._fill_combo(self.image_combo, images, keep)
        old_gt = self.gt_combo.currentData()
        old_candidates = {id(self.gt_combo.itemData(i)) for i in range(self.gt_combo.count())}
        candidates = self._gt_candidates()
        self._fill_combo(self.gt_combo, candidates, old_gt, first=NO_GT)
        if self.current_image() is not old_image:
            self._on_image_changed()
        elif old_gt is not None and self.gt_combo.currentData() is not old_gt:
            self._on_gt_changed()
        elif any(id(lyr) not in old_candidates for lyr in candidates):
            self._autoselect_gt()  # a new annotation layer appeared (e.g. a dataset folder)

    def current_image(self):
        data = self.image_combo.currentData() if self.image_combo.count() else None
        return data if data is not None and data in self.viewer.layers else None

    def current_result(self) -> _Result | None:
        image = self.current_image()
        return self._results.get(id(image)) if image is not None else None

    def current_ground_truth(self):
        lyr = self.gt_combo.currentData()
        return lyr if lyr is not None and lyr in self.viewer.layers else None

    def set_image(self, layer) -> None:
        idx = next(i for i in range(self.image_combo.count())
                   if self.image_combo.itemData(i) is layer)
        self.image_combo.setCurrentIndex(idx)

    def set_ground_truth(self, layer) -> None:
        idx = next(i for i in range(self.gt_combo.count()) if self.gt_combo.itemData(i) is layer)
        self.gt_combo.setCurrentIndex(idx)

    def _autoselect_gt(self) -> None:
        """Pick the image's own ground truth (from a dataset folder) when none is chosen."""
        image = self.current_image()
        if image is None or self.gt_combo.currentData() is not None:
            return
        for i in range(self.gt_combo.count()):
            lyr = self.gt_combo.itemData(i)
            if lyr is None:
                continue
            info = _roles.info_of(lyr)
            if (info.get("role") == "ground_truth" and info.get("image") == image.name) or \
                    lyr.name == _roles.ground_truth_name(image.name):
                self.gt_combo.setCurrentIndex(i)
                return

    def _on_image_changed(self, *_) -> None:
        self._autoselect_gt()
        res = self.current_result()
        if res is not None:
            self._syncing = True
            self.slider.setValue(res.threshold)
            self._syncing = False
            self._show_run_info(res)
        self._sync_controls()
        self._update_comparison()

    # ------------------------------------------------------------------ models and devices

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.refresh_models()

    def _on_model_changed(self, card) -> None:
        if card is not None:
            self.clahe_check.setChecked(bool((card.input or {}).get("clahe")))

    # ------------------------------------------------------------------ running

    def _error(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    @staticmethod
    def image_rgb(layer) -> np.ndarray:
        """The layer's pixels as core RGB float, or InputError with a sentence for the user."""
        from napari_dpn.image_io import as_rgb

        if layer is None:
            raise InputError(NO_IMAGE_MESSAGE)
        if isinstance(layer, Labels):
            raise InputError(f"'{layer.name}' is a labels layer (a mask); choose the fundus "
                             "photograph, an image layer, to segment.")
        if not isinstance(layer, Image):
            raise InputError(f"'{layer.name}' is a {type(layer).__name__.lower()} layer; "
                             "choose an image layer to segment.")
        data = layer.data[0] if layer.multiscale else layer.data
        data = np.asarray(data)
        if data.ndim - (1 if layer.rgb else 0) != 2:
            raise InputError(f"'{layer.name}' is a {data.ndim}-D stack {tuple(data.shape)}; "
                             "DPN segments one 2-D photograph at a time.")
        return as_rgb(data)

    def run(self, *_, layer=None):
        """Segment the chosen image layer (or ``layer``) in a background worker.

        Returns the worker (or None if nothing was started).
        """
        if self._worker is not None:
            return None
        layer = layer if layer is not None else self.current_image()
        if layer is None and len(self.viewer.layers):
            layer = self.viewer.layers.selection.active
        try:
            rgb = self.image_rgb(layer)
        except DPNError as exc:
            self._error(str(exc))
            return None
        card = self.current_card()
        data = self.model_combo.currentData()
        if card is None or not isinstance(data, tuple):
            self._error("No model chosen: install the shipped weights or use Browse… to pick "
                        "a weights file.")
            return None
        old = self._results.get(id(layer))
        if old is not None and old.edited and not self._confirm(
                "Discard corrections?",
                f"You corrected '{_roles.vessels_name(old.name)}'. Segmenting again replaces "
                "the corrections with a new result.", ok="Segment again"):
            self.status.setText("Not segmented again: your corrections are kept.")
            return None
        fov_layer = self._loaded_fov_layer(layer)
        need_fov = fov_layer is None
        device = self.device_combo.currentText() or "auto"
        clahe = self.clahe_check.isChecked()
        spec = data[1]
        self._cancel.clear()

        from napari.qt.threading import create_worker

        worker = create_worker(self._job, spec, device, clahe, rgb, need_fov,
                               _start_thread=False)
        worker.returned.connect(lambda out, lyr=layer, fl=fov_layer:
                                self._on_returned(out, lyr, fl))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._set_running(True)
        self.status.setText(f"Segmenting '{layer.name}' with {card.name} on {device}…")
        worker.start()
        return worker

    def cancel(self) -> None:
        if self._worker is not None:
            self._cancel.set()
            self.status.setText("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.progress.setVisible(running)
        self.progress.setValue(0)
        for w in (self.model_combo, self.device_combo, self.clahe_check, self.image_combo,
                  self.refresh_button):
            w.setEnabled(not running)

    def _on_progress(self, fraction: float) -> None:
        self.progress.setValue(int(round(100 * max(0.0, min(1.0, fraction)))))

    def _load(self, spec: str):
        """Load (and cache) a model; runs in the worker thread."""
        from napari_dpn.models import load_model, resolve_model_path

        path = resolve_model_path(spec)
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._models:
            self._models[key] = load_model(path, device="cpu")
        return self._models[key]

    def _job(self, spec, device, clahe, rgb, need_fov) -> _Outcome:
        """Background work: load, predict, estimate the FOV.  Never raises."""
        try:
            from napari_dpn.inference import predict

            loaded = self._load(spec)
            card = loaded.card
            if bool(card.input.get("clahe")) != clahe:
                card = dataclasses.replace(card, input={**card.input, "clahe": clahe})
                loaded = dataclasses.replace(loaded, card=card)
            if self._cancel.is_set():
                return _Outcome(cancelled=True)
            pred = predict(loaded, rgb, device=device, progress=self._bridge.progress.emit,
                           should_stop=self._cancel.is_set)
            if self._cancel.is_set():
                return _Outcome(cancelled=True)
            fov = None
            if need_fov:
                from napari_dpn.fov import estimate_fov

                fov = np.asarray(estimate_fov(rgb), bool)
            return _Outcome(prediction=pred, fov=fov, card=card, model_label=card.name)
        except DPNError as exc:
            if self._cancel.is_set():
                return _Outcome(cancelled=True)
            return _Outcome(error=str(exc))
        except MemoryError:
            return _Outcome(error=f"Out of memory on {device}: choose 'cpu' as device or a "
                                  "smaller image.")
        except Exception as exc:  # noqa: BLE001 - shown as a notification, never a traceback
            if self._cancel.is_set():
                return _Outcome(cancelled=True)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if "out of memory" in text.lower():
                return _Outcome(error=f"Out of memory on {device}: choose 'cpu' as device.")
            return _Outcome(error=f"Segmentation failed ({type(exc).__name__}: {text}).")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        self._sync_controls()

    def _on_returned(self, out: _Outcome, layer, fov_layer) -> None:
        if out.cancelled:
            self.status.setText("Cancelled; nothing was changed.")
            return
        if out.error:
            self._error(out.error)
            return
        if layer not in self.viewer.layers:
            self.status.setText("The image layer was closed while segmenting.")
            return
        pred = out.prediction
        prob = np.asarray(pred.probability, np.float32)
        fov = out.fov if fov_layer is None else np.asarray(fov_layer.data) > 0
        old = self._results.get(id(layer))
        res = _Result(image=layer, name=layer.name, prob=prob, fov=fov,
                      threshold=float(getattr(out.card, "threshold", 0.5)), card=out.card,
                      model_label=out.model_label, device=str(pred.device),
                      seconds=float(pred.seconds), note=getattr(pred, "note", None),
                      layers=dict(old.layers) if old else {})
        self._results[id(layer)] = res
        self._show_layers(res, fov_layer)
        self._syncing = True
        self.slider.setValue(res.threshold)
        self._syncing = False
        self._apply_threshold(res)
        self._show_run_info(res)
        if res.note:
            show_warning(res.note)
        self._sync_controls()
        self._update_comparison()

    def _show_run_info(self, res: _Result) -> None:
        text = (f"'{res.name}': {res.model_label}, {res.seconds:.2f} s on {res.device}.")
        if res.note:
            text += f" Note: {res.note}"
        self.status.setText(text)

    # ------------------------------------------------------------------ layers

    def _loaded_fov_layer(self, image):
        """A FOV mask opened from a file for this image (dataset folder), if any."""
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if (isinstance(lyr, Labels) and info.get("role") == "fov"
                    and info.get("source") == "file"
                    and (info.get("image") == image.name or lyr.name == _roles.fov_name(image.name))
                    and tuple(lyr.data.shape) == tuple(self._image_shape(image))):
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
            add = self.viewer.add_labels if layer_type == "labels" else self.viewer.add_image
            lyr = add(data, name=name, **kwargs)
            lyr.translate = res.image.translate[-2:]
            lyr.scale = res.image.scale[-2:]
        res.layers[kind] = lyr
        return lyr

    def _show_layers(self, res: _Result, fov_layer) -> None:
        self._put(res, "probability", _roles.probability_name(res.name), res.prob, "image",
                  colormap="magma", contrast_limits=(0.0, 1.0), opacity=0.7, blending="additive")
        if fov_layer is not None:
            res.layers["fov"] = fov_layer
        else:
            self._put(res, "fov", _roles.fov_name(res.name), res.fov.astype(np.uint8), "labels",
                      visible=False, opacity=0.3,
                      metadata=_roles.meta("fov", image=res.name, source="estimated"))
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None:
            self._disconnect_paint(vessels)
        mask = res.vessel_mask().astype(np.uint8)
        vessels = self._put(res, "vessels", _roles.vessels_name(res.name), mask, "labels",
                            opacity=0.8, colormap=_label_colormap({1: VESSEL_COLOUR}))
        vessels.events.paint.connect(self._on_paint)
        vessels.selected_label = 1
        vessels.brush_size = BRUSH_SIZE
        vessels.mode = "paint"
        self.viewer.layers.selection.active = vessels

    def _disconnect_paint(self, layer) -> None:
        try:
            layer.events.paint.disconnect(self._on_paint)
        except (TypeError, ValueError, RuntimeError):
            pass

    def _result_of_vessels(self, layer) -> _Result | None:
        for res in self._results.values():
            if res.layers.get("vessels") is layer:
                return res
        return None

    def _on_paint(self, event=None) -> None:
        source = getattr(event, "source", None)
        res = self._result_of_vessels(source) if source is not None else self.current_result()
        if res is None:
            return
        res.edited = True
        if res is self.current_result():
            self._sync_controls()
            self._update_comparison()

    # ------------------------------------------------------------------ threshold

    @property
    def threshold(self) -> float:
        return float(self.slider.value())

    def set_threshold(self, value: float) -> None:
        """Move the slider (as a user would)."""
        self.slider.setValue(float(value))

    def _on_threshold(self, value) -> None:
        if self._syncing:
            return
        res = self.current_result()
        if res is None:
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

    def reapply_threshold(self, *_) -> bool:
        """Discard corrections (after confirmation) and threshold the probability again."""
        res = self.current_result()
        if res is None:
            return False
        if res.edited:
            changed = self._edited_pixels(res)
            if not self._confirm(
                    "Discard corrections?",
                    f"Re-applying the threshold {self.threshold:.3f} replaces "
                    f"'{_roles.vessels_name(res.name)}' and discards your corrections "
                    f"({changed:,} pixels differ from the thresholded result).",
                    ok="Discard corrections"):
                return False
        res.edited = False
        res.threshold = self.threshold
        self._apply_threshold(res)
        self._sync_controls()
        self._update_comparison()
        return True

    def _edited_pixels(self, res: _Result) -> int:
        vessels = res.layer(self.viewer, "vessels")
        if vessels is None:
            return 0
        return int(np.count_nonzero((np.asarray(vessels.data) > 0) != res.vessel_mask()))

    def apply_youden(self, *_) -> float | None:
        """Set the ROC-optimal threshold (needs a ground-truth layer)."""
        res = self.current_result()
        gt = self._gt_mask(res) if res is not None else None
        if res is None or gt is None:
            show_warning("The ROC-optimal threshold needs a segmented image and its ground truth.")
            return None
        t = _analysis.youden_threshold(res.prob, gt, res.fov)
        if t is None:
            show_warning("The ground truth has no vessel (or only vessel) inside the FOV.")
            return None
        self.set_threshold(t)
        return t

    def _sync_controls(self) -> None:
        res = self.current_result()
        has = res is not None
        edited = has and res.edited
        self.slider.setEnabled(has and not edited)
        self.youden_button.setEnabled(has and not edited and self.current_ground_truth() is not None)
        self.reapply_button.setVisible(edited)
        self.save_button.setEnabled(has)
        self.edit_status.setStyleSheet("color: #f0a000; font-weight: bold;" if edited
                                       else "color: gray;")
        if edited:
            self.edit_status.setText(
                "Edited — threshold locked; 'Re-apply threshold' discards edits.")
        elif has:
            self.edit_status.setText("Paint, erase or fill on the vessels layer to correct it.")
        else:
            self.edit_status.setText("")

    # ------------------------------------------------------------------ ground truth

    def _on_gt_changed(self, *_) -> None:
        self._sync_controls()
        self._update_comparison()

    def _gt_mask(self, res: _Result | None):
        gt = self.current_ground_truth()
        if res is None or gt is None:
            return None
        data = np.asarray(gt.data[0] if getattr(gt, "multiscale", False) else gt.data)
        if data.shape != res.prob.shape:
            return None
        return data > 0

    def _update_comparison(self) -> None:
        res = self.current_result()
        gt_layer = self.current_ground_truth()
        if res is None:
            self.metrics_label.setText("Segment the image to compare it with a ground truth."
                                       if gt_layer is not None else "No ground truth chosen.")
            return
        errors = res.layer(self.viewer, "errors")
        if gt_layer is None:
            self.metrics_label.setText("No ground truth chosen.")
            if errors is not None:
                self.viewer.layers.remove(errors)
            return
        gt = self._gt_mask(res)
        if gt is None:
            self.metrics_label.setText(
                f"'{gt_layer.name}' has shape {tuple(np.shape(gt_layer.data))}, the image "
                f"{tuple(res.prob.shape)}: choose the annotation of this image.")
            return
        vessels = res.layer(self.viewer, "vessels")
        pred = np.asarray(vessels.data) > 0 if vessels is not None else res.vessel_mask()
        m = _analysis.confusion(pred, gt, res.fov)
        key = id(gt_layer)
        if key not in res.auc_cache:
            res.auc_cache = {key: _analysis.auc(res.prob, gt, res.fov)}
        m["auc"] = res.auc_cache[key]
        res.metrics = m
        what = "corrected mask" if res.edited else f"threshold {res.threshold:.3f}"
        self.metrics_label.setText(
            f"Inside the FOV ({what}):\n"
            f"Se {m['se']:.4f}   Sp {m['sp']:.4f}   Acc {m['acc']:.4f}\n"
            f"AUC {m['auc']:.4f}   F1 {m['f1']:.4f}\n"
            "errors layer: magenta = false positive, green = false negative")
        self._put(res, "errors", _roles.errors_name(res.name),
                  _analysis.error_labels(pred, gt, res.fov), "labels", opacity=0.9,
                  colormap=_label_colormap({1: FP_COLOUR, 2: FN_COLOUR}))
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None and self.viewer.layers.selection.active is not vessels:
            self.viewer.layers.selection.active = vessels

    @property
    def metrics(self) -> dict | None:
        res = self.current_result()
        return getattr(res, "metrics", None) if res is not None else None

    # ------------------------------------------------------------------ saving

    def choose_save_folder(self, *_) -> None:
        folder = self._ask_folder("Folder for saved annotations")
        if folder is not None:
            self.set_save_folder(folder)

    def set_save_folder(self, folder) -> None:
        self._save_folder = Path(folder) if folder else None
        self.folder_label.setText(f"Folder: {self._save_folder}" if self._save_folder
                                  else "Folder: next to the image")

    @staticmethod
    def image_path(layer) -> Path | None:
        """The file the image layer came from, if any."""
        path = _roles.info_of(layer).get("path")
        if not path:
            path = getattr(getattr(layer, "source", None), "path", None)
        if path and Path(path).is_file():
            return Path(path)
        return None

    def save_annotation(self, *_) -> tuple[Path, Path] | None:
        """Write the corrected vessels and the FOV as '<stem>_vessels.png' / '<stem>_fov.png'."""
        from napari_dpn.annotations import annotation_paths
        from napari_dpn.image_io import write_mask

        res = self.current_result()
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        if vessels is None:
            self._save_error("Nothing to save yet: segment the image first.")
            return None
        image_path = self.image_path(res.image)
        folder = self._save_folder
        if folder is None and image_path is None:
            folder = self._ask_folder(f"Folder for the annotation of '{res.name}'")
            if folder is None:
                self.save_status.setText("Not saved.")
                return None
        if image_path is None:
            image_path = Path(folder) / f"{res.name}.png"
        try:
            vessels_path, fov_path = (Path(p) for p in annotation_paths(image_path, folder))
        except DPNError as exc:
            self._save_error(str(exc))
            return None
        existing = [p for p in (vessels_path, fov_path) if p.exists()]
        if existing:
            protected = self._ground_truth_paths() & {p.resolve() for p in existing}
            warn = " One of them is a ground-truth annotation." if protected else ""
            if not self._confirm("Overwrite?",
                                 f"{', '.join(p.name for p in existing)} already exist in "
                                 f"{existing[0].parent}.{warn} Overwrite?", ok="Overwrite"):
                self.save_status.setText("Not saved: the existing files were kept.")
                return None
        fov_layer = res.layer(self.viewer, "fov")
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else res.fov
        try:
            write_mask(vessels_path, np.asarray(vessels.data) > 0, on_value=255)
            write_mask(fov_path, fov, on_value=255)
        except (DPNError, OSError) as exc:
            self._save_error(f"Cannot save the annotation: {exc}")
            return None
        self.save_status.setText(f"Saved {vessels_path.name} and {fov_path.name} in "
                                 f"{vessels_path.parent}.")
        show_info(f"Saved {vessels_path} and {fov_path.name}.")
        return vessels_path, fov_path

    def _ground_truth_paths(self) -> set[Path]:
        paths = set()
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if info.get("role") in ("ground_truth", "fov", "mask") and info.get("path"):
                paths.add(Path(info["path"]).resolve())
        return paths

    def _save_error(self, message: str) -> None:
        self.save_status.setText(message)
        show_error(message)


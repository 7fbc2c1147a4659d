"""The Segment widget's "Compare with ground truth" panel: the choice, the metrics, the errors layer.

:class:`ComparePanel` compares the current vessels layer with the chosen ground truth inside the
FOV (Se/Sp/Acc/AUC/F1 via :func:`napari_dpn.comparison.compare`), at once for a small image and in
a worker for a large one, where the newest request (a :class:`Request`) wins, and shows the
false positives and negatives as an ``"<image> errors"`` labels layer.  It compares again on
``state.mask_changed``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout

from napari_dpn import comparison

from ._dock import Section, unstarted_worker, wrapped_label
from ._segment_layers import ResultLayers
from ._segment_state import INLINE_PIXELS, NO_GT, ImageResult, SegmentState, ground_truth_mask, image_shape


@dataclass
class Request:
    """One comparison with a ground truth, as it was when asked for."""

    serial: int
    res: ImageResult
    gt_layer: object
    pred: np.ndarray
    gt: np.ndarray
    roc: bool


def compare(req: Request) -> dict:
    """The comparison itself (on the GUI thread for a small image, else in a worker)."""
    return comparison.compare(req.pred, req.gt, req.res.fov, req.res.prob, req.roc)


class ComparePanel(Section):
    """Ground-truth choice, metrics and errors layer of the current result."""

    def __init__(self, state: SegmentState, viewer, layers: ResultLayers | None = None):
        super().__init__("Compare with ground truth")
        self.state = state
        self.viewer = viewer
        self.layers = layers or ResultLayers(state, viewer)
        self._serial = 0
        self._worker = None
        self._pending: Request | None = None
        form = QFormLayout(self.body)
        form.setContentsMargins(4, 2, 0, 2)
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip(
            "A manual annotation (labels layer) of the same image. It follows the image: each image keeps its own."
        )
        self.gt_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.gt_combo.setMinimumContentsLength(8)
        form.addRow("Ground truth", self.gt_combo)
        self.metrics_label = wrapped_label("No ground truth chosen.", selectable=True)
        form.addRow(self.metrics_label)
        self.gt_combo.currentIndexChanged.connect(self.on_gt_changed)
        state.mask_changed.connect(self.update_comparison)

    def on_gt_changed(self, *_, remember: bool = True) -> None:
        """The ground truth chosen in the box becomes the state's (and the image's own choice)."""
        state = self.state
        if not state.alive:
            return
        state.ground_truth = self.gt_combo.currentData()
        image = state.current_image()
        if remember and image is not None:
            state.gt_choice[image] = state.current_ground_truth()
        state.touch()

    def select(self, layer) -> None:
        """Show ``layer`` (or none) in the box without announcing it."""
        idx = next((i for i in range(self.gt_combo.count()) if self.gt_combo.itemData(i) is layer), 0)
        self.gt_combo.blockSignals(True)
        self.gt_combo.setCurrentIndex(idx)
        self.gt_combo.blockSignals(False)
        self.state.ground_truth = self.gt_combo.currentData()

    def candidates(self) -> list:
        return [lyr for lyr in (self.gt_combo.itemData(i) for i in range(self.gt_combo.count())) if lyr is not None]

    def update_comparison(self) -> None:
        """Compare the current vessels layer with the chosen ground truth: at once for a small
        image, in a worker for a large one (the newest request wins)."""
        state = self.state
        if not state.alive:
            return
        self._serial += 1
        res = state.current_result()
        gt_layer = state.current_ground_truth()
        self.set_summary(gt_layer.name if gt_layer is not None else NO_GT)
        if res is None:
            self.metrics_label.setText(
                "Segment the image to compare it with a ground truth."
                if gt_layer is not None
                else "No ground truth chosen."
            )
            return
        if gt_layer is None:
            self.metrics_label.setText("No ground truth chosen.")
            self.layers.remove_errors(res)
            return
        gt = ground_truth_mask(res, gt_layer)
        if gt is None:
            self.metrics_label.setText(
                f"'{gt_layer.name}' has shape {tuple(np.shape(gt_layer.data))}, the image "
                f"{image_shape(res.image)}: choose the annotation of this image."
            )
            self.layers.remove_errors(res)
            return
        vessels = res.layer(self.viewer, "vessels")
        pred = np.asarray(vessels.data) > 0 if vessels is not None else res.vessel_mask()
        if pred is None:
            return
        roc = res.prob is not None and gt_layer not in res.roc_cache
        req = Request(self._serial, res, gt_layer, pred, gt, roc=roc)
        if pred.size <= INLINE_PIXELS and (not req.roc or "sklearn.metrics" in sys.modules):
            # (the first ROC imports scikit-learn, 1-2 s: in the worker, never on the GUI thread)
            self.apply(req, compare(req))
            return
        self.metrics_label.setText(f"Comparing '{res.name}' with '{gt_layer.name}'…")
        if self._worker is not None:
            self._pending = req
            return
        self._start(req)

    def _start(self, req: Request) -> None:
        worker = unstarted_worker(compare, req)
        worker.returned.connect(lambda out, r=req: self.apply(r, out))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.state.comparing = True
        worker.start()

    def _on_finished(self) -> None:
        if not self.state.alive:
            return
        self._worker = None
        req, self._pending = self._pending, None
        self.state.comparing = False
        if req is not None and req.serial == self._serial:
            self._start(req)

    def apply(self, req: Request, out: dict) -> None:
        """Show a comparison's metrics and errors layer, unless a newer one is on its way."""
        state = self.state
        if not state.alive:
            return
        res = req.res
        if "auc" in out:
            res.roc_cache[req.gt_layer] = (out["auc"], out.get("youden"))
        if (
            req.serial != self._serial
            or res is not state.current_result()
            or req.gt_layer is not state.current_ground_truth()
        ):
            return  # a newer request is on its way
        m = dict(out["metrics"])
        auc, _ = res.roc_cache.get(req.gt_layer, (math.nan, None))
        m["auc"] = auc
        res.metrics = m
        self.metrics_label.setText(describe(res, req.gt_layer.name, m))
        self.layers.put_errors(res, out["errors"])
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None and self.viewer.layers.selection.active is not vessels:
            self.viewer.layers.selection.active = vessels


def describe(res: ImageResult, gt_name: str, m: dict) -> str:
    """The metrics in words, for the panel."""
    auc = m["auc"]
    auc_text = f"{auc:.4f}" if math.isfinite(auc) else "–"
    what = (
        "your annotation" if res.prob is None else "corrected mask" if res.edited else f"threshold {res.threshold:.3f}"
    )
    return (
        f"'{res.name}' vs '{gt_name}', inside the FOV ({what}):\n"
        f"Se {m['se']:.4f}   Sp {m['sp']:.4f}   Acc {m['acc']:.4f}\n"
        f"AUC {auc_text}   F1 {m['f1']:.4f}\n"
        "errors layer: magenta = false positive, green = false negative"
    )

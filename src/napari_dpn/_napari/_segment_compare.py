"""The Segment widget's comparison with a ground truth: metrics and the errors layer.

:class:`CompareMixin` compares the current vessels layer with the chosen ground truth inside the
FOV (Se/Sp/Acc/AUC/F1 via :func:`napari_dpn.comparison.compare`), at once for a small image and in
a worker for a large one, where the newest request (a :class:`_Request`) wins, and shows the
false positives and negatives as an ``"<image> errors"`` labels layer.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from napari_dpn import comparison

from . import _roles
from ._segment_state import INLINE_PIXELS, NO_GT, _light_worker, _Result


@dataclass
class _Request:
    """One comparison with a ground truth, as it was when asked for."""

    serial: int
    res: _Result
    gt_layer: object
    pred: np.ndarray
    gt: np.ndarray
    roc: bool


class CompareMixin:
    """Ground-truth choice, comparison, metrics and errors layer (part of :class:`SegmentWidget`).

    Uses the widget's ``viewer``, ``alive``, ``_gt_choice``, ``_cmp_serial``, ``_cmp_worker``,
    ``_cmp_pending``, ``_speck_worker``, ``is_running``, the controls ``compare_section`` and
    ``metrics_label``, and ``current_image()``, ``current_result()``, ``current_ground_truth()``,
    ``_image_shape``, ``_put`` and ``_sync_controls``.
    """

    def _on_gt_changed(self, *_, remember: bool = True) -> None:
        if not self.alive:
            return
        image = self.current_image()
        if remember and image is not None:
            self._gt_choice[id(image)] = self.current_ground_truth()
        self._sync_controls()
        self._update_comparison()

    def _gt_mask(self, res: _Result | None):
        gt = self.current_ground_truth()
        if res is None or gt is None:
            return None
        data = np.asarray(gt.data[0] if getattr(gt, "multiscale", False) else gt.data)
        if data.shape != tuple(self._image_shape(res.image)):
            return None
        return data > 0

    def _remove_errors(self, res: _Result) -> None:
        errors = res.layer(self.viewer, "errors")
        if errors is not None:
            self.viewer.layers.remove(errors)
        res.metrics = None

    def _update_comparison(self) -> None:
        """Compare the current vessels layer with the chosen ground truth: at once for a small
        image, in a worker for a large one (the newest request wins)."""
        if not self.alive:
            return
        self._cmp_serial += 1
        res = self.current_result()
        gt_layer = self.current_ground_truth()
        self.compare_section.set_summary(gt_layer.name if gt_layer is not None else NO_GT)
        if res is None:
            self.metrics_label.setText(
                "Segment the image to compare it with a ground truth."
                if gt_layer is not None
                else "No ground truth chosen."
            )
            return
        if gt_layer is None:
            self.metrics_label.setText("No ground truth chosen.")
            self._remove_errors(res)
            return
        gt = self._gt_mask(res)
        if gt is None:
            self.metrics_label.setText(
                f"'{gt_layer.name}' has shape {tuple(np.shape(gt_layer.data))}, the image "
                f"{tuple(self._image_shape(res.image))}: choose the annotation of this image."
            )
            self._remove_errors(res)
            return
        vessels = res.layer(self.viewer, "vessels")
        pred = np.asarray(vessels.data) > 0 if vessels is not None else res.vessel_mask()
        if pred is None:
            return
        req = _Request(
            self._cmp_serial, res, gt_layer, pred, gt, roc=res.prob is not None and id(gt_layer) not in res.roc_cache
        )
        if pred.size <= INLINE_PIXELS and (not req.roc or "sklearn.metrics" in sys.modules):
            # (the first ROC imports scikit-learn, 1-2 s: in the worker, never on the GUI thread)
            self._apply_comparison(req, self._compare(req))
            return
        self.metrics_label.setText(f"Comparing '{res.name}' with '{gt_layer.name}'…")
        if self._cmp_worker is not None:
            self._cmp_pending = req
            return
        self._start_comparison(req)

    @staticmethod
    def _compare(req: _Request) -> dict:
        return comparison.compare(req.pred, req.gt, req.res.fov, req.res.prob, req.roc)

    def _start_comparison(self, req: _Request) -> None:
        worker = _light_worker(self._compare, req)
        worker.returned.connect(lambda out, r=req: self._apply_comparison(r, out))
        worker.finished.connect(self._on_comparison_finished)
        self._cmp_worker = worker
        worker.start()

    def _on_comparison_finished(self) -> None:
        if not self.alive:
            return
        self._cmp_worker = None
        req, self._cmp_pending = self._cmp_pending, None
        if req is not None and req.serial == self._cmp_serial:
            self._start_comparison(req)

    @property
    def comparing(self) -> bool:
        """True while a comparison with the ground truth is computed in the background."""
        return self._cmp_worker is not None or self._cmp_pending is not None

    @property
    def busy(self) -> bool:
        """True while anything runs in the background (segmenting, comparing, speck removal)."""
        return self.is_running or self.comparing or self._speck_worker is not None

    def _apply_comparison(self, req: _Request, out: dict) -> None:
        if not self.alive:
            return
        res = req.res
        if "auc" in out:
            res.roc_cache[id(req.gt_layer)] = (out["auc"], out.get("youden"))
        if (
            req.serial != self._cmp_serial
            or res is not self.current_result()
            or req.gt_layer is not self.current_ground_truth()
        ):
            return  # a newer request is on its way
        m = dict(out["metrics"])
        auc, _ = res.roc_cache.get(id(req.gt_layer), (math.nan, None))
        m["auc"] = auc
        res.metrics = m
        auc_text = f"{auc:.4f}" if math.isfinite(auc) else "–"
        what = (
            "your annotation"
            if res.prob is None
            else "corrected mask"
            if res.edited
            else f"threshold {res.threshold:.3f}"
        )
        self.metrics_label.setText(
            f"'{res.name}' vs '{req.gt_layer.name}', inside the FOV ({what}):\n"
            f"Se {m['se']:.4f}   Sp {m['sp']:.4f}   Acc {m['acc']:.4f}\n"
            f"AUC {auc_text}   F1 {m['f1']:.4f}\n"
            "errors layer: magenta = false positive, green = false negative"
        )
        self._put(
            res,
            "errors",
            _roles.errors_name(res.name),
            out["errors"],
            "labels",
            **_roles.style("errors"),
        )
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None and self.viewer.layers.selection.active is not vessels:
            self.viewer.layers.selection.active = vessels

    @property
    def metrics(self) -> dict | None:
        res = self.current_result()
        return getattr(res, "metrics", None) if res is not None else None

"""Comparing a vessel map with a ground truth: the numbers and the error layer the widgets show,
from :mod:`napari_dpn.metrics` (the same as the CLI reports).

Pixels inside the FOV only; vessel = ``prob >= threshold``.  Any metric that cannot be computed
(empty FOV, no vessel in the ground truth) comes back as NaN / None instead of raising.
"""

from __future__ import annotations

import math

import numpy as np

from napari_dpn import metrics
from napari_dpn.errors import DPNError

NAN_METRICS = {"se": math.nan, "sp": math.nan, "acc": math.nan, "f1": math.nan}


def confusion(pred: np.ndarray, gt: np.ndarray, fov: np.ndarray | None) -> dict:
    """Se, Sp, Acc, F1 (and the counts) of a boolean prediction inside ``fov``."""
    try:
        return metrics.confusion_metrics(
            np.asarray(pred, bool), np.asarray(gt, bool), None if fov is None else np.asarray(fov, bool)
        )
    except DPNError:
        return dict(NAN_METRICS)


def auc(prob: np.ndarray, gt: np.ndarray, fov: np.ndarray | None) -> float:
    """Area under the ROC curve of the probability map inside the FOV (NaN if undefined)."""
    try:
        return float(metrics.auc(prob, np.asarray(gt, bool), None if fov is None else np.asarray(fov, bool)))
    except DPNError:
        return math.nan


def youden_threshold(prob: np.ndarray, gt: np.ndarray, fov: np.ndarray | None) -> float | None:
    """The threshold maximising Se + Sp - 1 (Youden's J) inside the FOV, or None."""
    gt = np.asarray(gt, bool)
    inside = gt if fov is None else gt[np.asarray(fov, bool)]
    if inside.size == 0 or inside.all() or not inside.any():
        return None
    try:
        t = float(metrics.youden_threshold(prob, gt, None if fov is None else np.asarray(fov, bool)))
    except DPNError:
        return None
    return t if math.isfinite(t) else None


def error_labels(pred: np.ndarray, gt: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """uint8 labels: 1 = false positive, 2 = false negative (inside the FOV), 0 elsewhere."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    out = np.zeros(gt.shape, np.uint8)
    out[pred & ~gt] = 1
    out[~pred & gt] = 2
    if fov is not None:
        out[~np.asarray(fov, bool)] = 0
    return out


def compare(pred: np.ndarray, gt: np.ndarray, fov: np.ndarray | None, prob: np.ndarray | None, roc: bool) -> dict:
    """Everything the comparison panel shows, in one call a worker thread can make.

    ``metrics``: Se/Sp/Acc/F1 of the boolean ``pred``; ``errors``: the error labels; with ``roc``
    (and a probability map) also ``auc`` and ``youden``.
    """
    out = {"metrics": confusion(pred, gt, fov), "errors": error_labels(pred, gt, fov)}
    if roc and prob is not None:
        out["auc"] = auc(prob, gt, fov)
        out["youden"] = youden_threshold(prob, gt, fov)
    return out

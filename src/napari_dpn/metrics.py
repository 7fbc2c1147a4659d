"""The paper's evaluation protocol (section 4.4): Se, Sp, Acc, AUC and F1 inside the FOV only.

Conventions
- A pixel is predicted "vessel" when ``prob >= threshold`` (the convention of scikit-learn's
  ``roc_curve``), so the thresholds returned here can be applied directly.
- Ratios whose denominator is 0 (e.g. Se of an image without vessels) are defined as 0.0.
- Pooled metrics count the FOV pixels of all images together (what the paper reports);
  per-image metrics are given besides, with a summary over images.

Speed and memory: probability maps can hold many millions of pixels, so ROC curves and AUC are
computed from per-image histograms of the FOV probabilities on a grid of ``1 / N_BINS`` (1e-4):
each pixel falls into bin ``floor(p * N_BINS)``, and scikit-learn's ``roc_curve`` /
``roc_auc_score`` run on the bin values weighted by their counts.  The curve is then exact at
every grid threshold; only pixel pairs closer than 1e-4 become ties (counted half, as
scikit-learn does for ties), which moves the AUC by far less than its reported precision.
Se/Sp/Acc/F1 at a chosen threshold are counted exactly on the raw probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_dpn.errors import InputError

N_BINS = 10_000
ROC_POINTS = 512
RULES = ("youden", "max_acc", "train_threshold")
_RULE_KEYS = ("threshold", "se", "sp", "acc", "f1")


# ---------------------------------------------------------------------------------- validation
def _binary(arr, what: str, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise InputError(f"{name}: the {what} must be binary (bool or 0/1 values).")
    return arr.astype(bool)


def _fov_pixels(prob, gt, fov, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Validate one image and return its FOV pixels: (probabilities float32, truth bool)."""
    prob = np.asarray(prob)
    gt = np.asarray(gt)
    if prob.ndim != 2:
        raise InputError(f"{name}: expected a 2-D probability map, got shape {prob.shape}.")
    fov = np.ones(prob.shape, bool) if fov is None else np.asarray(fov)
    if gt.shape != prob.shape or fov.shape != prob.shape:
        raise InputError(
            f"{name}: probability {prob.shape}, ground truth {gt.shape} and FOV {fov.shape} shapes must match."
        )
    gt = _binary(gt, "ground truth", name)
    fov = _binary(fov, "FOV mask", name)
    p = prob[fov].astype(np.float32, copy=False)
    if p.size == 0:
        raise InputError(f"{name}: the FOV mask is empty, so there is nothing to evaluate.")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise InputError(f"{name}: probabilities must be finite and lie in 0..1.")
    return p, gt[fov]


def _as_lists(probs, gts, fovs, names=None):
    """Accept one array or a list of arrays for each argument; fovs None means whole image."""
    if isinstance(probs, np.ndarray):
        probs, gts, fovs = [probs], [gts], [fovs]
    probs, gts = list(probs), list(gts)
    fovs = [None] * len(probs) if fovs is None else list(fovs)
    if not probs:
        raise InputError("No images to evaluate.")
    if not len(probs) == len(gts) == len(fovs):
        raise InputError(
            f"Got {len(probs)} probability maps, {len(gts)} ground truths and "
            f"{len(fovs)} FOV masks; the numbers must match."
        )
    names = [f"image {i + 1}" for i in range(len(probs))] if names is None else list(names)
    if len(names) != len(probs):
        raise InputError(f"Got {len(names)} names for {len(probs)} images.")
    return probs, gts, fovs, names


# ------------------------------------------------------------------------------ counts at a cut
def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _from_counts(tp: int, fp: int, tn: int, fn: int) -> dict:
    se, sp = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    return dict(
        tp=int(tp),
        fp=int(fp),
        tn=int(tn),
        fn=int(fn),
        se=se,
        sp=sp,
        acc=_ratio(tp + tn, tp + fp + tn + fn),
        precision=precision,
        f1=_ratio(2 * precision * se, precision + se),
    )


def _counts(p: np.ndarray, g: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = p >= threshold
    tp = int(np.count_nonzero(pred & g))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return tp, fp, g.size - tp - fp - fn, fn


def confusion_metrics(pred, gt, fov=None, threshold: float | None = None) -> dict:
    """TP/FP/TN/FN and Se, Sp, Acc, precision, F1 counted inside the FOV of one image.

    ``pred`` is a binary mask, or a probability map when ``threshold`` is given
    (vessel = ``prob >= threshold``).  0/0 is reported as 0.0.
    """
    if threshold is None:
        pred = _binary(pred, "prediction", "prediction").astype(np.float32)
        threshold = 0.5
    p, g = _fov_pixels(pred, gt, fov, "image")
    return _from_counts(*_counts(p, g, threshold))


# -------------------------------------------------------------------------------- ROC machinery
def _histogram(p: np.ndarray, g: np.ndarray, bins: int) -> np.ndarray:
    """(2, bins + 1) counts of vessel / background FOV pixels per probability bin."""
    idx = np.floor(p.astype(np.float64) * bins).astype(np.intp)
    return np.stack([np.bincount(idx[g], minlength=bins + 1), np.bincount(idx[~g], minlength=bins + 1)])


def _pooled_histogram(probs, gts, fovs, bins: int = N_BINS) -> np.ndarray:
    probs, gts, fovs, names = _as_lists(probs, gts, fovs)
    hist = np.zeros((2, bins + 1), dtype=np.int64)
    for prob, gt, fov, name in zip(probs, gts, fovs, names):
        hist += _histogram(*_fov_pixels(prob, gt, fov, name), bins)
    return hist


def _weighted(hist: np.ndarray, bins: int):
    """Bin values, labels and counts for scikit-learn (only non-empty bins)."""
    k_pos, k_neg = np.nonzero(hist[0])[0], np.nonzero(hist[1])[0]
    scores = np.concatenate([k_pos, k_neg]) / bins
    labels = np.concatenate([np.ones(k_pos.size, int), np.zeros(k_neg.size, int)])
    weights = np.concatenate([hist[0, k_pos], hist[1, k_neg]]).astype(np.float64)
    return labels, scores, weights


def _has_both_classes(hist: np.ndarray) -> bool:
    return bool(hist[0].sum() and hist[1].sum())


def _roc_from_hist(hist: np.ndarray, bins: int):
    if not _has_both_classes(hist):
        raise InputError("The ROC curve needs both vessel and background pixels inside the FOV.")
    labels, scores, weights = _weighted(hist, bins)
    from sklearn.metrics import roc_curve  # 1.5 s to import: not when a widget docks

    return roc_curve(labels, scores, sample_weight=weights, drop_intermediate=False)


def _auc_from_hist(hist: np.ndarray, bins: int) -> float:
    """AUC, or NaN when the FOV holds only one class (AUC is undefined then)."""
    if not _has_both_classes(hist):
        return math.nan
    labels, scores, weights = _weighted(hist, bins)
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores, sample_weight=weights))


def _best_threshold(hist: np.ndarray, bins: int, rule: str) -> float:
    """Grid threshold maximising the rule; ties go to the highest threshold."""
    fpr, tpr, thr = _roc_from_hist(hist, bins)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop scikit-learn's "nothing positive" point
    pos, neg = float(hist[0].sum()), float(hist[1].sum())
    if rule == "youden":
        score = tpr - fpr
    elif rule == "max_acc":
        score = (tpr * pos + (1 - fpr) * neg) / (pos + neg)
    elif rule == "f1":
        tp, fp = tpr * pos, fpr * neg
        score = np.divide(2 * tp, 2 * tp + fp + (pos - tp), out=np.zeros_like(tp), where=(2 * tp + fp + pos - tp) > 0)
    else:
        raise InputError(f"Unknown threshold rule '{rule}'; use youden, max_acc or f1.")
    return float(thr[int(np.argmax(score))])


def roc(probs, gts, fovs, bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled ROC over all FOV pixels: (fpr, tpr, thresholds), thresholds decreasing.

    The first point is scikit-learn's (0, 0) at threshold +inf.
    """
    return _roc_from_hist(_pooled_histogram(probs, gts, fovs, bins), bins)


def auc(probs, gts, fovs, bins: int = N_BINS) -> float:
    """Pooled AUC over all FOV pixels (NaN if only one class is present)."""
    return _auc_from_hist(_pooled_histogram(probs, gts, fovs, bins), bins)


def youden_threshold(probs, gts, fovs, bins: int = N_BINS) -> float:
    """Threshold maximising Se + Sp - 1 on the pooled ROC (the "optimal operating point")."""
    return _best_threshold(_pooled_histogram(probs, gts, fovs, bins), bins, "youden")


def max_accuracy_threshold(probs, gts, fovs, bins: int = N_BINS) -> float:
    """Threshold maximising pooled pixel accuracy."""
    return _best_threshold(_pooled_histogram(probs, gts, fovs, bins), bins, "max_acc")


def best_f1_threshold(probs, gts, fovs, bins: int = N_BINS) -> float:
    """Threshold maximising pooled F1."""
    return _best_threshold(_pooled_histogram(probs, gts, fovs, bins), bins, "f1")


def choose_train_threshold(probs, gts, fovs, rule: str = "youden", bins: int = N_BINS) -> float:
    """Pick a threshold on TRAINING images (rule "youden" or "max_acc") to apply to test images.

    This is the honest protocol: the test set never influences the threshold.
    """
    if rule not in ("youden", "max_acc"):
        raise InputError(f"Unknown threshold rule '{rule}'; use youden or max_acc.")
    return _best_threshold(_pooled_histogram(probs, gts, fovs, bins), bins, rule)


# ------------------------------------------------------------------------------------ evaluate
def _rule_entry(counts, threshold: float, chosen_on: str | None = None) -> dict:
    m = _from_counts(*counts)
    entry = dict(threshold=float(threshold), se=m["se"], sp=m["sp"], acc=m["acc"], f1=m["f1"])
    if chosen_on:
        entry["chosen_on"] = chosen_on
    return entry


def _stats(values: list[float], full: bool = True) -> dict:
    vals = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if vals.size == 0:
        out = dict(mean=math.nan, min=math.nan, max=math.nan, std=math.nan)
    else:
        out = dict(mean=float(vals.mean()), min=float(vals.min()), max=float(vals.max()), std=float(vals.std()))
    return out if full else {k: out[k] for k in ("mean", "min")}


def _downsample_roc(fpr: np.ndarray, tpr: np.ndarray, points: int = ROC_POINTS) -> dict:
    idx = np.unique(np.linspace(0, fpr.size - 1, min(points, fpr.size)).round().astype(int))
    return {"fpr": fpr[idx].tolist(), "tpr": tpr[idx].tolist()}


def evaluate(
    probs: Sequence[np.ndarray], gts, fovs, names=None, train_threshold: float | None = None, bins: int = N_BINS
) -> dict:
    """Evaluate probability maps against ground truth inside the FOV, the paper's way.

    Rules: "youden" (pooled ROC optimum, the paper's choice), "max_acc" (best accuracy) — both
    chosen on the evaluated (test) images themselves — and, when given, "train_threshold"
    (a threshold chosen beforehand on training images with :func:`choose_train_threshold`).

    Returns ``{"pooled", "per_image", "per_image_summary", "roc"}``; see docs/design.md.
    Images whose FOV holds only one class get AUC NaN and no youden/max_acc entry (None); they
    are left out of the summary, which says how many were skipped in ``"note"``.
    Raises InputError for mismatched shapes, non-binary masks, empty FOVs, or when the pooled
    FOV pixels hold only one class.
    """
    probs, gts, fovs, names = _as_lists(probs, gts, fovs, names)

    # Pass 1: histograms (small) per image; the raw FOV pixels are not kept, to save memory.
    hists = [_histogram(*_fov_pixels(p, g, f, n), bins) for p, g, f, n in zip(probs, gts, fovs, names)]
    pooled_hist = np.sum(hists, axis=0)
    if not _has_both_classes(pooled_hist):
        raise InputError(
            "The FOV pixels of all images hold only one class (all vessel or all "
            "background), so AUC and thresholds are undefined."
        )
    pooled_thr = {rule: _best_threshold(pooled_hist, bins, rule) for rule in ("youden", "max_acc")}
    fpr, tpr, _ = _roc_from_hist(pooled_hist, bins)

    # Pass 2: exact counts at every threshold that is needed.
    pooled_counts = {rule: np.zeros(4, np.int64) for rule in RULES}
    per_image = []
    for prob, gt, fov, name, hist in zip(probs, gts, fovs, names, hists):
        p, g = _fov_pixels(prob, gt, fov, name)
        entry: dict[str, Any] = {"name": str(name), "auc": _auc_from_hist(hist, bins)}
        for rule in ("youden", "max_acc"):
            pooled_counts[rule] += _counts(p, g, pooled_thr[rule])
            if math.isnan(entry["auc"]):
                entry[rule] = None
            else:
                thr = _best_threshold(hist, bins, rule)
                entry[rule] = _rule_entry(_counts(p, g, thr), thr, "test" if rule == "max_acc" else None)
        entry["train_threshold"] = None
        if train_threshold is not None:
            counts = _counts(p, g, train_threshold)
            pooled_counts["train_threshold"] += counts
            entry["train_threshold"] = _rule_entry(counts, train_threshold, "train")
        per_image.append(entry)

    pooled = {
        "auc": _auc_from_hist(pooled_hist, bins),
        "n_pixels": int(pooled_hist.sum()),
        "youden": _rule_entry(pooled_counts["youden"], pooled_thr["youden"]),
        "max_acc": _rule_entry(pooled_counts["max_acc"], pooled_thr["max_acc"], "test"),
        "train_threshold": None
        if train_threshold is None
        else _rule_entry(pooled_counts["train_threshold"], train_threshold, "train"),
    }
    return {
        "pooled": pooled,
        "per_image": per_image,
        "per_image_summary": _summary(per_image),
        "roc": _downsample_roc(fpr, tpr),
    }


def _summary(per_image: list[dict]) -> dict:
    """Mean/min/max/std over images of AUC and of each rule's Se, Sp, Acc, F1."""
    skipped = [e["name"] for e in per_image if math.isnan(e["auc"])]
    summary = {"n_images": len(per_image), "n_skipped": len(skipped), "auc": _stats([e["auc"] for e in per_image])}
    for rule in RULES:
        entries = [e[rule] for e in per_image if e[rule] is not None]
        if not entries:
            continue
        for key in ("se", "sp", "acc", "f1"):
            summary[f"{key}_{rule}"] = _stats([x[key] for x in entries])
    summary["note"] = None if not skipped else f"AUC undefined (one class in the FOV), left out: {', '.join(skipped)}"
    return summary


# ---------------------------------------------------------------------------------- formatting
def table_header() -> str:
    """Column titles matching :func:`table_row`."""
    return f"{'rule':<28}{'Se':>8}{'Sp':>8}{'Acc':>8}{'AUC':>8}{'F1':>8}"


def table_row(result: dict, rule: str = "youden") -> str:
    """One 'rule  Se  Sp  Acc  AUC  F1' line of an :func:`evaluate` result (pooled values)."""
    pooled = result["pooled"]
    entry = pooled.get(rule)
    if entry is None:
        raise InputError(f"The result has no '{rule}' threshold.")
    label = f"{rule} (t={entry['threshold']:.4f})"
    return (
        f"{label:<28}{entry['se']:>8.4f}{entry['sp']:>8.4f}{entry['acc']:>8.4f}{pooled['auc']:>8.4f}{entry['f1']:>8.4f}"
    )


def format_table(result: dict) -> str:
    """Header plus one row per rule present in the result."""
    rows = [table_row(result, r) for r in RULES if result["pooled"].get(r) is not None]
    return "\n".join([table_header(), *rows])

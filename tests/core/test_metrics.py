"""metrics: hand-computed cases for the paper's protocol (only FOV pixels count)."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from napari_dpn import metrics
from napari_dpn.errors import InputError


def as_image(values):
    """1-D test values as a (1, N) image."""
    return np.asarray(values)[None, :]


def test_confusion_counts_by_hand():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], bool)
    gt = np.array([[1, 0, 0, 1], [1, 0, 1, 0]], bool)
    fov = np.ones((2, 4), bool)
    fov[1, 3] = False  # this pixel would be a false positive; it must not count
    m = metrics.confusion_metrics(pred, gt, fov)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 2)
    assert m["se"] == pytest.approx(2 / 4)
    assert m["sp"] == pytest.approx(2 / 3)
    assert m["acc"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)  # 2 * (2/3 * 1/2) / (2/3 + 1/2)


def test_confusion_with_threshold_and_zero_division():
    prob = np.array([[0.2, 0.5, 0.7]])
    gt = np.array([[0, 0, 0]], bool)  # no vessels: Se and precision are 0/0 -> 0.0
    m = metrics.confusion_metrics(prob, gt, None, threshold=0.5)  # 0.5 >= 0.5 is vessel
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 2, 1, 0)
    assert m["se"] == 0.0 and m["precision"] == 0.0 and m["f1"] == 0.0
    assert m["sp"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "probs, expected",
    [
        ([0.9, 0.8, 0.3, 0.1], 1.0),  # perfect separation
        ([0.1, 0.3, 0.8, 0.9], 0.0),  # inverted
        ([0.5, 0.5, 0.5, 0.5], 0.5),  # all tied
        ([0.9, 0.4, 0.6, 0.2], 0.75),  # pairs: 0.9>0.6, 0.9>0.2, 0.4<0.6, 0.4>0.2 -> 3/4
        ([0.5, 0.9, 0.5, 0.1], 0.875),  # one tie counts half -> 3.5/4
    ],
)
def test_auc_by_hand(probs, expected):
    gt = as_image([1, 1, 0, 0]).astype(bool)
    assert metrics.auc(as_image(probs), gt, None) == pytest.approx(expected)


def test_pixels_outside_fov_are_ignored():
    prob = as_image([0.9, 0.8, 0.3, 0.1, 0.0, 1.0])
    gt = as_image([1, 1, 0, 0, 1, 0]).astype(bool)  # the last two would invert the ranking
    fov = as_image([1, 1, 1, 1, 0, 0]).astype(bool)
    assert metrics.auc(prob, gt, fov) == pytest.approx(1.0)
    result = metrics.evaluate([prob], [gt], [fov])
    assert result["pooled"]["n_pixels"] == 4
    assert result["pooled"]["youden"]["acc"] == pytest.approx(1.0)


def test_auc_pools_images_and_matches_sklearn():
    rng = np.random.default_rng(0)
    gts = [rng.random((30, 40)) < 0.15 for _ in range(3)]
    probs = [np.clip(0.3 * g + rng.random(g.shape) * 0.8, 0, 1).astype(np.float32) for g in gts]
    fovs = [np.ones(g.shape, bool) for g in gts]
    fovs[0][:10] = False
    exact = roc_auc_score(
        np.concatenate([g[f] for g, f in zip(gts, fovs)]), np.concatenate([p[f] for p, f in zip(probs, fovs)])
    )
    assert metrics.auc(probs, gts, fovs) == pytest.approx(exact, abs=1e-4)
    fpr, tpr, thr = metrics.roc(probs, gts, fovs)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(thr) < 0)


# Vessels at 0.9 and 0.4; background at 0.6 0.5 0.3 0.2 0.1 0.05 (P = 2, N = 6).
#   t=0.9: Se 1/2, Sp 1   -> J 0.50, Acc 7/8   (best accuracy)
#   t=0.4: Se 1,   Sp 4/6 -> J 0.67, Acc 6/8   (best Youden)
POS, NEG = [0.9, 0.4], [0.6, 0.5, 0.3, 0.2, 0.1, 0.05]
PROB = as_image(POS + NEG).astype(np.float32)
GT = as_image([1] * 2 + [0] * 6).astype(bool)


def test_youden_and_max_accuracy_thresholds_by_hand():
    # thresholds lie on the 1e-4 grid, at or just below the deciding probability
    assert metrics.youden_threshold(PROB, GT, None) == pytest.approx(0.4, abs=2e-4)
    assert metrics.max_accuracy_threshold(PROB, GT, None) == pytest.approx(0.9, abs=2e-4)
    # F1 is 2/3 at both 0.9 and 0.4; ties go to the higher threshold
    assert metrics.best_f1_threshold(PROB, GT, None) == pytest.approx(0.9, abs=2e-4)
    assert metrics.choose_train_threshold(PROB, GT, None, rule="max_acc") == pytest.approx(0.9, abs=2e-4)
    with pytest.raises(InputError, match="rule"):
        metrics.choose_train_threshold(PROB, GT, None, rule="median")


def test_evaluate_structure_and_values():
    other_prob = as_image([0.8, 0.7, 0.2, 0.1]).astype(np.float32)
    other_gt = as_image([1, 1, 0, 0]).astype(bool)
    res = metrics.evaluate([PROB, other_prob], [GT, other_gt], [None, None], names=["a", "b"], train_threshold=0.5)
    assert set(res) == {"pooled", "per_image", "per_image_summary", "roc"}
    pooled = res["pooled"]
    assert set(pooled) == {"auc", "n_pixels", "youden", "max_acc", "train_threshold"}
    assert set(pooled["youden"]) == {"threshold", "se", "sp", "acc", "f1"}
    assert pooled["max_acc"]["chosen_on"] == "test"
    assert pooled["train_threshold"]["chosen_on"] == "train"
    assert pooled["n_pixels"] == 12
    # at 0.5: image a TP 1 FP 2 TN 4 FN 1; image b TP 2 TN 2 -> pooled TP 3 FP 2 TN 6 FN 1
    tt = pooled["train_threshold"]
    assert tt["threshold"] == 0.5
    assert tt["se"] == pytest.approx(3 / 4) and tt["sp"] == pytest.approx(6 / 8)
    assert tt["acc"] == pytest.approx(9 / 12)
    a, b = res["per_image"]
    assert a["name"] == "a" and a["auc"] == pytest.approx(10 / 12)  # 0.4 beats 4 of 6
    assert b["auc"] == pytest.approx(1.0)
    assert a["max_acc"]["acc"] == pytest.approx(7 / 8)
    assert a["youden"]["se"] == pytest.approx(1.0) and a["youden"]["sp"] == pytest.approx(4 / 6)
    summary = res["per_image_summary"]
    assert summary["auc"]["mean"] == pytest.approx((10 / 12 + 1) / 2)
    assert summary["acc_max_acc"]["min"] == pytest.approx(7 / 8)
    assert summary["note"] is None
    assert len(res["roc"]["fpr"]) == len(res["roc"]["tpr"]) <= 512
    assert "Se" in metrics.format_table(res) and "train_threshold" in metrics.format_table(res)
    row = metrics.table_row(res, "youden").split()
    assert row[0] == "youden" and len(row) == 7  # rule (t=...) Se Sp Acc AUC F1


def test_image_with_one_class_gets_nan_auc():
    no_vessels = as_image([0, 0, 0, 0]).astype(bool)
    res = metrics.evaluate([PROB, as_image([0.1, 0.2, 0.3, 0.4])], [GT, no_vessels], None)
    second = res["per_image"][1]
    assert math.isnan(second["auc"]) and second["youden"] is None
    assert res["per_image_summary"]["n_skipped"] == 1
    assert "image 2" in res["per_image_summary"]["note"]
    assert res["per_image_summary"]["auc"]["mean"] == pytest.approx(10 / 12)


def test_large_roc_is_downsampled():
    rng = np.random.default_rng(1)
    gt = rng.random((100, 100)) < 0.3
    prob = rng.random((100, 100)).astype(np.float32)
    res = metrics.evaluate([prob], [gt], None)
    assert len(res["roc"]["fpr"]) == 512
    assert res["roc"]["fpr"][0] == 0 and res["roc"]["tpr"][-1] == 1


@pytest.mark.parametrize(
    "prob, gt, fov, message",
    [
        (np.zeros((2, 3)), np.zeros((2, 4), bool), None, "shapes must match"),
        (np.zeros((2, 3)), np.full((2, 3), 2), None, "binary"),
        (np.zeros((2, 3)), np.zeros((2, 3), bool), np.zeros((2, 3), bool), "FOV mask is empty"),
        (np.full((2, 3), np.nan), np.zeros((2, 3), bool), None, "finite"),
        (np.full((2, 3), 1.5), np.zeros((2, 3), bool), None, "0..1"),
        (np.zeros((2, 3)), np.zeros((2, 3), bool), None, "only one class"),
    ],
)
def test_evaluate_rejects_bad_input(prob, gt, fov, message):
    with pytest.raises(InputError, match=message):
        metrics.evaluate([prob], [gt], [fov])


def test_list_lengths_must_match():
    with pytest.raises(InputError, match="numbers must match"):
        metrics.evaluate([PROB, PROB], [GT], None)

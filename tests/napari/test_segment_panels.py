"""The Segment widget's panels, each driven alone: a SegmentState, a viewer, one panel.

A newcomer adds a panel this way: it takes the state (and the viewer), changes the state through
its methods and listens to ``state.changed`` / ``state.mask_changed``; no other panel is needed.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_dpn._napari._segment_compare import ComparePanel
from napari_dpn._napari._segment_state import ImageResult, SegmentState
from napari_dpn._napari._segment_threshold import ThresholdPanel

needs_display = pytest.mark.needs_display


def _state_with_a_result(viewer):
    image = viewer.add_image(np.zeros((40, 40), np.float32), name="eye")
    prob = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    state = SegmentState(layers=viewer.layers, image=image)
    res = ImageResult(image=image, name="eye", prob=prob, fov=None, threshold=0.5)
    state.results[image] = res
    return state, res


@needs_display
def test_threshold_panel_alone_thresholds_locks_on_a_stroke_and_asks_before_reapplying(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    state, res = _state_with_a_result(viewer)
    answers = []
    panel = ThresholdPanel(state, viewer, confirm=lambda *a, **k: answers.pop(0))
    qtbot.addWidget(panel)
    compared = []
    state.mask_changed.connect(lambda: compared.append(1))
    assert panel.slider.isEnabled() and panel.reapply_button.isHidden()

    panel.set_threshold(0.75)  # as a user moves the slider: the vessels layer appears, thresholded
    vessels = res.layer(viewer, "vessels")
    assert vessels is not None
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, res.prob >= 0.75)
    assert res.threshold == pytest.approx(0.75) and state.threshold == pytest.approx(0.75) and compared

    vessels.data_setitem((np.array([0]), np.array([0])), 1)  # one brush stroke: the lock
    assert res.edited and res.edits == 1
    assert not panel.slider.isEnabled() and not panel.reapply_button.isHidden()
    assert "locked" in panel.edit_status.text()

    answers.append(False)
    assert not panel.reapply_threshold() and res.edited  # asked, kept the corrections
    answers.append(True)
    assert panel.reapply_threshold() and not res.edited
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, res.prob >= 0.75)
    assert panel.slider.isEnabled()


@needs_display
def test_compare_panel_alone_shows_metrics_and_an_errors_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    state, res = _state_with_a_result(viewer)
    gt = viewer.add_labels((res.prob >= 0.5).astype(np.uint8), name="eye ground truth")
    panel = ComparePanel(state, viewer)
    qtbot.addWidget(panel)
    panel.gt_combo.addItem("(none)", None)
    panel.gt_combo.addItem(gt.name, gt)
    panel.gt_combo.setCurrentIndex(1)  # as a user picks it: the state follows, the panel compares
    assert state.current_ground_truth() is gt and state.gt_choice[state.image] is gt
    qtbot.waitUntil(lambda: res.metrics is not None, timeout=30_000)  # the first ROC may run in a worker
    assert res.metrics is not None and res.metrics["se"] == pytest.approx(1.0)
    assert "Se 1.0000" in panel.metrics_label.text()
    assert res.layer(viewer, "errors") is not None

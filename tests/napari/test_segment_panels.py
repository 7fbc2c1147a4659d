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


def test_run_panel_alone_follows_the_model_locks_while_running_and_reports_progress(qtbot, tmp_path, notes):
    import threading

    from napari_dpn._napari._segment_running import RunPanel
    from napari_dpn.architectures import FRESH_INPUT
    from widget_setup import save_random_model

    state = SegmentState()
    panel = RunPanel(state)
    qtbot.addWidget(panel)
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    panel.model_picker.refresh_button.click()  # the widget lists the models at start-up; ⟳ does it again
    assert panel.model_picker.combo.count() >= 1

    weights = save_random_model(tmp_path, "tiny-clahe", input={**FRESH_INPUT, "clahe": True}, scale={"fusion": 1.5})
    assert panel.model_picker.add_model_file(weights)  # what Browse… does: the card presets the choices
    assert panel.clahe_check.isChecked() and panel.fusion_check.isChecked()
    assert panel.model_picker.summary.text()
    weights = save_random_model(tmp_path, "tiny-plain")
    assert panel.model_picker.add_model_file(weights)
    assert not panel.clahe_check.isChecked() and not panel.fusion_check.isChecked()

    panel.on_progress(0.5)  # no run: nothing to show
    assert panel.progress.isHidden()
    panel.set_running(True)
    assert state.running and state.busy
    assert not panel.run_button.isEnabled() and panel.cancel_button.isEnabled()
    assert not panel.model_picker.combo.isEnabled() and not panel.image_combo.isEnabled()
    assert not panel.field_combo.isEnabled() and not panel.clahe_check.isEnabled()
    assert panel.progress.maximum() == 0, "busy until a tiled run reports"
    sender = threading.Thread(target=panel.bridge.progress.emit, args=(0.5,))  # as the worker reports
    sender.start()
    sender.join()
    qtbot.waitUntil(lambda: panel.progress.value() == 50, timeout=5_000)
    assert panel.progress.maximum() == 100 and "ETA" in panel.progress.format()

    image = object()
    res = ImageResult(image=image, name="eye", prob=np.zeros((4, 4), np.float32), fov=None, threshold=0.5)
    res.model_label, res.device, res.seconds, res.scale = "tiny-plain", "cpu", 1.25, "native"
    state.run_info.emit(res)
    assert panel.status.text() == "'eye': tiny-plain, 1.25 s on cpu. Scale: native."
    panel.set_running(False)
    assert not state.running and panel.run_button.isEnabled() and panel.model_picker.combo.isEnabled()
    assert panel.progress.isHidden()
    panel.error("The photograph is too small.")
    assert panel.status.text() == "The photograph is too small." and notes["error"] == ["The photograph is too small."]


@needs_display
def test_save_panel_alone_saves_to_a_folder_and_never_overwrites_without_asking(
    make_napari_viewer, qtbot, tmp_path, notes
):
    from napari_dpn._napari._segment_saving import SavePanel
    from napari_dpn.image_io import read_image

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((40, 40), np.float32), name="eye")  # no file: the panel asks where
    state = SegmentState(layers=viewer.layers, image=image)
    folders, answers, asked = [None, tmp_path], [False, True], []
    panel = SavePanel(
        state,
        viewer,
        confirm=lambda title, text, ok="OK": asked.append(text) or answers.pop(0),
        ask_folder=lambda title: folders.pop(0),
    )
    qtbot.addWidget(panel)
    assert not panel.save_button.isEnabled(), "nothing to save before a result"

    res = ImageResult(image=image, name="eye", prob=np.zeros((40, 40), np.float32), fov=None, threshold=0.5)
    res.fov = np.ones((40, 40), bool)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 5:30] = 1
    res.layers["vessels"] = viewer.add_labels(mask, name="eye vessels")
    state.results[image] = res
    state.changed.emit()
    assert panel.save_button.isEnabled()

    panel.save_button.click()  # the folder dialog is cancelled: nothing written
    assert panel.save_status.text() == "Not saved." and not list(tmp_path.glob("*.png"))
    panel.save_button.click()
    vessels_path, fov_path = tmp_path / "eye_vessels.png", tmp_path / "eye_fov.png"
    assert vessels_path.is_file() and fov_path.is_file() and not asked
    np.testing.assert_array_equal(np.asarray(read_image(vessels_path)) > 0, mask > 0)
    assert "Saved eye_vessels.png and eye_fov.png" in panel.save_status.text()

    panel.set_save_folder(tmp_path)
    assert panel.folder_label.text() == f"Folder: {tmp_path}"
    res.layers["vessels"].data_setitem((np.array([0]), np.array([0])), 1)  # a correction, then Save again
    before = vessels_path.read_bytes()
    panel.save_button.click()
    assert len(asked) == 1 and "eye_vessels.png" in asked[0], "asked before overwriting"
    assert "existing files were kept" in panel.save_status.text() and vessels_path.read_bytes() == before
    panel.save_button.click()
    assert len(asked) == 2 and np.asarray(read_image(vessels_path))[0, 0] > 0, "overwritten once agreed"

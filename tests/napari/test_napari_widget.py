"""The "Segment vessels" widget in a real napari viewer (pytest-qt; Xvfb via pytest-xvfb)."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Image, Labels

from napari_dpn._napari import _roles
from napari_dpn._napari._segment_widget import SegmentWidget
from synthetic_fundus import fundus_uint8
from widget_setup import save_random_model

pytestmark = pytest.mark.needs_display  # see conftest.py
TIMEOUT_MS = 120_000


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def tiny_model(models_dir):
    """A small random-weights 'dpn' model saved in a private user-models folder."""
    return models_dir / "tiny-test.safetensors"


@pytest.fixture
def widget(dock_widget, tiny_model, notes):
    w = dock_widget(SegmentWidget, "Segment vessels")
    w.refresh_models()
    w.select_model("tiny-test")
    w.device_combo.setCurrentText("cpu")
    yield w
    w.cancel()


def add_eye(viewer, size=96, name="eye", **kwargs):
    rgb, vessels = fundus_uint8(size)
    return viewer.add_image(rgb, name=name, rgb=True, **kwargs), vessels


def segment(qtbot, w, **kwargs):
    worker = w.run(**kwargs)
    assert worker is not None, w.status.text()
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT_MS)
    return worker


def layer(viewer, name):
    assert name in viewer.layers, [lyr.name for lyr in viewer.layers]
    return viewer.layers[name]


# ----------------------------------------------------------------------------- segmentation


def test_segment_end_to_end_adds_three_layers(qtbot, widget, notes):
    viewer = widget.viewer
    add_eye(viewer)
    assert widget.current_image().name == "eye"
    segment(qtbot, widget)

    prob = layer(viewer, "eye vessel probability")
    vessels = layer(viewer, "eye vessels")
    fov = layer(viewer, "eye FOV")
    assert isinstance(prob, Image) and isinstance(vessels, Labels) and isinstance(fov, Labels)
    p = np.asarray(prob.data)
    assert p.shape == (96, 96) and p.dtype == np.float32
    assert 0.0 <= p.min() and p.max() <= 1.0
    assert prob.colormap.name == _roles.PROBABILITY_COLORMAP  # issue 20: one colour scheme (was magma)
    assert tuple(prob.contrast_limits) == (0.0, 1.0)
    assert prob.blending == "additive" and 0.6 <= prob.opacity <= 0.8
    # vessels = probability >= the card's recommended threshold, inside the FOV
    assert widget.threshold == pytest.approx(0.5)
    inside = np.asarray(fov.data) > 0
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, (p >= 0.5) & inside)
    assert fov.visible is False
    assert inside.sum() > 0.4 * 96 * 96 and not inside.all()  # the estimated disc
    # ready to correct: paint mode, label 1, small brush, active
    assert vessels.mode == "paint" and vessels.selected_label == 1 and vessels.brush_size == 3
    assert viewer.layers.selection.active is vessels
    # time and device are shown
    assert "cpu" in widget.status.text() and " s " in widget.status.text()
    assert not notes["error"]


def test_viewer_stays_responsive_and_progress_reported(qtbot, widget, monkeypatch):
    """The job runs in a worker thread: the GUI thread keeps processing events meanwhile."""
    import napari_dpn.inference as inference

    real = inference.predict
    seen = []

    def slow_predict(loaded, rgb, device="auto", progress=None, should_stop=None, **kw):
        for i in range(5):
            time.sleep(0.1)
            progress((i + 1) / 10)
        return real(loaded, rgb, device=device, progress=progress, should_stop=should_stop)

    monkeypatch.setattr(inference, "predict", slow_predict)
    panel = widget.run_panel
    monkeypatch.setattr(panel, "on_progress", lambda f, orig=panel.on_progress: (seen.append(f), orig(f)))
    panel.bridge.progress.disconnect()
    panel.bridge.progress.connect(panel.on_progress)
    add_eye(widget.viewer)
    worker = widget.run()
    assert widget.is_running and not widget.progress.isHidden()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    timer.stop()
    assert worker is not None
    assert len(ticks) >= 10  # the event loop ran while the model was working
    assert seen and max(seen) == pytest.approx(1.0)
    assert widget.progress.isHidden() and widget.run_button.isEnabled()


def test_running_twice_updates_layers_instead_of_stacking(qtbot, widget):
    viewer = widget.viewer
    add_eye(viewer)
    segment(qtbot, widget)
    before = {lyr.name: lyr for lyr in viewer.layers}
    segment(qtbot, widget)
    after = {lyr.name: lyr for lyr in viewer.layers}
    assert list(before) == list(after)
    assert all(before[n] is after[n] for n in before)


def test_greyscale_image_is_accepted(qtbot, widget):
    rgb, _ = fundus_uint8()
    widget.viewer.add_image(rgb[..., 1], name="green")
    segment(qtbot, widget)
    assert "green vessels" in widget.viewer.layers


def test_clahe_checkbox_is_preset_from_the_card_and_passed_on(qtbot, widget, monkeypatch):
    import napari_dpn.inference as inference

    assert widget.clahe_check.isChecked() is False  # tiny-test card: clahe False
    used = []
    real = inference.predict

    def spy(loaded, rgb, **kw):
        used.append(loaded.card.input["clahe"])
        return real(loaded, rgb, **kw)

    monkeypatch.setattr(inference, "predict", spy)
    add_eye(widget.viewer)
    widget.clahe_check.setChecked(True)
    segment(qtbot, widget)
    assert used == [True]


# ----------------------------------------------------------------------------- threshold


def test_slider_rethresholds_without_recomputing(qtbot, widget, monkeypatch):
    viewer = widget.viewer
    add_eye(viewer)
    segment(qtbot, widget)
    import napari_dpn.inference as inference

    monkeypatch.setattr(inference, "predict", lambda *a, **k: pytest.fail("recomputed"))
    p = np.asarray(layer(viewer, "eye vessel probability").data)
    inside = np.asarray(layer(viewer, "eye FOV").data) > 0
    vessels = layer(viewer, "eye vessels")
    for t in (0.0, float(np.median(p)), 1.0):
        widget.set_threshold(t)
        np.testing.assert_array_equal(np.asarray(vessels.data) > 0, (p >= widget.threshold) & inside)
    widget.set_threshold(0.0)  # everything in the FOV is vessel, nothing outside it
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, inside)


def test_threshold_update_is_fast_for_a_drive_sized_image(qtbot, widget):
    viewer = widget.viewer
    add_eye(viewer, size=96)
    segment(qtbot, widget)
    res = widget.current_result()
    rng = np.random.default_rng(0)
    res.prob = rng.random((584, 565), dtype=np.float32)  # DRIVE size, no model run needed
    yy, xx = np.mgrid[:584, :565]
    res.fov = (yy - 292) ** 2 + (xx - 282) ** 2 < 270**2
    widget.set_threshold(0.3)  # first call (re)allocates
    vessels = layer(viewer, "eye vessels")
    times = []
    for t in np.linspace(0.2, 0.8, 7):
        t0 = time.perf_counter()
        widget.set_threshold(float(t))
        times.append(time.perf_counter() - t0)
    assert np.asarray(vessels.data).shape == (584, 565)
    assert np.median(times) < 0.1, times


def test_edits_lock_the_threshold_and_survive_it(qtbot, widget, monkeypatch):
    viewer = widget.viewer
    add_eye(viewer)
    segment(qtbot, widget)
    vessels = layer(viewer, "eye vessels")
    widget.set_threshold(1.0)
    assert not np.asarray(vessels.data).any()
    vessels.paint((40, 40), 1)  # a brush stroke, as the mouse would do it
    edited = np.asarray(vessels.data).copy()
    assert edited[40, 40] == 1
    assert "threshold locked" in widget.edit_status.text()
    assert not widget.slider.isEnabled() and not widget.reapply_button.isHidden()

    widget.set_threshold(0.0)  # even programmatic moves never touch the edits
    np.testing.assert_array_equal(np.asarray(vessels.data), edited)

    asked = []
    monkeypatch.setattr(widget, "_confirm", lambda *a, **k: asked.append(a) or False)
    assert widget.reapply_threshold() is False
    np.testing.assert_array_equal(np.asarray(vessels.data), edited)
    assert asked and "discards your corrections" in asked[0][1]

    monkeypatch.setattr(widget, "_confirm", lambda *a, **k: True)
    assert widget.reapply_threshold() is True
    p = np.asarray(layer(viewer, "eye vessel probability").data)
    inside = np.asarray(layer(viewer, "eye FOV").data) > 0
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, (p >= widget.threshold) & inside)
    assert widget.slider.isEnabled() and "locked" not in widget.edit_status.text()


def test_erase_and_fill_also_count_as_edits(qtbot, widget):
    viewer = widget.viewer
    add_eye(viewer)
    segment(qtbot, widget)
    vessels = layer(viewer, "eye vessels")
    widget.set_threshold(0.0)  # everything vessel
    vessels.fill((48, 48), 0)  # fill = erase everything connected (the whole FOV disc)
    assert widget.current_result().edited
    widget.set_threshold(0.7)
    assert not np.asarray(vessels.data).any()


def test_segmenting_an_edited_image_again_keeps_the_corrections(qtbot, widget, notes):
    """No question and no loss: the new result goes to the probability layer only, and
    'Re-apply threshold…' (after its own question) applies it."""
    viewer = widget.viewer
    add_eye(viewer)
    segment(qtbot, widget)
    vessels = layer(viewer, "eye vessels")
    vessels.paint((10, 10), 1)
    edited = np.asarray(vessels.data).copy()
    segment(qtbot, widget)
    assert layer(viewer, "eye vessels") is vessels
    np.testing.assert_array_equal(np.asarray(vessels.data), edited)
    assert widget.current_result().edited and not widget.slider.isEnabled()
    assert "Re-apply threshold" in widget.status.text() and "kept" in widget.status.text()
    assert any("were kept" in m for m in notes["info"])
    widget._confirm = lambda *a, **k: True
    assert widget.reapply_threshold()
    assert not widget.current_result().edited


# ----------------------------------------------------------------------------- ground truth


def test_ground_truth_metrics_errors_layer_and_youden(qtbot, widget):
    viewer = widget.viewer
    _, truth = fundus_uint8()
    add_eye(viewer)
    gt = viewer.add_labels(
        truth.astype(np.uint8), name="eye ground truth", metadata=_roles.meta("ground_truth", image="eye")
    )
    assert widget.current_ground_truth() is gt  # picked automatically for "eye"
    segment(qtbot, widget)
    text = widget.metrics_label.text()
    for key in ("Se", "Sp", "Acc", "AUC", "F1"):
        assert key in text
    m = widget.metrics
    fov = np.asarray(layer(viewer, "eye FOV").data) > 0
    pred = np.asarray(layer(viewer, "eye vessels").data) > 0
    tp = np.count_nonzero(pred & truth & fov)
    fn = np.count_nonzero(~pred & truth & fov)
    assert m["se"] == pytest.approx(tp / (tp + fn))
    assert 0.0 <= m["auc"] <= 1.0

    errors = layer(viewer, "eye errors")
    e = np.asarray(errors.data)
    np.testing.assert_array_equal(e == 1, pred & ~truth & fov)
    np.testing.assert_array_equal(e == 2, ~pred & truth & fov)
    np.testing.assert_allclose(errors.colormap.map(np.array([1]))[0][:3], (1, 0, 1))
    assert errors.colormap.map(np.array([2]))[0][1] > 0.9  # green

    widget.set_threshold(0.0)
    assert widget.metrics["se"] == pytest.approx(1.0)
    assert widget.youden_button.isEnabled()
    t = widget.apply_youden()
    assert t is not None and widget.threshold == pytest.approx(t, abs=1e-3)

    widget.set_ground_truth(None)
    assert "eye errors" not in viewer.layers
    assert not widget.youden_button.isEnabled()


def test_youden_without_ground_truth_warns(qtbot, widget, notes):
    add_eye(widget.viewer)
    segment(qtbot, widget)
    assert not widget.youden_button.isEnabled()
    assert widget.apply_youden() is None
    assert notes["warning"]


# ----------------------------------------------------------------------------- saving


def test_save_next_to_the_image_and_refuse_silent_overwrite(qtbot, widget, tmp_path, monkeypatch, notes):
    from PIL import Image as PILImage

    from napari_dpn.image_io import read_mask

    rgb, _ = fundus_uint8()
    src = tmp_path / "eye.png"
    PILImage.fromarray(rgb).save(src)
    widget.viewer.open(src, plugin="napari")
    assert widget.current_image().name == "eye"
    segment(qtbot, widget)
    vessels = layer(widget.viewer, "eye vessels")
    vessels.paint((30, 30), 1)
    paths = widget.save_annotation()
    assert paths == (tmp_path / "eye_vessels.png", tmp_path / "eye_fov.png")
    np.testing.assert_array_equal(read_mask(paths[0]), np.asarray(vessels.data) > 0)
    np.testing.assert_array_equal(read_mask(paths[1]), np.asarray(layer(widget.viewer, "eye FOV").data) > 0)
    assert set(np.unique(np.asarray(PILImage.open(paths[0])))) <= {0, 255}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    # saving again: asks; "No" keeps the files byte for byte
    before = paths[0].read_bytes()
    vessels.paint((60, 60), 1)
    asked = []
    monkeypatch.setattr(widget, "_confirm", lambda *a, **k: asked.append(a) or False)
    assert widget.save_annotation() is None
    assert asked and "Overwrite" in asked[0][1]
    assert paths[0].read_bytes() == before
    monkeypatch.setattr(widget, "_confirm", lambda *a, **k: True)
    assert widget.save_annotation() == paths
    assert read_mask(paths[0])[60, 60]


def test_save_image_without_file_asks_for_a_folder(qtbot, widget, tmp_path, monkeypatch):
    add_eye(widget.viewer, name="sample")
    segment(qtbot, widget)
    monkeypatch.setattr(widget, "_ask_folder", lambda *a: None)
    assert widget.save_annotation() is None
    assert not list(tmp_path.glob("*.png"))
    monkeypatch.setattr(widget, "_ask_folder", lambda *a: tmp_path)
    assert widget.save_annotation() == (tmp_path / "sample_vessels.png", tmp_path / "sample_fov.png")
    # a chosen folder wins over asking
    other = tmp_path / "out"
    other.mkdir()
    widget.set_save_folder(other)
    monkeypatch.setattr(widget, "_ask_folder", lambda *a: pytest.fail("asked"))
    assert widget.save_annotation()[0] == other / "sample_vessels.png"


def test_save_warns_when_target_is_ground_truth(qtbot, widget, tmp_path, monkeypatch):
    """A file opened as ground truth is never overwritten without an explicit 'Overwrite'."""
    rgb, truth = fundus_uint8()
    eye = tmp_path / "eye.png"
    from PIL import Image as PILImage

    PILImage.fromarray(rgb).save(eye)
    gt_file = tmp_path / "eye_vessels.png"
    PILImage.fromarray((truth * 255).astype(np.uint8)).save(gt_file)
    widget.viewer.add_image(rgb, name="eye", rgb=True, metadata=_roles.meta("image", path=str(eye)))
    widget.viewer.add_labels(
        truth.astype(np.uint8),
        name="eye ground truth",
        metadata=_roles.meta("ground_truth", image="eye", path=str(gt_file)),
    )
    segment(qtbot, widget)
    asked = []
    monkeypatch.setattr(widget, "_confirm", lambda *a, **k: asked.append(a) or False)
    before = gt_file.read_bytes()
    assert widget.save_annotation() is None
    assert "ground-truth" in asked[0][1]
    assert gt_file.read_bytes() == before


# ----------------------------------------------------------------------------- bad input


def test_no_image_layer(widget, notes):
    assert widget.run() is None
    assert notes["error"] and "Open a fundus photograph first" in notes["error"][0]
    assert "Open a fundus photograph first" in widget.status.text()


def test_three_d_stack(widget, notes):
    widget.viewer.add_image(np.zeros((5, 64, 64), np.uint8), name="stack")
    assert widget.run() is None
    assert "stack" in notes["error"][0] and "2-D" in notes["error"][0]


def test_labels_layer_picked_as_image(widget, notes):
    lab = widget.viewer.add_labels(np.zeros((64, 64), np.uint8), name="mask")
    assert widget.run(layer=lab) is None
    assert "labels layer" in notes["error"][0]


def test_only_labels_layer_open(widget, notes):
    widget.viewer.add_labels(np.zeros((64, 64), np.uint8), name="mask")
    assert widget.image_combo.count() == 0
    assert widget.run() is None
    assert "labels layer" in notes["error"][0]


def test_corrupt_weights_file_via_browse(widget, notes, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    n = widget.model_combo.count()
    assert widget.add_model_file(bad) is False
    assert notes["error"] and "broken.safetensors" in notes["error"][0]
    assert widget.model_combo.count() == n


def test_corrupt_weights_with_a_valid_card(qtbot, widget, notes, tiny_model, tmp_path):
    """The card reads fine but the tensors are garbage: the worker reports it, no traceback."""
    import shutil

    bad = tmp_path / "bad.safetensors"
    shutil.copy(tiny_model.with_suffix(".json"), bad.with_suffix(".json"))
    bad.write_bytes(b"\x00" * 64)
    assert widget.add_model_file(bad)
    add_eye(widget.viewer)
    segment(qtbot, widget)
    assert notes["error"] and "bad.safetensors" in notes["error"][-1]
    assert "eye vessels" not in widget.viewer.layers


def test_out_of_memory_is_reported(qtbot, widget, notes, monkeypatch):
    import napari_dpn.inference as inference

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(inference, "predict", oom)
    add_eye(widget.viewer)
    segment(qtbot, widget)
    assert notes["error"] and "Out of memory" in notes["error"][0]


def test_fallback_note_is_surfaced(qtbot, widget, notes, monkeypatch):
    import napari_dpn.inference as inference

    real = inference.predict

    def noted(*a, **k):
        pred = real(*a, **k)
        pred.note = "the GPU ran out of memory; fell back to the CPU"
        return pred

    monkeypatch.setattr(inference, "predict", noted)
    add_eye(widget.viewer)
    segment(qtbot, widget)
    assert "fell back to the CPU" in widget.status.text()
    assert notes["warning"] == ["the GPU ran out of memory; fell back to the CPU"]


def test_cancel_stops_the_worker_and_changes_nothing(qtbot, widget, monkeypatch):
    import napari_dpn.inference as inference

    def slow(loaded, rgb, device="auto", progress=None, should_stop=None, **kw):
        for _ in range(600):
            if should_stop():
                raise InterruptedError("prediction cancelled")
            time.sleep(0.01)
        pytest.fail("not cancelled")

    monkeypatch.setattr(inference, "predict", slow)
    add_eye(widget.viewer)
    widget.run()
    qtbot.wait(50)
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert "Cancelled" in widget.status.text()
    assert [lyr.name for lyr in widget.viewer.layers] == ["eye"]


# ----------------------------------------------------------------------------- models list


def test_model_list_shows_summaries_and_picks_up_new_user_models(widget, tiny_model):
    import shutil

    idx = widget.model_combo.findText("tiny-test")
    from qtpy.QtCore import Qt

    assert "dpn" in widget.model_combo.itemData(idx, Qt.ToolTipRole)
    assert "tiny-test" in widget.model_info.text()
    assert widget.model_combo.itemText(widget.model_combo.count() - 1) == "Browse…"
    # a model saved (e.g. by fine-tuning) appears on refresh
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_model.with_suffix(suffix), tiny_model.with_name("tuned" + suffix))
    import json

    card = json.loads(tiny_model.with_name("tuned.json").read_text())
    card["name"] = "tuned"
    tiny_model.with_name("tuned.json").write_text(json.dumps(card))
    assert widget.model_combo.findText("tuned") < 0
    widget.refresh_button.click()
    assert widget.model_combo.findText("tuned") >= 0
    assert widget.model_combo.currentText() == "tiny-test"  # the choice is kept


def test_devices_are_only_those_present(widget):
    from napari_dpn.devices import available_devices

    items = [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())]
    assert items == available_devices()


def test_plugin_dock_widget_from_manifest_full_flow(qtbot, make_napari_viewer, tiny_model):
    """Docked through npe2, napari passes a proxy viewer: segmenting and locking still work."""
    viewer = make_napari_viewer()
    add_eye(viewer)
    dock, w = viewer.window.add_plugin_dock_widget("napari-dpn", "Segment vessels")
    assert isinstance(w, SegmentWidget)
    w.select_model("tiny-test")
    segment(qtbot, w)
    vessels = viewer.layers["eye vessels"]
    vessels.paint((20, 20), 1)
    assert w.current_result().edited and "threshold locked" in w.edit_status.text()
    edited = np.asarray(vessels.data).copy()
    w.set_threshold(0.0)
    np.testing.assert_array_equal(np.asarray(vessels.data), edited)


def test_shipped_model_finds_the_synthetic_vessels(qtbot, make_napari_viewer, notes):
    """With the real release weights, the dark lines come out as vessels through the widget."""
    from napari_dpn.models import DEFAULT_MODEL, list_models

    if DEFAULT_MODEL not in [c.name for c in list_models()]:
        pytest.skip("shipped weights not installed")
    viewer = make_napari_viewer()
    _, truth = add_eye(viewer)
    w = SegmentWidget(viewer)
    assert w.model_combo.currentText() == DEFAULT_MODEL  # the default choice
    w.device_combo.setCurrentText("cpu")
    segment(qtbot, w)
    p = np.asarray(viewer.layers["eye vessel probability"].data)
    fov = np.asarray(viewer.layers["eye FOV"].data) > 0
    assert p[truth].mean() > 0.6 and p[fov & ~truth].mean() < 0.3
    viewer.add_labels(truth.astype(np.uint8), name="eye ground truth")
    w.set_ground_truth(viewer.layers["eye ground truth"])
    assert w.metrics["auc"] > 0.9


# ----------------------------------------------------------------------------- scale


@pytest.fixture
def scaled_model(user_models):
    """A small random-weights model whose card records a working scale (12 px/deg, DRIVE's)."""
    save_random_model(user_models, "tiny-scaled", scale={"working_ppd": 12.0, "fusion": 1.5})


def test_field_of_view_choice_sets_the_scale_and_the_status_says_which(dock_widget, scaled_model, notes, qtbot):
    w = dock_widget(SegmentWidget, "Segment vessels")
    w.refresh_models()
    w.select_model("tiny-scaled")
    w.device_combo.setCurrentText("cpu")
    layer, _ = add_eye(w.viewer, size=240)  # FOV ~216 px wide
    w.field_combo.setCurrentIndex(w.field_combo.findData(30.0))
    segment(qtbot, w, layer=layer)
    text = w.status.text()
    assert "30 deg (given)" in text and "resampled x1.67" in text  # 12 / (216 / 30) = 1.67
    assert w.fusion_check.isChecked() and "averaged with a pass at x2.5" in text  # preset from the card
    prob = w.viewer.layers[_roles.probability_name("eye")].data
    assert prob.shape == (240, 240)  # the map is in the photograph's own pixels
    w.field_combo.setCurrentIndex(w.field_combo.findData(None))
    segment(qtbot, w, layer=layer)
    assert "45 deg (assumed)" in w.status.text() and "resampled x2.5" in w.status.text()
    w.field_combo.setCurrentIndex(w.field_combo.findData("native"))
    w.fusion_check.setChecked(False)
    segment(qtbot, w, layer=layer)
    assert "native scale (no resampling)" in w.status.text() and "averaged" not in w.status.text()
    assert not notes["error"]

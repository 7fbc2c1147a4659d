"""Nothing a user makes in napari is lost or silently wrong (issue 10, the napari half).

Hostile inputs and faults, each in a real viewer (pytest-qt; Xvfb via pytest-xvfb): painting
while the network runs, switching images under a ground truth, closing the viewer or a dock in
the middle of a run, saved annotations opened again, the event loop's latency budget, and a
layout that fits a 1366x768 laptop screen.  The CLI and core cases are in tests/core/test_promises_*.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


from napari.layers import Image, Labels
from qtpy.QtCore import Qt

from napari_dpn._napari import _roles
from napari_dpn._napari._finetune_widget import FinetuneWidget
from napari_dpn._napari._segment_widget import SegmentWidget
from paths import REPO
from synthetic_fundus import fundus
from widget_setup import configure_finetune, save_random_model

pytestmark = pytest.mark.needs_display  # see conftest.py
TIMEOUT_MS = 240_000
SIZE = 96
BUDGET_S = 0.200  # the longest the event loop may be blocked


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def models_dir(models_dir):
    """conftest's private user-models folder ('tiny-test'), with a second model ('tiny-other')."""
    save_random_model(models_dir, "tiny-other", 1)
    return models_dir


def _configure_segment(w):
    w.refresh_models()
    w.select_model("tiny-test")
    w.device_combo.setCurrentText("cpu")
    return w


@pytest.fixture
def seg(dock_widget, models_dir, notes):
    w = _configure_segment(dock_widget(SegmentWidget, "Segment vessels"))
    yield w
    w.cancel()


@pytest.fixture
def both(seg):
    """(Segment widget, Fine-tune widget) in one viewer."""
    ft = configure_finetune(FinetuneWidget(seg.viewer))
    seg.viewer.window.add_dock_widget(ft, name="Fine-tune DPN")
    yield seg, ft
    ft.cancel()


def add_eye(viewer, name="eye", seed=0, **kwargs):
    rgb, vessels, disc = fundus(SIZE, seed=seed)
    layer = viewer.add_image((rgb * 255).astype(np.uint8), name=name, rgb=True, **kwargs)
    return layer, vessels, disc


def add_truth(viewer, name, truth, **meta):
    return viewer.add_labels(
        truth.astype(np.uint8),
        name=_roles.ground_truth_name(name),
        metadata=_roles.meta("ground_truth", image=name, **meta),
    )


def segment(qtbot, w, **kwargs):
    worker = w.run(**kwargs)
    assert worker is not None, w.status.text()
    qtbot.waitUntil(lambda: not w.is_running, timeout=TIMEOUT_MS)
    return worker


def write_png(path: Path, array) -> Path:
    from PIL import Image as PILImage

    PILImage.fromarray(np.asarray(array)).save(path)
    return path


def saved_annotation(folder: Path, name="eye", seed=0):
    """A photograph and the annotation 'Save annotation' wrote for it earlier."""
    from napari_dpn.image_writers import write_mask

    rgb, vessels, disc = fundus(SIZE, seed=seed)
    photo = write_png(folder / f"{name}.png", (rgb * 255).astype(np.uint8))
    corrected = vessels.copy()
    corrected[5:9, 5:9] = True  # a correction no network would make
    write_mask(folder / f"{name}_vessels.png", corrected, on_value=255)
    write_mask(folder / f"{name}_fov.png", disc, on_value=255)
    return photo, corrected, disc


def hold_predict(monkeypatch, transform=None):
    """Make inference.predict wait for the returned Event (painting happens meanwhile)."""
    import napari_dpn.inference as inference

    real = inference.predict
    gate = threading.Event()

    def held(loaded, rgb, **kw):
        gate.wait(60)
        pred = real(loaded, rgb, **kw)
        if transform is not None:
            pred.probability = transform(pred.probability)
        return pred

    monkeypatch.setattr(inference, "predict", held)
    return gate


def _paint_outside_the_fov(vessels):
    """Two edits no threshold can give (the vessels layer is empty outside the FOV)."""
    vessels.paint((2, 2), 1)
    vessels.paint((2, SIZE - 3), 1)


# ----------------------------------------------------------------------------- 1. re-runs keep edits


def test_edits_made_while_segmenting_again_are_kept(qtbot, seg, notes, monkeypatch):
    viewer = seg.viewer
    add_eye(viewer)
    segment(qtbot, seg)
    vessels = viewer.layers["eye vessels"]
    first = np.asarray(viewer.layers["eye vessel probability"].data).copy()
    gate = hold_predict(monkeypatch, transform=lambda p: 1.0 - p)
    assert seg.run() is not None
    _paint_outside_the_fov(vessels)  # the user goes on correcting while the network runs
    edited = np.asarray(vessels.data).copy()
    gate.set()
    qtbot.waitUntil(lambda: not seg.is_running, timeout=TIMEOUT_MS)
    assert viewer.layers["eye vessels"] is vessels
    np.testing.assert_array_equal(np.asarray(vessels.data), edited)
    res = seg.current_result()
    assert res.edited and not seg.slider.isEnabled()
    prob = np.asarray(viewer.layers["eye vessel probability"].data)
    np.testing.assert_allclose(prob, 1.0 - first, atol=1e-6)  # the new result is there
    assert "were kept" in seg.status.text() and "Re-apply threshold" in seg.status.text()
    assert notes["error"] == []


def test_edits_survive_segmenting_with_another_model_and_reapply_uses_it(qtbot, seg, notes):
    viewer = seg.viewer
    add_eye(viewer)
    segment(qtbot, seg)
    vessels = viewer.layers["eye vessels"]
    _paint_outside_the_fov(vessels)
    edited = np.asarray(vessels.data).copy()
    asked = []
    seg._confirm = lambda *a, **k: asked.append(a) or True
    seg.select_model("tiny-other")
    segment(qtbot, seg)
    assert asked == []  # nothing to ask: nothing is replaced
    np.testing.assert_array_equal(np.asarray(vessels.data), edited)
    assert seg.current_result().model_label == "tiny-other"
    assert any("were kept" in m for m in notes["info"])
    # Re-apply threshold (after its question) replaces the corrections by the new model's result.
    assert seg.reapply_threshold()
    prob = np.asarray(viewer.layers["eye vessel probability"].data)
    fov = np.asarray(viewer.layers["eye FOV"].data) > 0
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, (prob >= seg.threshold) & fov)
    assert len(asked) == 1 and "discards your corrections" in asked[0][1]


# ----------------------------------------------------------------------------- 2. stale ground truth


def test_ground_truth_follows_the_image(qtbot, seg):
    viewer = seg.viewer
    a, truth_a, _ = add_eye(viewer, "A", seed=0)
    b, truth_b, _ = add_eye(viewer, "B", seed=1)
    gt_a = add_truth(viewer, "A", truth_a)
    gt_b = add_truth(viewer, "B", truth_b)
    seg.set_image(a)
    assert seg.current_ground_truth() is gt_a
    segment(qtbot, seg)
    seg.set_image(b)
    assert seg.current_ground_truth() is gt_b  # not A's annotation
    segment(qtbot, seg)
    assert "'B' vs 'B ground truth'" in seg.metrics_label.text()
    pred = np.asarray(viewer.layers["B vessels"].data) > 0
    fov = np.asarray(viewer.layers["B FOV"].data) > 0
    errors = np.asarray(viewer.layers["B errors"].data)
    np.testing.assert_array_equal(errors == 2, ~pred & truth_b & fov)
    seg.set_image(a)
    assert seg.current_ground_truth() is gt_a
    assert "'A' vs 'A ground truth'" in seg.metrics_label.text()


def test_an_image_without_ground_truth_shows_none_and_hides_the_others_errors(qtbot, seg):
    viewer = seg.viewer
    a, truth_a, _ = add_eye(viewer, "A", seed=0)
    b, _, _ = add_eye(viewer, "B", seed=1)
    add_truth(viewer, "A", truth_a)
    seg.set_image(b)
    segment(qtbot, seg)
    seg.set_image(a)
    segment(qtbot, seg)
    assert viewer.layers["A errors"].visible
    seg.set_image(b)  # same size as A: A's annotation would "fit"
    assert seg.current_ground_truth() is None
    assert seg.metrics_label.text() == "No ground truth chosen."
    assert seg.metrics is None and "B errors" not in viewer.layers
    assert not viewer.layers["A errors"].visible  # A's errors never pose as B's


def test_a_ground_truth_chosen_by_hand_stays_with_its_image(qtbot, seg):
    viewer = seg.viewer
    a, truth_a, _ = add_eye(viewer, "A", seed=0)
    b, _, _ = add_eye(viewer, "B", seed=1)
    manual = viewer.add_labels(truth_a.astype(np.uint8), name="my tracing")
    seg.set_image(a)
    seg.set_ground_truth(manual)
    seg.set_image(b)
    assert seg.current_ground_truth() is None
    seg.set_image(a)
    assert seg.current_ground_truth() is manual


# ----------------------------------------------------------------------------- 3. training data


def test_an_unedited_segmentation_is_not_training_data(qtbot, both, tmp_path):
    seg, ft = both
    viewer = seg.viewer
    add_eye(viewer, "eye")
    segment(qtbot, seg)
    assert ft.pairs.train_candidates() == []
    assert ft.pairs.train_list.item(0).text() == "(none in the viewer)"
    viewer.layers["eye vessels"].paint((2, 2), 1)  # corrected: now it is an annotation
    assert [(i.name, v.name) for i, v, _ in ft.pairs.train_candidates()] == [("eye", "eye vessels")]
    assert ft.pairs.train_list.item(0).checkState() == Qt.Checked
    # Saved as it is: the user accepted it as an annotation.
    add_eye(viewer, "other", seed=2, metadata=_roles.meta("image"))
    seg.set_image(viewer.layers["other"])
    segment(qtbot, seg)
    assert [i.name for i, _, _ in ft.pairs.train_candidates()] == ["eye"]
    seg.set_save_folder(tmp_path)
    seg._ask_folder = lambda *a: tmp_path
    assert seg.save_annotation() is not None
    assert [i.name for i, _, _ in ft.pairs.train_candidates()] == ["eye", "other"]


def test_segmenting_a_validation_image_keeps_it_in_validation(qtbot, both):
    seg, ft = both
    viewer = seg.viewer
    _, truth, disc = add_eye(viewer, "val", seed=3)
    add_truth(viewer, "val", truth)
    viewer.add_labels(
        disc.astype(np.uint8), name=_roles.fov_name("val"), metadata=_roles.meta("fov", image="val", source="file")
    )
    assert ft.pairs.val_list.item(0).checkState() == Qt.Checked
    segment(qtbot, seg)
    assert ft.pairs.train_candidates() == []
    val_item = ft.pairs.val_list.item(0)
    assert val_item.text().startswith("val") and val_item.checkState() == Qt.Checked
    viewer.layers["val vessels"].paint((2, 2), 1)
    # Listed for training once corrected, but unticked: it is a validation image.
    train_item = ft.pairs.train_list.item(0)
    assert train_item.text().startswith("val")
    assert train_item.checkState() == Qt.Unchecked
    assert ft.pairs.val_list.item(0).checkState() == Qt.Checked


# ----------------------------------------------------------------------------- 4. closing during a run


def test_closing_the_viewer_during_finetuning_stops_it_and_keeps_the_checkpoint(
    qtbot, make_napari_viewer, models_dir, notes
):
    from napari_dpn.training import load_checkpoint

    viewer = make_napari_viewer()
    w = configure_finetune(FinetuneWidget(viewer))
    viewer.window.add_dock_widget(w, name="Fine-tune DPN")
    rgb, vessels, disc = fundus(SIZE, seed=0)
    viewer.add_image((rgb * 255).astype(np.uint8), name="eye", rgb=True)
    viewer.add_labels(
        vessels.astype(np.uint8), name="eye vessels", metadata=_roles.meta("vessels", image="eye", corrected=True)
    )
    viewer.add_labels(
        disc.astype(np.uint8), name="eye FOV", metadata=_roles.meta("fov", image="eye", source="estimated")
    )
    w.settings.steps_spin.setValue(100_000)
    worker = w.run()
    assert worker is not None, w.state.last_error
    qtbot.waitUntil(lambda: w.run_panel.loss_plot.n_steps >= 2, timeout=TIMEOUT_MS)
    viewer.close()
    closed = time.monotonic()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    assert time.monotonic() - closed < 30  # stopped at the next step, not 100 000 steps later
    qtbot.wait(200)  # late signals reach nobody (a crash or exception would fail the test)
    assert not (models_dir / "ft-test.safetensors").exists()
    ck = load_checkpoint(models_dir / "ft-test.ckpt.pt")
    assert ck["step"] >= 2
    assert not w.alive and notes["error"] == []


def test_closing_the_finetune_dock_cancels_the_run(qtbot, make_napari_viewer, models_dir, notes):
    from napari_dpn.training import load_checkpoint

    viewer = make_napari_viewer()
    w = configure_finetune(FinetuneWidget(viewer))
    dock = viewer.window.add_dock_widget(w, name="Fine-tune DPN")
    rgb, vessels, disc = fundus(SIZE, seed=1)
    viewer.add_image((rgb * 255).astype(np.uint8), name="eye", rgb=True)
    viewer.add_labels(
        vessels.astype(np.uint8), name="eye vessels", metadata=_roles.meta("vessels", image="eye", corrected=True)
    )
    w.settings.steps_spin.setValue(100_000)
    worker = w.run()
    qtbot.waitUntil(lambda: w.run_panel.loss_plot.n_steps >= 1, timeout=TIMEOUT_MS)
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    qtbot.wait(200)
    assert not (models_dir / "ft-test.safetensors").exists()
    assert load_checkpoint(models_dir / "ft-test.ckpt.pt")["step"] >= 1
    viewer.add_image(np.zeros((8, 8), np.uint8), name="later")  # the viewer goes on working
    assert notes["error"] == []


def test_closing_the_viewer_during_segmentation_stops_the_worker(
    qtbot, make_napari_viewer, models_dir, monkeypatch, notes
):
    import napari_dpn.inference as inference

    stopped = threading.Event()

    def endless(loaded, rgb, device="auto", progress=None, should_stop=None, **kw):
        for _ in range(6000):
            if should_stop():
                stopped.set()
                raise InterruptedError("prediction cancelled")
            time.sleep(0.01)
        raise AssertionError("never asked to stop")

    monkeypatch.setattr(inference, "predict", endless)
    viewer = make_napari_viewer()
    w = _configure_segment(SegmentWidget(viewer))
    viewer.window.add_dock_widget(w, name="Segment vessels")
    add_eye(viewer)
    worker = w.run()
    qtbot.wait(100)
    viewer.close()
    qtbot.waitUntil(stopped.is_set, timeout=20_000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=20_000)
    qtbot.wait(200)
    assert notes["error"] == []


# ----------------------------------------------------------------------------- 5. annotations come back


def test_saved_annotations_open_as_labels(qtbot, make_napari_viewer, tmp_path):
    _, corrected, _ = saved_annotation(tmp_path)
    viewer = make_napari_viewer()
    [vessels] = viewer.open(tmp_path / "eye_vessels.png", plugin="napari-dpn")
    [fov] = viewer.open(tmp_path / "eye_fov.png", plugin="napari-dpn")
    assert isinstance(vessels, Labels) and vessels.name == "eye vessels"
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, corrected)
    info = _roles.info_of(vessels)
    assert info["role"] == "vessels" and info["image"] == "eye" and info["corrected"] is True
    assert isinstance(fov, Labels) and fov.name == "eye FOV" and not fov.visible
    assert _roles.info_of(fov)["role"] == "fov"


def test_dataset_ground_truth_files_open_as_labels_of_their_image(qtbot, seg, tmp_path):
    from PIL import Image as PILImage

    viewer = seg.viewer
    rgb, truth, _ = fundus(SIZE, seed=4)
    # CHASE_DB1: Image_01L.jpg + Image_01L_1stHO.png (a PNG napari would open as an image)
    write_png(tmp_path / "Image_01L.png", (rgb * 255).astype(np.uint8))
    write_png(tmp_path / "Image_01L_1stHO.png", truth.astype(np.uint8) * 255)
    viewer.open(tmp_path / "Image_01L.png", plugin="napari")
    [gt] = viewer.open(tmp_path / "Image_01L_1stHO.png", plugin="napari-dpn")
    assert isinstance(gt, Labels) and gt.name == "Image_01L ground truth"
    assert seg.current_image().name == "Image_01L" and seg.current_ground_truth() is gt
    # DRIVE: test/1st_manual/01_manual1.gif belongs to test/images/01_test.tif
    manual = tmp_path / "DRIVE" / "test" / "1st_manual"
    manual.mkdir(parents=True)
    PILImage.fromarray(truth.astype(np.uint8) * 255).save(manual / "01_manual1.gif")
    [drive] = viewer.open(manual / "01_manual1.gif", plugin="napari-dpn")
    assert drive.name == "01_test ground truth"
    info = _roles.info_of(drive)
    assert (info["role"], info["image"]) == ("ground_truth", "01_test")
    # STARE: labels-ah/im0001.ah.ppm (second observer .vk is named so)
    PILImage.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "im0001.vk.ppm", format="PPM")
    [stare] = viewer.open(tmp_path / "im0001.vk.ppm", plugin="napari-dpn")
    assert stare.name == "im0001 ground truth (2nd observer)"


def test_a_mask_opened_as_an_image_is_not_preselected_or_segmented(qtbot, seg, tmp_path, notes):
    photo, _, _ = saved_annotation(tmp_path)
    viewer = seg.viewer
    viewer.open(photo, plugin="napari")
    [mask] = viewer.open(tmp_path / "eye_vessels.png", plugin="napari")  # napari's own reader
    assert isinstance(mask, Image) and viewer.layers.selection.active is mask
    assert seg.current_image().name == "eye"
    assert seg.run(layer=mask) is None
    assert "annotation" in notes["error"][-1] and "eye_vessels" in notes["error"][-1]


def test_opening_a_photograph_resumes_its_saved_annotation(qtbot, both, tmp_path, notes):
    seg, ft = both
    photo, corrected, disc = saved_annotation(tmp_path)
    viewer = seg.viewer
    viewer.open(photo, plugin="napari")
    qtbot.waitUntil(lambda: "eye vessels" in viewer.layers, timeout=5_000)
    vessels = viewer.layers["eye vessels"]
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, corrected)
    np.testing.assert_array_equal(np.asarray(viewer.layers["eye FOV"].data) > 0, disc)
    res = seg.current_result()
    assert res is not None and res.edited and seg.save_button.isEnabled()
    assert any("Resumed" in m for m in notes["info"])
    assert [(i.name, v.name) for i, v, _ in ft.pairs.train_candidates()] == [("eye", "eye vessels")]
    # Segmenting now adds a probability map and leaves the annotation alone.
    segment(qtbot, seg)
    assert viewer.layers["eye vessels"] is vessels
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, corrected)
    assert "eye vessel probability" in viewer.layers
    assert seg.current_result().edited


def test_an_annotation_opened_with_the_reader_is_resumed_not_duplicated(qtbot, seg, tmp_path):
    photo, _, _ = saved_annotation(tmp_path)
    viewer = seg.viewer
    seg.set_save_folder(tmp_path / "elsewhere")  # not beside: only the open layer counts
    viewer.open(tmp_path / "eye_vessels.png", plugin="napari-dpn")
    viewer.open(photo, plugin="napari")
    qtbot.waitUntil(lambda: seg.current_result() is not None, timeout=5_000)
    assert [lyr.name for lyr in viewer.layers].count("eye vessels") == 1
    assert seg.current_result().layers["vessels"] is viewer.layers["eye vessels"]
    assert seg.save_button.isEnabled() and seg.current_result().edited


def test_an_annotation_opened_after_its_photograph_is_resumed(qtbot, seg, tmp_path):
    photo, corrected, _ = saved_annotation(tmp_path)
    keep = tmp_path / "kept"
    keep.mkdir()
    (tmp_path / "eye_vessels.png").rename(keep / "eye_vessels.png")  # not beside the photograph
    viewer = seg.viewer
    viewer.open(photo, plugin="napari")
    qtbot.wait(100)
    assert seg.current_result() is None
    [vessels] = viewer.open(keep / "eye_vessels.png", plugin="napari-dpn")
    qtbot.waitUntil(lambda: seg.current_result() is not None, timeout=5_000)
    assert seg.current_result().layers["vessels"] is vessels and seg.save_button.isEnabled()
    np.testing.assert_array_equal(np.asarray(vessels.data) > 0, corrected)


def test_save_after_resuming_asks_before_overwriting(qtbot, seg, tmp_path):
    from napari_dpn.image_io import read_mask

    photo, _, _ = saved_annotation(tmp_path)
    viewer = seg.viewer
    viewer.open(photo, plugin="napari")
    qtbot.waitUntil(lambda: seg.current_result() is not None, timeout=5_000)
    vessels = viewer.layers["eye vessels"]
    vessels.paint((50, 50), 1)
    before = (tmp_path / "eye_vessels.png").read_bytes()
    asked = []
    seg._confirm = lambda *a, **k: asked.append(a) or False
    assert seg.save_annotation() is None
    assert asked and "eye_vessels.png" in asked[0][1]
    assert (tmp_path / "eye_vessels.png").read_bytes() == before
    seg._confirm = lambda *a, **k: True
    assert seg.save_annotation()[0] == tmp_path / "eye_vessels.png"
    assert read_mask(tmp_path / "eye_vessels.png")[50, 50]


def test_a_saved_annotation_of_another_size_is_not_resumed(qtbot, seg, tmp_path, notes):
    from napari_dpn.image_writers import write_mask

    rgb, _, _ = fundus(SIZE, seed=0)
    photo = write_png(tmp_path / "eye.png", (rgb * 255).astype(np.uint8))
    write_mask(tmp_path / "eye_vessels.png", np.ones((SIZE // 2, SIZE), bool), on_value=255)
    seg.viewer.open(photo, plugin="napari")
    qtbot.waitUntil(lambda: bool(notes["warning"]), timeout=5_000)
    assert "eye_vessels.png" in notes["warning"][-1] and "eye" in notes["warning"][-1]
    assert "eye vessels" not in seg.viewer.layers and seg.current_result() is None


# ----------------------------------------------------------------------------- 6. rough edges


def test_a_single_pass_shows_a_busy_bar(qtbot, seg, monkeypatch):
    gate = hold_predict(monkeypatch)
    add_eye(seg.viewer)
    seg.run()
    qtbot.wait(100)
    assert not seg.progress.isHidden()
    assert (seg.progress.minimum(), seg.progress.maximum()) == (0, 0)  # busy, not "0 %"
    gate.set()
    qtbot.waitUntil(lambda: not seg.is_running, timeout=TIMEOUT_MS)
    assert seg.progress.isHidden()


def test_a_tiled_run_shows_its_progress_and_an_eta(qtbot, seg, monkeypatch):
    import napari_dpn.inference as inference

    real = inference.predict
    gate = threading.Event()

    def tiled(loaded, rgb, progress=None, **kw):
        progress(0.25)
        time.sleep(0.2)
        progress(0.5)
        gate.wait(60)
        return real(loaded, rgb, **kw)

    monkeypatch.setattr(inference, "predict", tiled)
    add_eye(seg.viewer)
    seg.fusion_check.setChecked(False)  # one pass: its progress is the bar's
    seg.run()
    qtbot.waitUntil(lambda: seg.progress.value() == 50, timeout=30_000)
    assert seg.progress.maximum() == 100 and "ETA" in seg.progress.format()
    gate.set()
    qtbot.waitUntil(lambda: not seg.is_running, timeout=TIMEOUT_MS)


def test_undoing_every_edit_unlocks_the_threshold(qtbot, seg):
    add_eye(seg.viewer)
    segment(qtbot, seg)
    vessels = seg.viewer.layers["eye vessels"]
    _paint_outside_the_fov(vessels)
    assert not seg.slider.isEnabled() and seg.current_result().edited
    vessels.undo()
    qtbot.wait(600)
    assert not seg.slider.isEnabled()  # one edit is left
    vessels.undo()
    qtbot.waitUntil(seg.slider.isEnabled, timeout=5_000)
    assert not seg.current_result().edited and "unlocked" in seg.edit_status.text()
    assert seg.reapply_button.isHidden()
    vessels.redo()  # and redoing locks again
    qtbot.waitUntil(lambda: not seg.slider.isEnabled() or seg.current_result().edited, timeout=5_000)


def test_remove_specks_erases_small_pieces_only_in_one_undo_step(qtbot, seg, monkeypatch):
    import napari_dpn.inference as inference
    from napari_dpn.inference import Prediction

    prob = np.full((SIZE, SIZE), 0.1, np.float32)
    prob[48, 20:80] = 0.9  # a vessel, 60 px
    prob[20:80, 50] = 0.9  # crossing it: one tree
    for y, x in ((30, 30), (70, 75), (25, 70)):
        prob[y : y + 2, x : x + 2] = 0.9  # three 4-px specks
    monkeypatch.setattr(inference, "predict", lambda *a, **k: Prediction(prob.copy(), "cpu", 0.0))
    add_eye(seg.viewer)
    segment(qtbot, seg)
    vessels = seg.viewer.layers["eye vessels"]
    before = np.asarray(vessels.data).copy()
    seg.speck_spin.setValue(10)
    assert seg.remove_specks()
    after = np.asarray(vessels.data) > 0
    tree = np.zeros_like(after)
    tree[48, 20:80] = tree[20:80, 50] = True
    np.testing.assert_array_equal(after, tree & (before > 0))
    assert seg.current_result().edited and "3 speck" in seg.edit_status.text()
    vessels.undo()
    np.testing.assert_array_equal(np.asarray(vessels.data), before)


# ----------------------------------------------------------------------------- 7. latency budget


def test_large_image_never_blocks_the_viewer(qtbot, seg, stall_probe, monkeypatch):
    """Click, result arrival and choosing a ground truth on an 8-Mpx photograph each block the
    event loop for less than 200 ms.  Best of up to five tries: a stall the code causes comes
    back every time; a busy CI machine does not."""
    import napari_dpn.fov as fov_module
    import napari_dpn.inference as inference
    from napari_dpn.inference import Prediction

    h, w = 2900, 2900
    rng = np.random.default_rng(0)
    prob = rng.random((h, w), dtype=np.float32)
    yy, xx = np.ogrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * h) ** 2

    def fake_predict(loaded, rgb, **kw):  # the network is not what is measured here
        time.sleep(0.2)
        return Prediction(prob, "cpu", 0.2)

    monkeypatch.setattr(inference, "predict", fake_predict)
    monkeypatch.setattr(fov_module, "estimate_fov", lambda rgb: disc)
    viewer = seg.viewer
    photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    truth = (prob > 0.8).astype(np.uint8)
    gaps = {"click": [], "result": [], "ground truth": []}
    for attempt in range(5):
        image = viewer.add_image(photo, name=f"big {attempt}", rgb=True)
        gt = viewer.add_labels(truth, name=f"tracing {attempt}")
        seg.set_image(image)
        qtbot.wait(50)
        gaps["click"].append(stall_probe.measure(seg.run_button.click, settle_ms=20))
        gaps["result"].append(stall_probe.measure(lambda: None, until=lambda: not seg.is_running))
        gaps["ground truth"].append(
            stall_probe.measure(lambda g=gt: seg.set_ground_truth(g), until=lambda: seg.metrics is not None)
        )
        assert seg.metrics is not None and 0.0 <= seg.metrics["auc"] <= 1.0
        if all(min(v) < BUDGET_S for v in gaps.values()):
            break
    best = {k: round(min(v), 3) for k, v in gaps.items()}
    print("max event-loop stall (s), best of tries:", best)
    assert all(v < BUDGET_S for v in best.values()), best


# ----------------------------------------------------------------------------- 8. layout


def test_both_widgets_share_one_dock_area_as_tabs(qtbot, make_napari_viewer, models_dir):
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    dock_s, _ = viewer.window.add_plugin_dock_widget("napari-dpn", "Segment vessels")
    dock_f, _ = viewer.window.add_plugin_dock_widget("napari-dpn", "Fine-tune DPN")
    main = viewer.window._qt_window
    try:
        qtbot.waitUntil(lambda: dock_s in main.tabifiedDockWidgets(dock_f), timeout=5_000)
    except Exception:  # noqa: BLE001 - pytest-qt's TimeoutError derives from Exception only
        pytest.fail(f"not tabbed: {[d.windowTitle() for d in main.findChildren(QDockWidget)]}")
    assert dock_f in main.tabifiedDockWidgets(dock_s)


def test_both_widgets_fit_a_laptop_screen(qtbot, make_napari_viewer, models_dir):
    """1366x768: no horizontal scrolling, and each widget in its default state fits the height
    the dock area has (the Fine-tune body scrolls only once its results are shown)."""
    viewer = make_napari_viewer(show=True)
    main = viewer.window._qt_window
    main.resize(1366, 740)
    dock_s, seg = viewer.window.add_plugin_dock_widget("napari-dpn", "Segment vessels")
    dock_f, ft = viewer.window.add_plugin_dock_widget("napari-dpn", "Fine-tune DPN")
    qtbot.waitUntil(lambda: dock_s in main.tabifiedDockWidgets(dock_f), timeout=5_000)
    qtbot.wait(200)
    for dock, w in ((dock_s, seg), (dock_f, ft)):
        dock.raise_()
        qtbot.wait(100)
        assert w.minimumSizeHint().width() <= 380, (w, w.minimumSizeHint())
    usable = dock_f.height()
    assert seg.sizeHint().height() <= usable, (seg.sizeHint().height(), usable)
    assert ft.body.sizeHint().height() <= usable, (ft.body.sizeHint().height(), usable)
    assert not ft.scroll.horizontalScrollBar().isVisible()


# ----------------------------------------------------------------------------- 9. Qt6


def test_the_qt_extra_is_a_qt6_binding():
    """napari deprecates PyQt5 (a warning on every start): `pip install napari-dpn[napari,qt]`
    installs a Qt6 binding, which these tests run on when it is installed."""
    import re

    text = (REPO / "pyproject.toml").read_text()
    qt = re.search(r"^qt\s*=\s*\[(.*?)\]", text, re.MULTILINE | re.DOTALL).group(1)
    assert ("PyQt6" in qt or "PySide6" in qt) and "PyQt5" not in qt

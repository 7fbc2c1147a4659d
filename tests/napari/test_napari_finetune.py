"""The "Fine-tune DPN" widget in a real napari viewer, through the real worker (pytest-qt, Xvfb).

Trainings are tiny (96 px synthetic fundus, crop 48, a few steps from the shipped model) so the
whole file runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


from qtpy.QtCore import Qt

from napari_dpn._napari import _roles
from napari_dpn._napari._finetune_data import NO_PAIRS_MESSAGE
from napari_dpn._napari._finetune_widget import FinetuneWidget
from napari_dpn._napari._segment_widget import SegmentWidget
from synthetic_fundus import fundus
from widget_setup import configure_finetune

pytestmark = pytest.mark.needs_display  # see conftest.py
TIMEOUT_MS = 240_000
SIZE = 96


@pytest.fixture
def widget(dock_widget, user_models, notes):
    w = configure_finetune(dock_widget(FinetuneWidget, "Fine-tune DPN"))
    yield w
    w.cancel()


def add_pair(viewer, name="eye", seed=0, fov=True, label=None):
    """An image layer with its corrected '<name> vessels' (and '<name> FOV') layers, as Segment
    makes them once the user edited the vessels."""
    rgb, vessels, disc = fundus(SIZE, seed=seed)
    image = viewer.add_image((rgb * 255).astype(np.uint8), name=name, rgb=True)
    lab = vessels if label is None else label
    viewer.add_labels(
        np.asarray(lab, np.uint8),
        name=_roles.vessels_name(name),
        metadata=_roles.meta("vessels", image=name, corrected=True),
    )
    if fov:
        viewer.add_labels(
            disc.astype(np.uint8),
            name=_roles.fov_name(name),
            metadata=_roles.meta("fov", image=name, source="estimated"),
        )
    return image


def add_validation(viewer, name="val", seed=3):
    rgb, vessels, disc = fundus(SIZE, seed=seed)
    viewer.add_image((rgb * 255).astype(np.uint8), name=name, rgb=True)
    viewer.add_labels(
        vessels.astype(np.uint8), name=_roles.ground_truth_name(name), metadata=_roles.meta("ground_truth", image=name)
    )
    viewer.add_labels(
        disc.astype(np.uint8), name=_roles.fov_name(name), metadata=_roles.meta("fov", image=name, source="file")
    )


def start(w):
    worker = w.run()
    assert worker is not None, (w.run_panel.status.text(), w.state.last_error)
    return worker


def wait_idle(qtbot, w, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not w.is_running, timeout=timeout)


# ----------------------------------------------------------------------------- pairs


def test_pairs_are_found_in_the_viewer_and_in_a_folder(widget, tmp_path):
    from napari_dpn.image_writers import write_mask

    viewer = widget.viewer
    add_pair(viewer, "eye")
    add_pair(viewer, "other", seed=1, fov=False)
    add_validation(viewer)
    names = [(img.name, v.name, f.name if f is not None else None) for img, v, f in widget.pairs.train_candidates()]
    assert names == [("eye", "eye vessels", "eye FOV"), ("other", "other vessels", None)]
    assert [(i.name, g.name) for i, g, _ in widget.pairs.val_candidates()] == [("val", "val ground truth")]
    assert widget.pairs.train_list.count() == 2 and widget.pairs.val_list.count() == 1

    # A folder written in the Segment widget's naming convention.
    from skimage.io import imsave

    rgb, vessels, disc = fundus(SIZE, seed=5)
    imsave(tmp_path / "img1.png", (rgb * 255).astype(np.uint8), check_contrast=False)
    write_mask(tmp_path / "img1_vessels.png", vessels, on_value=255)
    write_mask(tmp_path / "img1_fov.png", disc, on_value=255)
    widget.pairs.set_train_folder(tmp_path)
    assert "1 annotated image" in widget.pairs.train_folder_label.text()

    widget.pairs.set_checked("train", "other", False)
    train, val, no_fov = widget.pairs.collect_pairs()
    assert [p.name for p in train] == ["eye", "img1"]
    assert [p.name for p in val] == ["val"]
    assert no_fov == []
    rgb0, lab0, fov0 = train[0].load()
    assert rgb0.shape == (SIZE, SIZE, 3) and lab0.dtype == bool and fov0.dtype == bool
    rgb1, lab1, fov1 = train[1].load()
    assert lab1.sum() == vessels.sum() and fov1.sum() == disc.sum()


# ----------------------------------------------------------------------------- end to end


def test_finetune_end_to_end_saves_a_model_segment_lists_at_once(qtbot, widget, notes, user_models):
    from napari_dpn.models import list_models, load_model

    viewer = widget.viewer
    add_pair(viewer, "eye")
    add_validation(viewer)
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment vessels")
    assert "ft-test" not in [seg.model_combo.itemText(i) for i in range(seg.model_combo.count())]

    widget.settings.steps_spin.setValue(4)
    widget.run_panel.loss_plot.every_steps = 2
    widget.run_panel.loss_plot.min_interval = 0.0
    start(widget)
    assert widget.is_running and not widget.run_panel.run_button.isEnabled()
    wait_idle(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    assert widget.run_panel.run_button.isEnabled() and not widget.run_panel.cancel_button.isEnabled()

    # The loss plot got every step, total and per head.
    assert widget.run_panel.loss_plot.steps == [1, 2, 3, 4]
    x, y = widget.run_panel.loss_plot.line_data("total")
    assert list(x) == [1, 2, 3, 4] and np.all(np.isfinite(y)) and np.all(y > 0)
    for head in ("aux1", "aux2", "aux3", "main"):
        assert np.all(np.isfinite(widget.run_panel.loss_plot.line_data(head)[1]))
    assert widget.run_panel.loss_plot.draw_count >= 3
    assert widget.run_panel.progress.value() == 4 and widget.run_panel.progress.maximum() == 4

    # The table holds before and after values of every metric.
    values = widget.results.table_values()
    for key in ("se", "sp", "acc", "auc", "f1", "threshold"):
        before, after = values[key]
        assert before is not None and after is not None, (key, values)
        assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    assert values["auc"][0] > 0.5
    result = widget.state.run.result
    assert not result.cancelled and result.steps == 4
    assert values["auc"][1] == pytest.approx(result.metrics_after["auc"], abs=1e-4)
    assert f"{result.threshold:.3f}" in widget.results.result_label.text()

    # Saved to the user models folder, listed by the registry and by the Segment widget at once.
    assert result.model_path == user_models / "ft-test.safetensors"
    assert (user_models / "ft-test.json").is_file()
    assert "ft-test" in [c.name for c in list_models()]
    loaded = load_model("ft-test")
    assert loaded.card.base_model == "dpn-release-drive"
    assert loaded.card.threshold == pytest.approx(result.threshold)
    assert "ft-test" in [seg.model_combo.itemText(i) for i in range(seg.model_combo.count())]
    assert "ft-test" in [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert any("ft-test" in m for m in notes["info"])


def test_cancel_keeps_a_loadable_checkpoint_and_returns_to_idle(qtbot, widget, notes, user_models):
    from napari_dpn.models import list_models
    from napari_dpn.training import load_checkpoint

    viewer = widget.viewer
    add_pair(viewer, "eye")
    add_validation(viewer)
    widget.settings.steps_spin.setValue(500)
    start(widget)
    qtbot.waitUntil(lambda: widget.run_panel.loss_plot.n_steps >= 1, timeout=TIMEOUT_MS)
    widget.cancel()
    assert not widget.run_panel.cancel_button.isEnabled()
    wait_idle(qtbot, widget, timeout=120_000)
    assert notes["error"] == [], notes["error"]
    assert widget.run_panel.run_button.isEnabled() and not widget.run_panel.cancel_button.isEnabled()
    assert widget.settings.steps_spin.isEnabled()

    result = widget.state.run.result
    assert result.cancelled and 1 <= result.steps < 500
    # Stopped within one step of the request.
    assert result.steps <= widget.run_panel.loss_plot.n_steps + 1
    ck = load_checkpoint(result.checkpoint)
    assert ck["step"] == result.steps
    assert "ft-test" not in [c.name for c in list_models()]
    assert "Cancelled" in widget.results.result_label.text()
    # Before and after (the cancelled weights) are in the table.
    values = widget.results.table_values()
    assert values["auc"][0] is not None and values["auc"][1] is not None
    assert not widget.results.save_button.isHidden() and widget.results.save_button.isEnabled()

    # The checkpoint becomes a model on request.
    assert widget.save_checkpoint_as_model() is not None
    wait_idle(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    assert "ft-test" in [c.name for c in list_models()]
    saved = widget.state.run.result
    assert not saved.cancelled and saved.steps == result.steps
    assert widget.results.save_button.isHidden()


# ----------------------------------------------------------------------------- bad input


def test_no_pairs_shows_a_message(widget, notes):
    assert widget.run() is None
    assert notes["error"] == [NO_PAIRS_MESSAGE]
    assert widget.run_panel.status.text() == NO_PAIRS_MESSAGE


def test_bad_settings_show_messages(widget, notes):
    add_pair(widget.viewer, "eye")
    widget.settings.lr_edit.setText("fast")
    assert widget.run() is None
    assert "learning rate" in notes["error"][-1]
    widget.settings.lr_edit.setText("1e-4")
    widget.settings.name_edit.setText("my model/1")
    assert widget.run() is None
    assert "name" in notes["error"][-1]
    widget.settings.name_edit.setText("dpn-release-drive")
    assert widget.run() is None
    assert "shipped model" in notes["error"][-1]
    assert not widget.is_running


def test_empty_folder_shows_a_message(widget, notes, tmp_path):
    widget.pairs.set_train_folder(tmp_path)
    assert "0 annotated" in widget.pairs.train_folder_label.text()
    assert widget.run() is None
    assert "no annotated images" in notes["error"][-1]


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("size", "must be the same size"),
        ("empty", "empty annotation"),
    ],
)
def test_bad_pairs_show_the_engine_message_not_a_traceback(qtbot, widget, notes, problem, expected):
    if problem == "size":
        add_pair(widget.viewer, "eye", label=np.zeros((SIZE - 16, SIZE), np.uint8) + 1)
    else:
        add_pair(widget.viewer, "eye", label=np.zeros((SIZE, SIZE), np.uint8))
    widget.settings.steps_spin.setValue(3)
    start(widget)
    wait_idle(qtbot, widget)
    assert len(notes["error"]) == 1, notes
    assert expected in notes["error"][0] and notes["error"][0].startswith("eye")
    assert "Traceback" not in notes["error"][0]
    assert widget.run_panel.status.text() == notes["error"][0]
    assert widget.run_panel.run_button.isEnabled() and widget.state.run.result is None


def test_missing_fov_is_announced_and_estimated(qtbot, widget, notes):
    add_pair(widget.viewer, "eye", fov=False)
    widget.settings.steps_spin.setValue(2)
    start(widget)
    assert any("No FOV mask for eye" in m for m in notes["info"]), notes
    wait_idle(qtbot, widget)
    assert notes["error"] == []
    assert "no FOV mask given" in widget.run_panel.log.toPlainText()
    # No validation images: the table says so and the threshold comes from the training image.
    assert widget.results.table_values()["auc"] == (None, None)
    assert "training image" in widget.results.result_label.text()


def test_docked_through_npe2_picks_up_what_segment_made(qtbot, make_napari_viewer, user_models, notes):
    """Both widgets from the manifest (napari passes proxy viewers): a segmented image becomes a
    training pair without any renaming."""
    viewer = make_napari_viewer()
    rgb, _, _ = fundus(SIZE, seed=0)
    viewer.add_image((rgb * 255).astype(np.uint8), name="eye", rgb=True)
    _, seg = viewer.window.add_plugin_dock_widget("napari-dpn", "Segment vessels")
    _, w = viewer.window.add_plugin_dock_widget("napari-dpn", "Fine-tune DPN")
    assert isinstance(w, FinetuneWidget)
    assert w.pairs.train_list.item(0).flags() == Qt.NoItemFlags  # "(none in the viewer)"
    seg.select_model("dpn-release-drive")
    seg.device_combo.setCurrentText("cpu")
    seg.run()
    qtbot.waitUntil(lambda: not seg.is_running, timeout=TIMEOUT_MS)
    viewer.layers["eye vessels"].paint((40, 40), 1)  # a correction
    names = [(i.name, v.name, f.name) for i, v, f in w.pairs.train_candidates()]
    assert names == [("eye", "eye vessels", "eye FOV")]
    train, val, no_fov = w.pairs.collect_pairs()
    assert [p.name for p in train] == ["eye"] and val == [] and no_fov == []
    assert train[0].label[40, 40] and train[0].label.shape == (SIZE, SIZE)

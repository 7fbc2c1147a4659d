"""Issue #20 items 2, 4 and 13 (fine-tune half) in the Fine-tune DPN widget, in a real napari viewer
through the real worker: the card keeps its base's rule and scale, the before/after table compares
each model at its own threshold, Resume, and why a folder has no pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from PIL import Image
from qtpy.QtCore import Qt

from napari_dpn._napari import _roles
from napari_dpn._napari._finetune_widget import FinetuneWidget
from napari_dpn.models import load_model
from synthetic_fundus import fundus
from widget_setup import configure_finetune

pytestmark = pytest.mark.needs_display  # see conftest.py
TIMEOUT_MS = 240_000
SIZE = 96
DATASETS = Path("/work/shared/datasets")


@pytest.fixture
def widget(dock_widget, user_models, notes):
    w = configure_finetune(dock_widget(FinetuneWidget, "Fine-tune DPN"))
    yield w
    w.cancel()


def add_pair(viewer, name="eye", seed=0):
    rgb, vessels, disc = fundus(SIZE, seed=seed)
    viewer.add_image((rgb * 255).astype(np.uint8), name=name, rgb=True)
    viewer.add_labels(
        vessels.astype(np.uint8),
        name=_roles.vessels_name(name),
        metadata=_roles.meta("vessels", image=name, corrected=True),
    )
    viewer.add_labels(disc.astype(np.uint8), name=_roles.fov_name(name), metadata=_roles.meta("fov", image=name))


def add_validation(viewer, name="val", seed=3):
    rgb, vessels, disc = fundus(SIZE, seed=seed)
    viewer.add_image((rgb * 255).astype(np.uint8), name=name, rgb=True)
    viewer.add_labels(
        vessels.astype(np.uint8), name=_roles.ground_truth_name(name), metadata=_roles.meta("ground_truth", image=name)
    )
    viewer.add_labels(disc.astype(np.uint8), name=_roles.fov_name(name), metadata=_roles.meta("fov", image=name))


def wait_idle(qtbot, w, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not w.is_running, timeout=timeout)


def test_the_card_keeps_the_shipped_rule_and_the_table_compares_at_each_models_threshold(qtbot, widget, notes):
    base = load_model("dpn-release-drive").card
    add_pair(widget.viewer, "eye")
    add_validation(widget.viewer)
    widget.settings.steps_spin.setValue(2)
    assert widget.run() is not None, widget.state.last_error
    wait_idle(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    card = load_model(widget.state.run.result.model_path).card
    # The shipped models' rule, on the validation images, not the Youden point.
    assert card.threshold_rule.startswith("accuracy-maximising point on the 1 validation images")
    assert card.training["settings"]["scale"] == "auto"  # trained as segment resamples for the base
    assert card.scale["working_ppd"] == base.scale["working_ppd"]
    values = widget.results.table_values()
    assert values["threshold"][0] == pytest.approx(base.threshold, abs=5e-5)  # Before: the base as used
    assert values["threshold"][1] == pytest.approx(card.threshold, abs=5e-5)  # After: the new card's
    assert "max accuracy" in widget.results.table.toolTip()


def test_resume_a_cancelled_run_up_to_the_steps_set(qtbot, widget, notes, user_models):
    add_pair(widget.viewer, "eye")
    widget.settings.steps_spin.setValue(500)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.run_panel.loss_plot.n_steps >= 1, timeout=TIMEOUT_MS)
    widget.cancel()
    wait_idle(qtbot, widget)
    stopped = widget.state.run.result
    assert stopped.cancelled and "Resume" in widget.run_panel.status.text()
    assert widget.run_panel.resume_button.isEnabled()
    widget.settings.steps_spin.setValue(stopped.steps + 2)
    qtbot.mouseClick(widget.run_panel.resume_button, Qt.LeftButton)
    wait_idle(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    done = widget.state.run.result
    assert not done.cancelled and done.steps == stopped.steps + 2
    assert load_model(done.model_path).card.training["steps"] == stopped.steps + 2


def test_resume_from_a_checkpoint_file_never_replaces_a_model(qtbot, widget, notes, user_models):
    add_pair(widget.viewer, "eye")
    widget.settings.steps_spin.setValue(2)
    assert widget.run() is not None
    wait_idle(qtbot, widget)
    first = widget.state.run.result
    before = first.model_path.read_bytes()
    # Later (the widget reopened): pick the checkpoint file and train on to step 4.
    widget.state.run = None
    widget._ask_checkpoint = lambda: first.checkpoint
    widget.settings.steps_spin.setValue(4)
    widget.run_panel.resume_button.click()
    wait_idle(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    again = widget.state.run.result
    assert again.steps == 4 and again.model_path != first.model_path
    assert first.model_path.read_bytes() == before


def test_resume_at_too_few_steps_says_so(qtbot, widget, notes):
    add_pair(widget.viewer, "eye")
    widget.settings.steps_spin.setValue(2)
    assert widget.run() is not None
    wait_idle(qtbot, widget)
    widget.run_panel.resume_button.click()
    assert "set Steps above 2" in notes["error"][-1]
    assert not widget.is_running


def test_a_folder_without_pairs_says_what_it_looked_for(widget, tmp_path):
    rgb = fundus(64)[0]
    Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp_path / "21_training.tif")
    widget.pairs.set_train_folder(tmp_path)
    text = widget.pairs.train_folder_label.text()
    assert "0 annotated image(s)" in text and "<image>_vessels.png" in text and "21_manual1.gif" in text


def test_drive_style_labels_in_a_folder_are_pairs(widget, tmp_path):
    rgb, label, _ = fundus(64)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp_path / "21_training.tif")
    Image.fromarray(label.astype(np.uint8) * 255).save(tmp_path / "21_manual1.gif")
    widget.pairs.set_train_folder(tmp_path)
    assert "1 annotated image(s)" in widget.pairs.train_folder_label.text()


@pytest.mark.skipif(not (DATASETS / "DRIVE" / "training" / "images").is_dir(), reason="DRIVE is not installed")
def test_the_drive_release_folder_gives_its_training_pairs(widget):
    widget.pairs.set_train_folder(DATASETS / "DRIVE" / "training" / "images")
    assert "DRIVE release: its 20 training images" in widget.pairs.train_folder_label.text()
    train, _, _ = widget.pairs.collect_pairs()
    assert len(train) == 20

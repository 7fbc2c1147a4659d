"""*Fine-tune on saved* in *Correct a folder* (issue 20, items 6 and 17): the running panel
(progress with step/steps and ETA, live loss, Cancel that leaves no model and the session on its
old model, a viewer that never stalls > 200 ms), and model names that never collide: two
folders both called ``photos`` each keep their own model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_dpn import session as S
from napari_dpn import session_finetune
from synthetic_fundus import fundus
from widget_setup import save_random_model

TIMEOUT_MS = 120_000
SIZE = 96
BUDGET_S = 0.200


def make_photos(folder):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(3):
        rgb, _, _ = fundus(SIZE, seed=i)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"eye{i}.png")
    return folder


def make_widget(viewer_factory):
    from napari_dpn._napari._session_widget import SessionWidget

    viewer = viewer_factory()
    w = SessionWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correct a folder")
    w.refresh_models()
    w.select_model("tiny-test")
    w.device_combo.setCurrentText("cpu")
    return w


@pytest.fixture
def sw(make_napari_viewer, models_dir, notes, qtbot):
    w = make_widget(make_napari_viewer)
    yield w
    w.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)


def settle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)


def correct_first_image(qtbot, w, folder):
    """Open the folder, paint the first image's map into its truth (a correction), move on."""
    assert w.open_folder(folder)
    qtbot.waitUntil(lambda: w.shown is not None, timeout=TIMEOUT_MS)
    w.layers["vessels"].data_setitem(np.nonzero(fundus(SIZE, seed=0)[1]), 1)
    w.next()
    qtbot.waitUntil(lambda: w.shown is not None and w.shown.index == 1, timeout=TIMEOUT_MS)
    settle(qtbot, w)
    assert w.session.entries[0].state == "saved"


def model_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ----------------------------------------------------------------------------- item 6


@pytest.mark.needs_display
def test_finetune_on_saved_shows_progress_eta_loss_and_cancel_keeps_the_old_model(
    qtbot, sw, tmp_path, models_dir, stall_probe, notes
):
    folder = make_photos(tmp_path / "photos")
    correct_first_image(qtbot, sw, folder)
    before = model_files(models_dir)
    sw.ft_steps.setValue(100_000)  # far more than the test waits for

    def steps_shown() -> bool:
        panel = getattr(sw, "ft_panel", None)
        return panel is not None and panel.progress.value() >= 3 and panel.plotted_steps >= 1

    gap = stall_probe.measure(sw.ft_button.click, until=steps_shown, timeout_ms=60_000)
    assert gap < BUDGET_S, f"the viewer stalled {gap * 1000:.0f} ms starting and running the fine-tune"
    panel = sw.ft_panel
    assert not panel.isHidden() and sw.layout().indexOf(panel) >= 0 and panel.cancel_button.isEnabled()
    text = panel.progress.format()
    assert panel.progress.maximum() == 100_000 and "/100000" in text and "ETA" in text, text
    assert not sw.ft_button.isEnabled(), "one run at a time"
    assert not sw.folder_section.is_expanded(), "the Folder section folds to make room for the plot"

    gap = stall_probe.measure(panel.cancel_button.click, until=lambda: not sw.busy)
    assert gap < BUDGET_S, f"the viewer stalled {gap * 1000:.0f} ms on Cancel"
    assert "cancelled" in panel.progress.format() and not panel.cancel_button.isEnabled()
    assert model_files(models_dir) == before, "no model, card or checkpoint is left by a cancelled run"
    assert sw.session.models == [] and S.Session.open(folder).models == []
    assert sw.model_picker.combo.currentText() == "tiny-test", "the session keeps its model"
    assert "cancelled" in sw.status.text() and "no model" in sw.status.text()
    assert sw.ft_button.isEnabled()
    assert sw.folder_section.is_expanded() and not panel.is_expanded(), "the panel folds to its outcome"
    assert "cancelled" in panel.summary.text()
    assert notes["error"] == [], notes["error"]


@pytest.mark.needs_display
def test_finetune_on_saved_runs_to_the_end_with_the_panel(qtbot, sw, tmp_path, models_dir, notes):
    folder = make_photos(tmp_path / "photos")
    correct_first_image(qtbot, sw, folder)
    truth = fundus(SIZE, seed=1)[1]
    sw.layers["vessels"].data_setitem(np.nonzero(truth), 1)  # eye1, on screen, corrected
    sw.ft_steps.setValue(3)
    assert sw.finetune()
    settle(qtbot, sw)
    assert notes["error"] == [], notes["error"]
    assert (S.Session.open(folder).saved_mask(1) >= truth).all(), "the corrections on screen are saved first"
    assert sw.session.models[0]["images"] == ["eye0.png", "eye1.png"] and sw.edits == 0
    panel = sw.ft_panel
    assert panel.n_steps == 3 and panel.plotted_steps == 3 and panel.progress.value() == 3
    assert not panel.plot.pixmap().isNull(), "the loss plot shows every step"
    assert panel.progress.format().startswith("done · 3 steps"), panel.progress.format()
    assert sw.model_picker.combo.currentText() == "photos-ft1"
    record = sw.session.models[0]
    assert record["name"] == "photos-ft1" and sha256(record["path"]) == record["sha256"]


# ----------------------------------------------------------------------------- item 17


@pytest.mark.needs_display
def test_two_folders_called_photos_each_keep_their_own_model(qtbot, sw, tmp_path, models_dir, notes):
    first, second = make_photos(tmp_path / "a" / "photos"), make_photos(tmp_path / "b" / "photos")
    records = []
    for folder in (first, second):
        correct_first_image(qtbot, sw, folder)
        sw.ft_steps.setValue(3)
        assert sw.finetune()
        settle(qtbot, sw)
        assert notes["error"] == [], notes["error"]
        (record,) = sw.session.models
        records.append((folder, record, sha256(record["path"])))
        assert sw.model_picker.combo.currentText() == record["name"], "the new model is the one chosen"
    (a, rec_a, sha_a), (b, rec_b, sha_b) = records
    assert rec_a["path"] != rec_b["path"] and rec_a["name"] != rec_b["name"]
    assert {rec_a["name"], rec_b["name"]} == {"photos-ft1", "photos-ft2"}
    # Each session (as reopened from its file) points at its own model, still as it was saved.
    for folder, rec, sha in records:
        (kept,) = S.Session.open(folder).models
        assert kept["path"] == rec["path"] and sha256(kept["path"]) == sha
        card = json.loads(Path(kept["path"][: -len(".safetensors")] + ".json").read_text())
        assert card["name"] == rec["name"]


def test_a_model_named_so_meanwhile_is_never_replaced(tmp_path, models_dir):
    """The name check and the save do not race: a model that takes the name during training
    is kept, and this run's model is saved (and recorded) under another name."""
    from napari_dpn.training import StepEvent

    folder = make_photos(tmp_path / "photos")
    session = S.Session.open(folder)
    rgb = fundus(SIZE, seed=0)
    session.save(0, rgb[1], None)
    planted = []

    def meanwhile(event):
        if isinstance(event, StepEvent) and not planted:
            planted.append(save_random_model(models_dir, name="photos-ft1", seed=5))

    result = session.finetune("tiny-test", steps=2, device="cpu", callback=meanwhile)
    assert planted and result.model_path is not None
    assert result.model_path != planted[0] and result.card.name == "photos-ft1-2"
    assert json.loads(planted[0].with_suffix(".json").read_text())["description"] == "Random weights for tests."
    assert session.models[0]["path"] == str(result.model_path) and session.models[0]["name"] == "photos-ft1-2"
    # The next run's name skips every name taken, whatever the session's own count says.
    assert session_finetune.free_model_name("photos", models_dir) == "photos-ft2"
    assert session_finetune.free_model_name("my photos/", models_dir) == "my-photos-ft1"

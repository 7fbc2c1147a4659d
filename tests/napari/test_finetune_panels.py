"""Each part of the Fine-tune widget alone: the state object without Qt, and each panel built
on a :class:`FinetuneState` without the widget (or a napari viewer) around it."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Image, Labels

from napari_dpn._napari import _roles
from napari_dpn._napari._finetune_state import FinetuneState, Outcome, Run
from napari_dpn.errors import InputError
from synthetic_fundus import fundus

METRICS = {"se": 0.7, "sp": 0.97, "acc": 0.95, "auc": 0.96, "f1": 0.8, "threshold": 0.45}


def test_the_state_alone_checks_the_settings_and_announces_changes():
    state = FinetuneState()
    seen = []
    state.events.settings.connect(lambda: seen.append("settings"))
    state.events.pairs.connect(lambda: seen.append("pairs"))
    state.update_settings(lr="fast", name="ok-name")
    with pytest.raises(InputError, match="learning rate"):
        state.make_config()
    state.update_settings(lr="1e-4", name="my model/1")
    with pytest.raises(InputError, match="name"):
        state.make_config()
    state.set_folder("train", "~/annotations")
    assert state.train_folder == Path("~/annotations").expanduser()
    assert seen == ["settings", "settings", "pairs"]


@pytest.mark.needs_display
def test_the_results_panel_alone_shows_a_cancelled_run(qtbot):
    from napari_dpn._napari._finetune_results import ResultsPanel

    state = FinetuneState()
    panel = ResultsPanel(state)
    qtbot.addWidget(panel)
    state.run = Run(
        config=SimpleNamespace(steps=10), train_pairs=[], val_pairs=[], init="x", out_dir=Path(), description=""
    )
    result = SimpleNamespace(cancelled=True, steps=3, checkpoint=Path("m.ckpt.pt"), metrics_before=METRICS)
    state.returned(Outcome(result=result, after={**METRICS, "auc": 0.97}))
    assert panel.table_values()["auc"] == (0.96, 0.97)
    assert "Cancelled at step 3" in panel.result_label.text() and "0.450" in panel.result_label.text()
    assert not panel.save_button.isHidden() and "step 3" in panel.save_button.text()
    state.set_running(True)
    assert not panel.save_button.isEnabled()


@pytest.mark.needs_display
def test_the_run_panel_alone_follows_events_from_a_worker_thread(qtbot):
    from napari_dpn._napari._finetune_run import RunPanel
    from napari_dpn.training import StepEvent

    state = FinetuneState()
    panel = RunPanel(state)
    qtbot.addWidget(panel)
    state.set_running(True)
    assert not panel.run_button.isEnabled() and panel.cancel_button.isEnabled()
    panel.started("Fine-tuning…", fresh=True)
    report = panel.reporter()
    heads = {"aux1": 0.3, "aux2": 0.3, "aux3": 0.2, "main": 0.2}
    worker = threading.Thread(target=lambda: [report(StepEvent(s, 4, 1.0, heads, 0.1, 0.1)) for s in (1, 2, 3)])
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: panel.progress.value() == 3)
    assert panel.progress.maximum() == 4 and panel.loss_plot.steps == [1, 2, 3]
    state.set_running(False)
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()


@pytest.mark.needs_display
def test_the_pairs_panel_alone_lists_ticks_and_collects(qtbot):
    from napari_dpn._napari._finetune_pairs import PairsPanel

    rgb, vessels, disc = fundus(64)
    image = Image((rgb * 255).astype(np.uint8), name="eye", rgb=True)
    corrected = Labels(vessels.astype(np.uint8), name="eye vessels", metadata=_roles.meta("vessels", corrected=True))
    other = Image((rgb * 255).astype(np.uint8), name="raw", rgb=True)
    output = Labels(vessels.astype(np.uint8), name="raw vessels", metadata=_roles.meta("vessels", image="raw"))
    viewer = SimpleNamespace(layers=[image, corrected, other, output])  # no napari viewer needed
    state = FinetuneState()
    panel = PairsPanel(state, viewer)
    qtbot.addWidget(panel)
    panel.refresh([])
    assert [i.name for i, _, _ in panel.train_candidates()] == ["eye"]  # a bare output is no pair
    train, val, no_fov = panel.collect_pairs()
    assert [p.name for p in train] == ["eye"] and val == [] and no_fov == ["eye"]
    panel.set_checked("train", "eye", False)
    assert state.checked == {("train", id(image), id(corrected)): False}
    with pytest.raises(InputError):
        panel.collect_pairs()
    state.set_running(True)
    assert not panel.train_list.isEnabled() and not panel.train_section.is_expanded()


@pytest.mark.needs_display
def test_the_settings_panel_alone_writes_every_change_to_the_state(qtbot, models_dir):
    from napari_dpn._napari._finetune_settings import SettingsPanel
    from widget_setup import save_random_model

    save_random_model(models_dir, "tiny-other", 1)
    state = FinetuneState()
    panel = SettingsPanel(state)
    qtbot.addWidget(panel)
    panel.model_picker.refresh()  # the widget lists the models at start-up
    panel.model_picker.select_model("tiny-test")  # a base model names the new one
    assert panel.name_edit.text().startswith("tiny-test-ft-") and state.settings.name == panel.name_edit.text()
    assert panel.folder_info.text().startswith("in ")

    panel.steps_spin.setValue(25)
    panel.crop_spin.setValue(64)
    panel.lr_edit.setText("3e-4")
    panel.augment_check.setChecked(False)
    s = state.settings
    assert (s.steps, s.crop, s.lr, s.augment) == (25, 64, "3e-4", False)
    assert "tiny-test · 25 steps · crop 64 · lr 3e-4" in panel.summary.text() and "no augment" in panel.summary.text()

    qtbot.keyClicks(panel.name_edit, "-mine")  # the user types a name: another base model keeps it
    assert state.settings.name_edited and state.settings.name.endswith("-mine")
    panel.model_picker.select_model("tiny-other")
    assert state.settings.name.endswith("-mine") and "tiny-other" in panel.summary.text()
    panel.forget_name()
    assert not state.settings.name_edited

    state.set_running(True)  # the settings of a running fine-tune cannot change under it
    assert not any(w.isEnabled() for w in (panel.model_picker.combo, panel.steps_spin, panel.lr_edit, panel.name_edit))
    state.set_running(False)
    assert panel.steps_spin.isEnabled() and panel.model_picker.combo.isEnabled()

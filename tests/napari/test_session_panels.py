"""The *Correct a folder* widget's parts alone (issue 19): the one state object, and a panel
driven with only a state and stand-ins for its neighbours (no viewer, no network)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_dpn._napari._session_review import ReviewPanel
from napari_dpn._napari._session_state import FolderState, Prepared
from napari_dpn.session import Session
from napari_dpn.session_maps import Segmented

SIZE = 16


@pytest.fixture
def session(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)).save(folder / f"eye{i}.png")
    return Session.open(folder)


def prepared(index: int) -> Prepared:
    prob = np.zeros((SIZE, SIZE), np.float32)
    seg = Segmented(prob, np.ones((SIZE, SIZE), bool), 0.5, "toy", 0.0)
    return Prepared(index, np.zeros((SIZE, SIZE, 3), np.uint8), seg, seg.mask(), prob, [], False, False)


class Neighbours:
    """Stand-ins for the navigator, the saver, the layers and the dialogs: they record calls."""

    def __init__(self):
        self.went, self.saved, self.dropped, self.asked = [], [], [], []
        self.mask = np.zeros((SIZE, SIZE), bool)
        self.vessels = SimpleNamespace(data=self.mask.astype(np.uint8))

    def go(self, index):
        self.went.append(index)
        return True

    def drop_edits(self, prep):
        self.dropped.append(prep.index)

    def save_current(self, ask=True, state="saved"):
        self.saved.append(state)
        return True

    def vessels_mask(self):
        return self.mask

    def confirm(self, title, text, ok="OK"):
        self.asked.append(title)
        return True


def test_the_state_says_what_changed(session):
    state = FolderState()
    heard = {"listed": 0, "said": [], "notified": []}
    state.listed.connect(lambda: heard.__setitem__("listed", heard["listed"] + 1))
    state.said.connect(heard["said"].append)
    state.notified.connect(lambda kind, text: heard["notified"].append(kind))
    state.start(session)
    assert state.generation == 1 and state.session is session and not state.busy
    state.error("No.")
    assert heard["said"] == ["No."] and heard["notified"] == ["error"]
    state.set_worker("csv", object())
    assert state.busy
    state.worker_done("csv", alive=True)
    assert not state.busy
    session.write_error = "Cannot write the session file."
    state.warn_write()
    state.warn_write()
    assert heard["notified"] == ["error", "warning"], "a session file that cannot be written is said once"


def test_the_review_panel_alone_skips_accepts_and_counts(qtbot, session):
    state, n = FolderState(), Neighbours()
    panel = ReviewPanel(state, nav=n, saver=n, layers=n, dialogs=n)
    qtbot.addWidget(panel)
    said = []
    state.said.connect(said.append)
    assert not panel.skip_button.isEnabled(), "nothing to review before a folder is open"

    state.start(session)
    state.index, state.shown = 0, prepared(0)
    state.changed.emit()
    assert panel.skip_button.isEnabled() and panel.accept_button.isEnabled()
    assert not panel.prev_button.isEnabled() and panel.next_button.isEnabled()
    assert panel.done_label.text() == "done 0/3"

    panel.skip_button.click()
    assert session.entries[0].state == "skipped" and n.went == [1]
    assert "Skipped eye0.png" in said[-1]
    state.changed.emit()
    assert panel.done_label.text() == "done 1/3 · 1 skipped"

    state.index, state.shown = 1, prepared(1)
    panel.accept_button.click()
    assert n.saved == ["accepted"] and n.went == [1, 2], "an untouched map is accepted as is, then Next"
    assert not panel.save_clicked(), "no edits: nothing to save"
    assert "no corrections to save" in said[-1]
    state.dirty = True
    assert panel.save_clicked() and n.saved == ["accepted", "saved"]


class Navigation(Neighbours):
    """A stand-in navigator that opens the real session and records where it goes."""

    def __init__(self, state):
        super().__init__()
        self.state, self.resegmented = state, 0

    def open(self, folder, annotations, confirm):
        return Session.open(folder, annotations)

    def start(self, session):
        self.state.start(session)
        self.state.listed.emit()
        self.go(session.current)

    def go(self, index):
        self.state.index = index
        self.state.listed.emit()  # as the real one does once the image is on its way
        return super().go(index)

    def resegment_rest(self):
        self.resegmented += 1
        return [1, 2]

    def wait_for(self, index):
        self.went.append(("wait", index))

    def alive(self):
        return True

    def ask_folder(self, title):
        return self.state.session.folder if self.state.session else None


def test_the_folder_panel_alone_opens_lists_and_goes_to_a_chosen_image(qtbot, session):
    from qtpy.QtWidgets import QToolButton

    from napari_dpn._napari._session_folder import FolderPanel

    state = FolderState()
    n = Navigation(state)
    panel = FolderPanel(state, nav=n, saver=n, dialogs=n)
    qtbot.addWidget(panel)
    said, notified = [], []
    state.said.connect(said.append)
    state.notified.connect(lambda kind, text: notified.append((kind, text)))
    assert panel.spec() is None and panel.list.count() == 0

    assert not panel.open_clicked() and notified[-1] == ("warning", "Choose a folder of photographs first.")
    state.session = session  # the stand-in's folder dialog answers this folder
    browse = panel.section.findChildren(QToolButton)
    next(b for b in browse if b.text() == "…").click()
    assert panel.folder_edit.text() == str(session.folder)
    state.session = None

    assert panel.open_button.click() is None and state.session is not None  # Open folder
    assert state.session.folder == session.folder and n.went == [0]
    assert [panel.list.item(i).text().split(" — ")[0] for i in range(panel.list.count())] == [
        "eye0.png",
        "eye1.png",
        "eye2.png",
    ]
    assert panel.list.currentRow() == 0

    panel.list.itemActivated.emit(panel.list.item(2))  # Enter on the third image: the navigator goes there
    assert n.went == [0, 2] and panel.list.currentRow() == 2
    state.session.entries[2].state = "skipped"
    state.listed.emit()
    assert panel.list.item(2).text() == f"eye2.png — {state.session.label(2)}" and panel.list.currentRow() == 2

    panel.field_combo.setCurrentIndex(panel.field_combo.findData(50.0))  # a new field of view
    assert state.session.field_angle == 50.0 and n.resegmented == 1
    assert said[-1].startswith("Field of view 50° for photos; 2 image(s)")
    assert n.went[-1] == ("wait", 2), "the image on screen, not shown yet, is segmented again"


@pytest.mark.needs_display
def test_the_tools_panel_alone_removes_a_branch_in_one_undo_step(qtbot, make_napari_viewer, session):
    from napari_dpn._napari._session_layers import FolderLayers
    from napari_dpn._napari._session_tools import ToolsPanel

    viewer = make_napari_viewer()
    state = FolderState()
    layers = FolderLayers(viewer, state, on_paint=None, on_click=None, alive=lambda: True)
    panel = ToolsPanel(state, layers, viewer)
    qtbot.addWidget(panel)
    said = []
    state.said.connect(said.append)
    assert not panel.branch_button.isEnabled() and not panel.speck_button.isEnabled()

    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4, 1:15] = 1  # a vessel, and a branch down from its middle
    mask[4:15, 8] = 1
    vessels = layers.layers["vessels"] = viewer.add_labels(mask.copy(), name="vessels")
    state.start(session)
    state.index, state.shown = 0, prepared(0)
    state.changed.emit()
    assert panel.branch_button.isEnabled() and not panel.local_button.isEnabled(), "no region shown yet"

    panel.branch_button.click()  # the tool is armed: a click on the vessels removes a branch
    assert state.mode == "branch" and vessels.mode == "pan_zoom" and "false branch" in said[-1]
    assert panel.apply_tool(state.mode, (12.0, 8.0))
    qtbot.waitUntil(lambda: "tool" not in state.workers, timeout=10_000)
    after = np.asarray(vessels.data)
    assert not after[8:15, 8].any(), "the branch is gone"
    assert after[4, 1:15].all(), "the vessel it came from is kept"
    assert said[-1].startswith("Removed a branch (") and "Ctrl+Z" in said[-1]

    vessels.undo()  # one Ctrl+Z brings the whole branch back
    np.testing.assert_array_equal(np.asarray(vessels.data), mask)
    panel.branch_button.click()
    assert state.mode is None


def test_the_loop_panel_alone_follows_the_state_and_exports_the_csv(qtbot, session, tmp_path):
    from napari_dpn._napari._session_folder import FolderPanel
    from napari_dpn._napari._session_loop import LoopPanel

    state = FolderState()
    n = Navigation(state)
    folder = FolderPanel(state, nav=n, saver=n, dialogs=n)
    csv = tmp_path / "table.csv"
    host = SimpleNamespace(life=None, theme=None, place=lambda panel: None, ask_save_path=lambda: csv)
    panel = LoopPanel(state, nav=n, layers=n, folder=folder, host=host)
    qtbot.addWidget(folder)
    qtbot.addWidget(panel)
    said, notified = [], []
    state.said.connect(said.append)
    state.notified.connect(lambda kind, text: notified.append((kind, text)))
    buttons = (panel.ft_button, panel.reseg_button, panel.csv_button)
    assert not any(b.isEnabled() for b in buttons), "no folder open: nothing to do"
    assert not panel.export_clicked() and panel.resegment_rest() == 0

    state.start(session)
    state.changed.emit()
    assert all(b.isEnabled() for b in buttons)
    state.set_worker("finetune", object())  # a fine-tune runs: no second one, no re-segmenting meanwhile
    assert not panel.ft_button.isEnabled() and not panel.reseg_button.isEnabled() and panel.csv_button.isEnabled()
    state.worker_done("finetune", alive=True)
    assert all(b.isEnabled() for b in buttons)

    panel.ft_button.click()  # no model chosen: a clear sentence, no run
    assert notified[-1] == ("warning", "Choose a model to fine-tune first.") and not state.workers
    panel.reseg_button.click()
    assert n.resegmented == 1 and said[-1].startswith("Re-segmenting 2 image(s)")

    panel.csv_button.click()  # Export CSV…: written in a worker
    qtbot.waitUntil(lambda: "csv" not in state.workers, timeout=10_000)
    assert csv.is_file() and "eye0.png" in csv.read_text()
    assert notified[-1] == ("info", f"Wrote {csv}.") and said[-1] == f"Wrote {csv}."

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

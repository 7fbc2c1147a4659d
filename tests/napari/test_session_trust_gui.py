"""*Correct a folder* trust rules in a real viewer (issue 20): moving on is not approval (Accept as
is, Skip, Save and their keys), the field of view per folder, a jump to an image that was not
prefetched, a damaged session file, and a real full disk (a small tmpfs) on a brush stroke, Next
and closing napari."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_dpn import session as S
from napari_dpn._napari._session_widget import SessionWidget
from napari_dpn.image_io import read_mask
from synthetic_fundus import fundus
from widget_setup import save_random_model

pytestmark = pytest.mark.needs_display
TIMEOUT_MS = 120_000
SIZE = 96


def make_photos(folder, n=3):
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        rgb, _, _ = fundus(SIZE, seed=i)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"eye{i}.png")
    return folder


def make_widget(viewer_factory):
    viewer = viewer_factory()
    w = SessionWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correct a folder")
    w.refresh_models()
    w.select_model("tiny-test")
    w.device_combo.setCurrentText("cpu")
    return w


@pytest.fixture
def sw(make_napari_viewer, models_dir, notes):
    w = make_widget(make_napari_viewer)
    yield w
    w.cancel()


def open_and_wait(qtbot, w, folder, notes_dir=None):
    assert w.open_folder(folder, notes_dir)
    qtbot.waitUntil(lambda: w.shown is not None, timeout=TIMEOUT_MS)
    if w.index + 1 < len(w.session):
        qtbot.waitUntil(lambda: (w.index + 1) in w.state.ready, timeout=TIMEOUT_MS)


def settle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)


def on_image(qtbot, w, index):
    qtbot.waitUntil(lambda: w.shown is not None and w.shown.index == index, timeout=TIMEOUT_MS)
    settle(qtbot, w)


def keys(viewer):
    return {str(k): f for k, f in viewer.keymap.items()}


def list_texts(w):
    return [w.list.item(i).text() for i in range(w.list.count())]


# ----------------------------------------------------------------------------- item 1, item 8


def test_moving_on_approves_nothing_accept_skip_and_save_do(qtbot, sw, photos, notes):
    open_and_wait(qtbot, sw, photos)
    press = keys(sw.viewer)
    assert {"Shift+N", "Shift+A", "Shift+K", "Shift+S"} <= set(press)
    press["Shift+N"](sw.viewer)
    on_image(qtbot, sw, 1)
    press["Shift+N"](sw.viewer)
    on_image(qtbot, sw, 2)
    # Two Next without an edit: nothing saved, nothing done, nothing to fine-tune on.
    assert sw.done_label.text() == "done 0/3"
    assert [e.state for e in sw.session.entries] == ["segmented"] * 3
    assert not list(photos.glob("*_vessels.png")) and sw.session.training_pairs() == []
    assert all("segmented, not reviewed" in t for t in list_texts(sw))

    # Save on an untouched image writes nothing: that is what Accept as is is for.
    press["Shift+S"](sw.viewer)
    assert not (photos / "eye2_vessels.png").exists() and "Accept as is" in sw.status.text()
    # Save with an edit writes it now, without moving on.
    sw.layers["vessels"].data_setitem((np.array([5]), np.array([5])), 1)
    assert sw.list.item(2).text().endswith("corrected, not saved yet")
    sw.save_button.click()
    settle(qtbot, sw)
    assert sw.index == 2 and sw.session.entries[2].state == "saved"
    assert read_mask(photos / "eye2_vessels.png")[5, 5]
    assert sw.list.item(2).text().endswith("corrected and saved")

    # Accept as is (Shift+A) on eye0: the map becomes its annotation; then the next image.
    sw.go(0)
    on_image(qtbot, sw, 0)
    untouched = np.asarray(sw.layers["vessels"].data) > 0
    press["Shift+A"](sw.viewer)
    on_image(qtbot, sw, 1)
    assert sw.session.entries[0].state == "accepted"
    assert (read_mask(photos / "eye0_vessels.png") == untouched).all()
    # Skip (Shift+K) on eye1: left out, no file, moves on.
    press["Shift+K"](sw.viewer)
    on_image(qtbot, sw, 2)
    assert sw.session.entries[1].state == "skipped" and not (photos / "eye1_vessels.png").exists()
    assert sw.done_label.text() == "done 3/3 · 1 skipped"
    assert [t.split(" — ")[1] for t in list_texts(sw)] == ["accepted as is", "skipped", "corrected and saved"]
    assert sw.session.corrected_indices == [0, 2] and len(sw.session.training_pairs()) == 2
    assert sw.resegment_rest() == 0, "corrections and skipped images are not segmented again"
    settle(qtbot, sw)
    assert notes["error"] == []


def test_an_edit_undone_is_not_a_correction(qtbot, sw, photos, notes):
    open_and_wait(qtbot, sw, photos)
    vessels = sw.layers["vessels"]
    before = int(vessels.data[5, 5])
    vessels.data_setitem((np.array([5]), np.array([5])), 1 - before)
    vessels.undo()
    sw.next()
    on_image(qtbot, sw, 1)
    assert sw.session.entries[0].state == "segmented" and not (photos / "eye0_vessels.png").exists()


def test_a_jump_to_an_image_not_prefetched_shows_progress_not_the_old_image(qtbot, sw, tmp_path, notes):
    folder = make_photos(tmp_path / "five", n=5)
    open_and_wait(qtbot, sw, folder)
    assert 4 not in sw.state.ready
    item = sw.list.item(4)
    sw.list.itemDoubleClicked.emit(item)
    # At once: a busy bar, the status names the image, the old image is hidden and not editable.
    assert not sw.progress.isHidden() and sw.progress.maximum() == 0
    assert "Segmenting eye4.png (image 5 of 5)" in sw.status.text()
    assert not any(layer.visible for layer in sw.layers.values())
    assert not sw.layers["vessels"].editable and sw.shown is None
    on_image(qtbot, sw, 4)
    assert sw.progress.isHidden()
    assert sw.layers["image"].visible and sw.layers["vessels"].visible and sw.layers["vessels"].editable
    assert sw.layers["image"].name == "eye4"


# ----------------------------------------------------------------------------- item 7


def test_field_of_view_is_remembered_per_folder_and_used(qtbot, make_napari_viewer, models_dir, photos, notes):
    from napari_dpn import segmentation

    calls = []
    real = segmentation.segment

    def spy(*args, **kw):
        calls.append((kw.get("field_angle"), kw.get("scale")))
        return real(*args, **kw)

    save_random_model(models_dir, "tiny-scaled", scale={"working_ppd": 3.0})
    w = make_widget(make_napari_viewer)
    w.select_model("tiny-scaled")
    open_and_wait(qtbot, w, photos)
    assert w.field_combo.currentData() is None and "45 deg (assumed)" in w.status.text()
    segmentation.segment = spy
    try:
        w.field_combo.setCurrentIndex(w.field_combo.findData(30.0))
        on_image(qtbot, w, 0)
        qtbot.waitUntil(lambda: 1 in w.state.ready, timeout=TIMEOUT_MS)
        settle(qtbot, w)
    finally:
        segmentation.segment = real
    assert calls and all(c == (30.0, "auto") for c in calls), calls
    assert w.session.entries[0].field_angle == 30.0 and "30 deg (given)" in w.status.text()
    assert json.loads(w.session.path.read_text())["field_angle"] == 30.0

    again = make_widget(make_napari_viewer)
    again.select_model("tiny-scaled")
    open_and_wait(qtbot, again, photos)
    assert again.field_combo.currentData() == 30.0, "remembered for this folder"
    again.field_combo.setCurrentIndex(again.field_combo.findData("native"))
    on_image(qtbot, again, 0)
    assert again.session.entries[0].scale == 1.0 and "native" in again.status.text()


# ----------------------------------------------------------------------------- malformed session file


@pytest.mark.parametrize("text", ["null", "[]", '{"images": [1]}'])
def test_open_folder_with_a_damaged_session_file(qtbot, sw, photos, notes, text):
    path = photos / S.SESSION_FILE
    path.write_text(text)
    asked = []
    sw._confirm = lambda title, message, ok="OK": asked.append(message) or False
    assert not sw.open_folder(photos)
    assert asked and "is damaged" in asked[0] and path.read_text() == text
    sw._confirm = lambda *a, **k: True
    open_and_wait(qtbot, sw, photos)
    backups = list(photos.glob(S.SESSION_FILE + ".damaged-*.json"))
    assert len(backups) == 1 and backups[0].read_text() == text
    assert any(str(backups[0]) in n for n in notes["warning"])
    assert notes["error"] == []


# ----------------------------------------------------------------------------- item 18: a full disk


@contextlib.contextmanager
def small_tmpfs(path, size="200k"):
    """A real small file system at ``path`` (root only): a full disk that gives ENOSPC."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder):
    """Fill the file system of ``folder`` until it says ENOSPC; returns the filler file."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_full_disk_keeps_the_stroke_and_next_stays_on_the_image(qtbot, sw, photos, tmp_path, notes):
    with small_tmpfs(tmp_path / "disk") as disk:
        open_and_wait(qtbot, sw, photos, disk)
        settle(qtbot, sw)
        filler = fill(disk)
        vessels = sw.layers["vessels"]
        value = 1 - int(vessels.data[40, 40])
        vessels.paint((40, 40), value)  # the brush's own path (its paint event)
        assert vessels.data[40, 40] == value, "the first stroke after the disk filled is kept"
        assert sw.session.entries[0].state == "corrected"
        assert any("disk is full" in n for n in notes["warning"]), notes
        sw.next_button.click()  # pytest-qt fails the test on an exception out of the handler
        qtbot.wait(50)
        assert sw.index == 0 and sw.shown is not None and sw.shown.index == 0
        assert sw.layers["vessels"].data[40, 40] == value and sw.layers["vessels"].name == "eye0 vessels"
        said = [n for n in notes["error"] if "full" in n]
        assert len(said) == 1 and said[0].count(". ") == 0 and "nothing is lost" in said[0]
        assert not (disk / "eye0_vessels.png").exists()
        # Save (Shift+S) offers a copy in another folder; the corrections stay on screen, unsaved here.
        rescue = tmp_path / "rescue"
        rescue.mkdir()
        sw._confirm = lambda *a, **k: True
        sw._ask_folder = lambda title: rescue
        keys(sw.viewer)["Shift+S"](sw.viewer)
        assert read_mask(rescue / "eye0_vessels.png")[40, 40] == bool(value)
        assert sw.dirty and sw.session.entries[0].state == "corrected"
        filler.unlink()  # room again: Next saves and moves on
        sw.next_button.click()
        on_image(qtbot, sw, 1)
        assert read_mask(disk / "eye0_vessels.png")[40, 40] == bool(value)
        assert S.Session.open(photos, disk).entries[0].state == "saved"
        sw.folder_layers.clear()


def test_closing_napari_on_a_full_disk_keeps_the_window_and_offers_another_folder(
    qtbot, make_napari_viewer, models_dir, photos, tmp_path, notes
):
    w = make_widget(make_napari_viewer)
    with small_tmpfs(tmp_path / "disk") as disk:
        open_and_wait(qtbot, w, photos, disk)
        settle(qtbot, w)
        fill(disk)
        w.layers["vessels"].data_setitem((np.array([7]), np.array([9])), 1)
        window = w.viewer.window._qt_window
        asked = []
        w._ask_save_failure = lambda text, can_keep_open: asked.append(text) or "keep"
        # The user closes napari (File > Close Window, Ctrl+W, the title bar).
        assert window.close() is False, "the close is vetoed: the corrections would be lost"
        qtbot.wait(50)
        assert w.alive and w.viewer.layers
        assert asked and "could not be saved" in asked[0] and "the disk is full" in asked[0]
        assert any("the disk is full" in n for n in notes["error"])
        assert w.layers["vessels"].data[7, 9] == 1 and w.dirty

        rescue = tmp_path / "rescue"
        rescue.mkdir()
        w._ask_save_failure = lambda text, can_keep_open: "elsewhere"
        w._ask_folder = lambda title: rescue
        assert window.close() is True
        qtbot.wait(50)
        # Qt deleted the closed window; the fixture's viewer.close() must not close it again.
        del w.viewer.window._qt_window
        assert read_mask(rescue / "eye0_vessels.png")[7, 9]
        assert (rescue / "eye0_fov.png").is_file()


def test_viewer_close_on_a_full_disk_offers_another_folder(
    qtbot, make_napari_viewer, models_dir, photos, tmp_path, notes
):
    """``viewer.close()`` removes the layers before the window: no veto is possible there, so the
    other folder is offered before the corrections go."""
    w = make_widget(make_napari_viewer)
    with small_tmpfs(tmp_path / "disk") as disk:
        open_and_wait(qtbot, w, photos, disk)
        settle(qtbot, w)
        fill(disk)
        w.layers["vessels"].data_setitem((np.array([3]), np.array([4])), 1)
        rescue = tmp_path / "rescue"
        rescue.mkdir()
        asked = []
        w._ask_save_failure = lambda text, can_keep_open: asked.append(can_keep_open) or "elsewhere"
        w._ask_folder = lambda title: rescue
        w.viewer.close()
        qtbot.wait(50)
        assert asked == [False]
        assert read_mask(rescue / "eye0_vessels.png")[3, 4]
        assert any("the disk is full" in n for n in notes["error"])


def test_skip_with_unsaved_edits_asks_and_drops_them(qtbot, sw, photos, notes):
    open_and_wait(qtbot, sw, photos)
    vessels = sw.layers["vessels"]
    before = np.asarray(vessels.data).copy()
    vessels.data_setitem((np.array([6]), np.array([6])), 1 - int(before[6, 6]))
    sw._confirm = lambda *a, **k: False
    assert not sw.skip_clicked() and sw.index == 0 and sw.dirty
    sw._confirm = lambda *a, **k: True
    assert sw.skip_clicked()
    on_image(qtbot, sw, 1)
    assert sw.session.entries[0].state == "skipped" and not (photos / "eye0_vessels.png").exists()
    sw.previous()
    on_image(qtbot, sw, 0)
    assert (np.asarray(sw.layers["vessels"].data) == before).all() and not sw.dirty


def test_a_save_that_fails_after_next_brings_the_corrections_back(qtbot, sw, photos, tmp_path, notes, monkeypatch):
    """The disk fills between the free-space check and the write (the check is bypassed here,
    the write fails for real): Next had moved on, so the image comes back with its corrections."""
    monkeypatch.setattr(S.Session, "room_to_save", lambda self, index, shape: True)
    with small_tmpfs(tmp_path / "disk") as disk:
        open_and_wait(qtbot, sw, photos, disk)
        settle(qtbot, sw)
        filler = fill(disk)
        sw.layers["vessels"].data_setitem((np.array([8]), np.array([8])), 1)
        sw.next_button.click()
        qtbot.waitUntil(lambda: any("shown again" in n for n in notes["error"]), timeout=TIMEOUT_MS)
        on_image(qtbot, sw, 0)
        assert sw.layers["vessels"].data[8, 8] == 1 and sw.dirty
        assert sw.session.entries[0].state == "corrected" and "NOT saved" in sw.status.text()
        filler.unlink()
        sw.next_button.click()
        on_image(qtbot, sw, 1)
        assert read_mask(disk / "eye0_vessels.png")[8, 8]
        assert sw.session.entries[0].state == "saved" and 0 not in sw.state.unsaved
        sw.folder_layers.clear()

"""Writing the corrections of the *Correct a folder* widget: never lost, never over a file the
session did not write without asking.

A save on Next / Save / Accept runs in a worker; a failed one (a full disk) keeps the corrections
in memory (``state.unsaved``) and shows the image again.  Closing napari, deleting the layer or
fine-tuning saves synchronously; when that cannot be done the user chooses: another folder,
drop them, or (when closing the window) keep the window open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QMessageBox

from napari_dpn.errors import DPNError
from napari_dpn.files import os_error_message
from napari_dpn.session_file import is_disk_full

from ._dock import unstarted_worker
from ._session_layers import FolderLayers
from ._session_state import FolderState


def save_in_worker(session, index, mask, fov, state="saved", reference=None):
    """Worker: write the annotation (the session's save lock orders saves); None when the
    "corrections" are exactly the network's map (not a correction: nothing written)."""
    try:
        if reference is not None and np.array_equal(mask, reference.mask()):
            session.unmark_corrected(index)
            return None
        return session.save(index, mask, fov, overwrite=True, state=state)
    except DPNError as exc:
        return str(exc)
    except OSError as exc:
        return os_error_message(exc, session.vessels_path(index))


class FolderSaver:
    """Saves for the widget.  ``dialogs``: an object with ``confirm(title, text, ok)``,
    ``ask_folder(title)`` and ``ask_save_failure(text, can_keep_open)``; ``go(index)`` shows an
    image again after its save failed."""

    def __init__(self, state: FolderState, layers: FolderLayers, dialogs, go):
        self.state, self.layers, self.dialogs, self.go = state, layers, dialogs, go
        self._workers: set = set()

    def save_current(self, ask: bool = True, state: str = "saved") -> bool:
        """Write the shown image's vessels in a worker: its corrections (``state`` "saved"), or
        the map accepted as is ("accepted"); asks before replacing a file this session did not
        write (without ``ask``, such a file is left alone).  An edited map that ends up exactly
        as the network made it is not a correction and is not written."""
        st, prep, mask = self.state, self.state.shown, self.layers.vessels_mask()
        if st.session is None or prep is None or mask is None:
            return False
        if state == "saved" and not st.dirty:
            return False  # nothing new
        session, index = st.session, prep.index
        conflict = session.conflict(index)
        if conflict is not None and (
            not ask
            or not self.dialogs.confirm(
                "Replace annotation?",
                f"{conflict.name} in {conflict.parent} was not written "
                "by this session. Replace it with your corrections?",
                ok="Replace",
            )
        ):
            st.say(f"{st.name(index)} was not saved: {conflict.name} was kept as it is.")
            return False
        fov = prep.seg.fov
        # An edit of a network map (not of a resumed annotation) may have been undone to the map.
        reference = prep.seg if state == "saved" and not prep.resumed else None
        worker = unstarted_worker(save_in_worker, session, index, mask, fov, state, reference)
        worker.returned.connect(lambda out, s=session, i=index, m=mask, f=fov: self._on_saved(s, out, i, m, f))
        worker.finished.connect(self._on_finished)
        st.saves += 1
        self._workers.add(worker)
        st.dirty = False  # the worker has these corrections; a failure gives them back
        worker.start()
        return True

    def _on_saved(self, session, out, index, mask, fov) -> None:
        st = self.state
        if not self.layers.alive() or session is not st.session:
            return
        if isinstance(out, str):  # keep the corrections and go back to them: nothing is lost
            st.unsaved[index] = (mask, fov)
            st.error(f"{out} The corrections of {session.entries[index].name} are kept; it is shown again.")
            if st.index == index and st.shown is not None:
                st.dirty = True
            else:
                if index in st.ready:
                    st.ready[index].mask = mask
                self.go(index)
        else:
            st.unsaved.pop(index, None)
            if out is not None and index == st.index:
                st.say(f"Saved {Path(out).name} ({session.label(index)}).")
        st.warn_write()
        st.listed.emit()

    def _on_finished(self) -> None:
        self.state.saves -= 1
        self._workers = {w for w in self._workers if not w.is_running}

    def save_now(self, vessels=None) -> bool:
        """Write the current corrections synchronously (before closing), never over someone
        else's file; True when they were written.  A failure is said, never swallowed."""
        error = self.save_sync(vessels)
        if error is not None:
            self.state.error(error)
        return error is None and self.state.shown is not None and not self.state.dirty

    def save_sync(self, vessels=None) -> str | None:
        """Write the current corrections now; the sentence why they could not be, or None (also
        when there was nothing to write)."""
        st = self.state
        if not self.layers.alive() or st.shown is None or not st.dirty or st.session is None:
            return None
        vessels = vessels if vessels is not None else self.layers.vessels
        if vessels is None:
            return None
        index, name = st.shown.index, st.name(st.shown.index)
        conflict = st.session.conflict(index)
        if conflict is not None:
            return f"The corrections of {name} were not saved: {conflict.name} was not written by this session."
        try:
            st.session.save(index, np.asarray(vessels.data) > 0, st.shown.seg.fov)
        except (DPNError, OSError) as exc:
            return f"The corrections of {name} could not be saved: {self._reason(exc)}."
        st.dirty = False
        st.unsaved.pop(index, None)
        return None

    def _reason(self, exc: BaseException) -> str:
        folder = self.state.session.annotations
        if is_disk_full(exc):  # by errno, whatever the exception's words
            return f"the disk is full ({folder})"
        if isinstance(exc, DPNError):
            return str(exc).rstrip(".")
        return os_error_message(exc, folder).rstrip(".")

    def rescue(self, text: str, vessels, can_keep_open: bool) -> bool:
        """Closing with corrections that cannot be saved where they belong: ask, and save them
        to another folder or (only when told to) drop them.  True when nothing is left to keep
        the window open for; False: keep it open, the corrections stay on screen."""
        st = self.state
        if st.session is None or st.shown is None:
            return True
        mask = np.asarray(vessels.data) > 0
        question = (
            " Save them to another folder, close without them, or keep the window open?"
            if can_keep_open
            else " Save them to another folder?"
        )
        for _ in range(20):
            choice = self.dialogs.ask_save_failure(text + question, can_keep_open)
            if choice == "keep":
                st.say(text + " The window stays open; the corrections are on screen.")
                return False
            if choice == "discard":
                st.dirty = False
                return True
            error = self.save_elsewhere(mask)
            if error is None:
                st.dirty = False
                st.unsaved.pop(st.shown.index, None)
                return True
            text = error
        return not can_keep_open

    def save_elsewhere(self, mask) -> str | None:
        """Ask for a folder and write the shown image's vessels and FOV there (never over a file);
        None when written, else the sentence why not."""
        st = self.state
        folder = self.dialogs.ask_folder("Save the corrections to which folder?")
        if folder is None:
            return "No folder was chosen."
        index = st.shown.index
        try:
            path = st.session.save_copy(index, mask, st.shown.seg.fov, folder)
        except (DPNError, OSError) as exc:
            return str(exc) if isinstance(exc, DPNError) else f"Cannot write to {folder}: {exc.strerror or exc}."
        st.notify("info", f"Saved the corrections of {st.name(index)} as {path}.")
        st.say(f"Saved a copy of the corrections as {path} (outside the session's annotations folder).")
        return None

    def save_or_rescue(self, vessels=None, can_keep_open: bool = False) -> bool:
        """Closing (the window, the widget, the layer): save synchronously, else ask; False when
        the window should stay open."""
        error = self.save_sync(vessels)
        vessels = vessels if vessels is not None else self.layers.vessels
        if error is None or vessels is None:
            return True
        self.state.notify("error", error)
        return self.rescue(error, vessels, can_keep_open)


def ask_save_failure(parent, text: str, can_keep_open: bool) -> str:
    """Ask what to do with corrections that cannot be saved: 'elsewhere', 'discard' or 'keep'
    (the window stays open)."""
    box = QMessageBox(QMessageBox.Warning, "Corrections not saved", text, QMessageBox.NoButton, parent)
    elsewhere = box.addButton("Save to another folder…", QMessageBox.AcceptRole)
    discard = box.addButton("Close without saving", QMessageBox.DestructiveRole)
    keep = box.addButton("Keep the window open", QMessageBox.RejectRole) if can_keep_open else None
    box.setDefaultButton(elsewhere)
    box.exec_()
    clicked = box.clickedButton()
    if clicked is discard:
        return "discard"
    if keep is not None and clicked is keep:
        return "keep"
    return "elsewhere" if clicked is elsewhere or keep is None else "keep"

"""Moving through the folder: which image is on screen, and the next one prepared meanwhile.

Leaving an image saves its edits (an untouched map is not approved: moving on is not approval);
the next image was prepared in the background (prefetch), so it appears at once; one that was
not shows a busy bar, the old image hidden.  Opening a folder (a damaged session file: ask, and
start afresh only when told) and *Re-segment the rest* start a new ``generation``: results still
in flight for the old one are dropped.
"""

from __future__ import annotations

import numpy as np

from napari_dpn.errors import DPNError
from napari_dpn.session import Session
from napari_dpn.session_file import SessionDamaged

from ._dock import unstarted_worker
from ._session_layers import FolderLayers
from ._session_saving import FolderSaver
from ._session_state import FolderState, ModelCache, Prepared, prepare_image


class Navigator:
    """Go to an image; ``job()`` gives the model spec and device a preparation uses, ``cancel``
    the widget's cancel flag; ``busy_bar(on)`` shows the busy bar.  The state's ``arriving`` and
    ``arrived`` signals tell the panels an image is coming and is on screen."""

    def __init__(self, state: FolderState, layers: FolderLayers, saver: FolderSaver, job, busy_bar):
        self.state, self.layers, self.saver = state, layers, saver
        self.job, self.busy_bar = job, busy_bar
        self.models = ModelCache()

    # -- the folder
    def open(self, folder, annotations, confirm) -> Session | None:
        """The session of ``folder`` (asking before starting afresh over a damaged file), or None."""
        st = self.state
        try:
            try:
                return Session.open(folder, annotations)
            except SessionDamaged as exc:
                if not confirm(
                    "Damaged session file",
                    f"{exc} Start a new session of this folder? The damaged file is kept beside it "
                    "(renamed .damaged-<time>.json); your annotation files are not touched.",
                    ok="Start afresh",
                ):
                    st.say(str(exc))
                    return None
                return Session.open(folder, annotations, start_afresh=True)
        except DPNError as exc:
            st.error(str(exc))
            return None

    def start(self, session: Session) -> None:
        """Show the session's current image, the old folder's layers and results dropped."""
        st = self.state
        self.layers.clear()
        st.start(session)
        st.listed.emit()
        resumed = any(e.state != "new" for e in session.entries)
        st.say(
            ("Resumed" if resumed else "Started") + f" the session of {session.folder.name}: "
            f"{len(session)} photograph(s), {session.done} done."
            + (f" The damaged session file was kept as {session.backup.name}." if session.backup else "")
        )
        if session.backup is not None:
            st.notify(
                "warning",
                f"Started a new session of {session.folder.name}; the damaged session file is kept as {session.backup}.",
            )
        self.go(session.current)
        st.warn_write()

    def resegment_rest(self) -> list[int]:
        """Forget the maps of the images nobody corrected, accepted or skipped; the one on
        screen, if among them, is segmented again now, the others as they are visited."""
        st = self.state
        st.generation += 1
        reset = st.session.reset_unsaved()
        for i in reset:
            st.ready.pop(i, None)
        st.listed.emit()
        if st.index in reset:  # the image on screen was not touched: show its new map
            st.shown, st.arrival = None, None
            self.request(st.index)
        elif st.index is not None:
            self.request(st.index + 1)
        return reset

    # -- one image
    def go(self, index: int) -> bool:
        """Leave the current image (its edits saved; an untouched map is not approved) and show
        image ``index`` (at once when it was prefetched).  False, staying on the image with its
        corrections, when they cannot be saved (a full disk)."""
        st = self.state
        if st.session is None or not 0 <= index < len(st.session):
            return False
        if index == st.index and st.shown is not None:
            return True
        mask = self.layers.vessels_mask()
        if st.shown is not None and mask is not None:  # coming back shows the edits
            st.shown.mask = mask
            if st.dirty and not st.session.room_to_save(st.shown.index, mask.shape):
                st.error(
                    f"Cannot save the corrections of {st.name(st.shown.index)}: the disk "
                    f"holding {st.session.annotations} is full; you stay on this image and nothing is lost "
                    "(free some space, or press Save to choose another folder)."
                )
                return False
        if st.dirty:
            self.saver.save_current()
        st.index = st.session.go(index)
        st.listed.emit()
        prep = st.ready.get(index)
        if prep is not None:
            self.show(prep)
        else:
            self.wait_for(index)
            self.request(index)
        st.changed.emit()
        st.warn_write()
        return True

    def wait_for(self, index: int) -> None:
        """The image to show is being segmented: the old one must not pass for it (hidden, takes
        no more edits), a busy bar and the status say what is going on."""
        st = self.state
        st.shown, st.arrival = None, None
        self.layers.hide()
        self.busy_bar(True)
        st.say(f"Segmenting {st.name(index)} (image {index + 1} of {len(st.session)})…")

    def request(self, index: int) -> None:
        """Start preparing an image in the background unless it is ready or on its way."""
        st = self.state
        gen = st.generation
        if st.session is None or not 0 <= index < len(st.session) or index in st.ready or (gen, index) in st.jobs:
            return
        spec, device, cancel = self.job()
        job = {
            "models": self.models,
            "spec": spec,
            "device": device,
            "cancel": cancel,
            "stale": lambda: gen != self.state.generation,
        }
        session = st.session
        worker = unstarted_worker(prepare_image, session, index, job)
        worker.returned.connect(lambda out, i=index, s=session, g=gen: self._on_prepared(s, i, out, g))
        key = (gen, index)
        worker.finished.connect(lambda k=key: st.jobs.pop(k, None))
        st.jobs[key] = worker
        worker.start()

    def _on_prepared(self, session, index: int, out, gen: int) -> None:
        st = self.state
        st.jobs.pop((gen, index), None)
        if not self.layers.alive() or session is not st.session or gen != st.generation:
            return
        if isinstance(out, str):
            if out != "cancelled":
                if index == st.index:
                    self.busy_bar(False)
                st.error(out)
            return
        if out.fresh or session.entries[index].model is None:  # a prefetch that never arrived
            session.note_segmentation(index, out.seg)
            st.warn_write()
        st.ready[index] = out
        st.listed.emit()
        if index == st.index and st.shown is None and st.arrival is None:
            self.show(out)

    def show(self, prep: Prepared) -> None:
        st = self.state
        st.arriving.emit()
        self.layers.show(prep, st.session.image_path(prep.index).stem, self._shown)

    def _shown(self, prep: Prepared) -> None:
        """The layers hold ``prep``: it is the image on screen."""
        st = self.state
        st.shown, st.edits, st.arrival, st.region = prep, 0, None, None
        st.dirty = prep.index in st.unsaved  # a failed save: still to be written
        self.busy_bar(False)
        st.arrived.emit(prep)
        e = st.session.entries[prep.index]
        scale = prep.seg.scale_note or e.scale_note
        st.say(
            f"{e.name} ({st.session.label(prep.index)})"
            + (", resumed from its saved annotation" if prep.resumed else "")
            + (f"; first map by {e.model}" if e.model else "")
            + (f"; {scale}" if scale else "")
            + ("; its corrections are NOT saved yet" if st.dirty else "")
            + "."
        )
        st.changed.emit()
        st.keep_near(prep.index)
        self.request(prep.index + 1)

    def drop_edits(self, prep: Prepared) -> None:
        """The edits on screen are dropped: coming back shows the map (or file), not them."""
        self.layers.reset_vessels(np.asarray(prep.mask))

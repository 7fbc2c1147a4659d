"""The review row of *Correct a folder*: Previous / Next, how many are done, **Save**, **Accept
as is**, **Skip**, and the busy bar of an image being segmented.

Moving on is not approval (issue 20): Next / Previous save the vessels only when they were
edited; **Accept as is** makes the network's map the annotation, **Skip** leaves the image out,
**Save** writes the corrections now (a full disk: offer another folder, nothing lost).
"""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_dpn.session_file import LABELS

from ._session_layers import FolderLayers
from ._session_navigation import Navigator
from ._session_saving import FolderSaver
from ._session_state import KEYS, FolderState


def _button(text: str, tip: str, slot) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.clicked.connect(slot)
    return button


class ReviewPanel(QWidget):
    """Navigation and the three review decisions; ``dialogs.confirm`` asks (the widget's)."""

    def __init__(self, state: FolderState, nav: Navigator, saver: FolderSaver, layers: FolderLayers, dialogs):
        super().__init__()
        self.state, self.nav, self.saver, self.layers, self.dialogs = state, nav, saver, layers, dialogs
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        nav_row, review = QHBoxLayout(), QHBoxLayout()
        self.prev_button = _button(
            "◀ Previous", f"Save and go to the previous image ({KEYS['previous']}).", self.previous
        )
        self.next_button = _button("Next ▶", f"Save and go to the next image ({KEYS['next']}).", self.next)
        self.done_label = QLabel("")
        for w in (self.prev_button, self.done_label, self.next_button):
            nav_row.addWidget(w)
        outer.addLayout(nav_row)
        self.save_button = _button("Save", f"Save this image's corrections now ({KEYS['save']}).", self.save_clicked)
        self.accept_button = _button(
            "Accept as is",
            f"The network's map is right: save it as this image's annotation (a correction, used for "
            f"fine-tuning) and go to the next image ({KEYS['accept']}). Moving on alone approves nothing.",
            self.accept_clicked,
        )
        self.skip_button = _button(
            "Skip",
            f"Leave this image out: not a correction, not used for fine-tuning, not segmented again; "
            f"go to the next image ({KEYS['skip']}).",
            self.skip_clicked,
        )
        for w in (self.save_button, self.accept_button, self.skip_button):
            review.addWidget(w)
        outer.addLayout(review)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy: the image being segmented
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.progress.setVisible(False)
        outer.addWidget(self.progress)
        state.changed.connect(self.sync)
        self.sync()

    def sync(self) -> None:
        st = self.state
        has, shown = st.session is not None, st.shown is not None and self.layers.vessels is not None
        self.prev_button.setEnabled(has and bool(st.index))
        self.next_button.setEnabled(has and st.index is not None and st.index < len(st.session) - 1)
        for w in (self.save_button, self.accept_button, self.skip_button):
            w.setEnabled(shown)
        if has:
            counts = st.session.counts()
            skipped = f" · {counts['skipped']} skipped" if counts["skipped"] else ""
            self.done_label.setText(f"done {st.session.done}/{len(st.session)}{skipped}")
            self.done_label.setToolTip(
                ", ".join(f"{n} {LABELS[state]}" for state, n in counts.items() if n)
                + ". Done: corrected and saved, accepted as is, or skipped; moving on approves nothing."
            )

    def next(self, *_) -> bool:
        return self.state.index is not None and self.nav.go(self.state.index + 1)

    def previous(self, *_) -> bool:
        return self.state.index is not None and self.nav.go(self.state.index - 1)

    def save_clicked(self, *_) -> bool:
        """Save the image's corrections now; an untouched map is not saved (that is *Accept as is*)."""
        st, prep, mask = self.state, self.state.shown, self.layers.vessels_mask()
        if st.session is None or prep is None or mask is None:
            return False
        name = st.name(prep.index)
        if not st.dirty:
            st.say(
                f"{name} is saved already."
                if st.session.is_correction(prep.index)
                else f"{name} has no corrections to save; 'Accept as is' keeps the network's map as its annotation."
            )
            return False
        if st.session.room_to_save(prep.index, mask.shape):
            return self.saver.save_current()
        reason = f"Cannot save the corrections of {name}: the disk holding {st.session.annotations} is full."
        st.error(reason)
        if not self.dialogs.confirm(
            "The disk is full",
            f"{reason} Save a copy to another folder? The corrections stay on screen, to be saved "
            "here as well once there is room.",
            ok="Choose a folder…",
        ):
            return False
        error = self.saver.save_elsewhere(mask)
        if error is not None:
            st.error(error)
        return error is None

    def accept_clicked(self, *_) -> bool:
        """The map on screen is right as it is: write it as the annotation (a correction) and go
        to the next image.  With edits, it is saved as a correction the same way."""
        st, prep, mask = self.state, self.state.shown, self.layers.vessels_mask()
        if st.session is None or prep is None or mask is None:
            return False
        if not st.session.room_to_save(prep.index, mask.shape):
            st.error(
                f"Cannot save {st.name(prep.index)}: the disk holding {st.session.annotations} is full; nothing changed."
            )
            return False
        if st.dirty:
            started = self.saver.save_current()
        elif st.session.is_correction(prep.index):
            started = True  # accepted or saved already: nothing to write
        else:
            started = self.saver.save_current(state="accepted")
        if started and prep.index + 1 < len(st.session):
            self.nav.go(prep.index + 1)
        return started

    def skip_clicked(self, *_) -> bool:
        """Leave the image out (not a correction, not segmented again) and go to the next one."""
        st, prep = self.state, self.state.shown
        if st.session is None or prep is None:
            return False
        name = st.name(prep.index)
        if st.dirty and not self.dialogs.confirm(
            "Skip this image?", f"{name} has corrections that are not saved. Skip it without saving them?", ok="Skip"
        ):
            return False
        if st.dirty:  # the edits are dropped: coming back shows the map (or file), not them
            self.nav.drop_edits(prep)
        st.dirty = False
        st.unsaved.pop(prep.index, None)
        st.session.skip(prep.index)
        st.listed.emit()
        st.say(f"Skipped {name}: not a correction, not used for fine-tuning, not segmented again.")
        st.warn_write()
        if prep.index + 1 < len(st.session):
            self.nav.go(prep.index + 1)
        return True

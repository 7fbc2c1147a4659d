"""The Segment widget's "Save" panel: the corrected vessels and the FOV as annotation files.

:class:`SavePanel` writes the current result's vessels layer and FOV as ``<stem>_vessels.png`` /
``<stem>_fov.png`` (:mod:`napari_dpn.annotations`) beside the photograph or in the chosen folder
(the state's ``save_folder``), never overwriting a file without asking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QToolButton, QVBoxLayout

from napari_dpn.errors import DPNError

from . import _roles
from ._dock import Section, wrapped_label
from ._segment_state import SegmentState, image_path


def never(*_, **__):
    """The default answer of a panel used alone: no folder, no overwrite."""
    return None


class SavePanel(Section):
    """Save button, folder choice and what the last save did."""

    def __init__(self, state: SegmentState, viewer, confirm=never, ask_folder=never):
        super().__init__("Save")
        self.state = state
        self.viewer = viewer
        self.confirm = confirm  # (title, text, ok=...) -> bool
        self.ask_folder = ask_folder  # (title) -> Path | None
        lay = QVBoxLayout(self.body)
        lay.setContentsMargins(4, 2, 0, 2)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save annotation")
        self.save_button.setToolTip("Write '<image>_vessels.png' and '<image>_fov.png'.")
        self.folder_button = QToolButton()
        self.folder_button.setText("…")
        self.folder_button.setToolTip("Choose the folder for saved annotations.")
        row.addWidget(self.save_button, 1)
        row.addWidget(self.folder_button)
        lay.addLayout(row)
        self.folder_label = wrapped_label("Folder: next to the image", note=True)
        lay.addWidget(self.folder_label)
        self.save_status = wrapped_label()
        lay.addWidget(self.save_status)
        self.folder_button.clicked.connect(self.choose_save_folder)
        self.save_button.clicked.connect(self.save_annotation)
        state.changed.connect(self.sync)
        self.sync()

    def sync(self) -> None:
        self.save_button.setEnabled(self.state.current_result() is not None)

    def choose_save_folder(self, *_) -> None:
        folder = self.ask_folder("Folder for saved annotations")
        if folder is not None:
            self.set_save_folder(folder)

    def set_save_folder(self, folder) -> None:
        self.state.save_folder = Path(folder) if folder else None
        where = self.state.save_folder
        self.folder_label.setText(f"Folder: {where}" if where else "Folder: next to the image")

    def _targets(self, res) -> tuple[Path, Path] | None:
        """Where the annotation goes (asking for a folder when the image has no file)."""
        from napari_dpn.annotations import annotation_paths

        path = image_path(res.image)
        folder = self.state.save_folder
        if folder is None and path is None:
            folder = self.ask_folder(f"Folder for the annotation of '{res.name}'")
            if folder is None:
                self.save_status.setText("Not saved.")
                return None
        if path is None:
            path = Path(folder) / f"{res.name}.png"
        try:
            return tuple(Path(p) for p in annotation_paths(path, folder))
        except DPNError as exc:
            self._error(str(exc))
            return None

    def save_annotation(self, *_) -> tuple[Path, Path | None] | None:
        """Write the corrected vessels and the FOV as '<stem>_vessels.png' / '<stem>_fov.png'."""
        from napari_dpn.image_writers import write_mask

        res = self.state.current_result()
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        if vessels is None:
            self._error("Nothing to save yet: segment the image first.")
            return None
        targets = self._targets(res)
        if targets is None:
            return None
        vessels_path, fov_path = targets
        fov_layer = res.layer(self.viewer, "fov")
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else res.fov
        if not self._may_write([vessels_path] + ([fov_path] if fov is not None else [])):
            self.save_status.setText("Not saved: the existing files were kept.")
            return None
        try:
            write_mask(vessels_path, np.asarray(vessels.data) > 0, on_value=255)
            if fov is not None:
                write_mask(fov_path, fov, on_value=255)
        except (DPNError, OSError) as exc:
            self._error(f"Cannot save the annotation: {exc}")
            return None
        _roles.set_info(vessels, corrected=True, saved=str(vessels_path))
        if fov is None:
            self.save_status.setText(
                f"Saved {vessels_path.name} in {vessels_path.parent} (no FOV "
                "mask to save: segment the image to estimate one)."
            )
            show_info(f"Saved {vessels_path}.")
            return vessels_path, None
        self.save_status.setText(f"Saved {vessels_path.name} and {fov_path.name} in {vessels_path.parent}.")
        show_info(f"Saved {vessels_path} and {fov_path.name}.")
        return vessels_path, fov_path

    def _may_write(self, targets: list[Path]) -> bool:
        """True when none of the files exists, or the user agrees to overwrite them."""
        existing = [p for p in targets if p.exists()]
        if not existing:
            return True
        protected = self._ground_truth_paths() & {p.resolve() for p in existing}
        warn = " One of them is a ground-truth annotation." if protected else ""
        return bool(
            self.confirm(
                "Overwrite?",
                f"{', '.join(p.name for p in existing)} already exist in {existing[0].parent}.{warn} Overwrite?",
                ok="Overwrite",
            )
        )

    def _ground_truth_paths(self) -> set[Path]:
        """Files of annotations opened as ground truth (or dataset masks): never overwritten
        without a warning.  The image's own saved annotation is not one of them."""
        paths = set()
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            path = info.get("path")
            if path and (
                info.get("role") == "ground_truth"
                or (info.get("role") in ("fov", "mask") and not str(path).lower().endswith("_fov.png"))
            ):
                paths.add(Path(path).resolve())
        return paths

    def _error(self, message: str) -> None:
        self.save_status.setText(message)
        show_error(message)

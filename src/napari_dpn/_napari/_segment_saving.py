"""The Segment widget's saved annotations: resuming them and saving corrections.

:class:`SavingMixin` makes an annotation saved earlier for a photograph (``<stem>_vessels.png``
beside it or in the save folder, or a layer opened with the napari-dpn reader) its vessels layer,
ready to correct, and writes the corrected vessels and the FOV as ``<stem>_vessels.png`` /
``<stem>_fov.png`` (:mod:`napari_dpn.annotations`), never overwriting a file without asking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

from napari_dpn.errors import DPNError, InputError

from . import _roles
from ._segment_state import BRUSH_SIZE, _Result, looks_like_annotation


class SavingMixin:
    """Resuming saved annotations and saving corrections (part of :class:`SegmentWidget`).

    Uses the widget's ``viewer``, ``alive``, ``_results``, ``_save_folder``, ``_adopt_seen``,
    ``_adopt_scheduled``, ``threshold``, the labels ``folder_label`` and ``save_status``, and
    ``current_image()``, ``current_result()``, ``_image_layers()``, ``_ask_folder``,
    ``_confirm``, ``_image_shape``, ``_watch_vessels``, ``_show_run_info``, ``_sync_controls``
    and ``_update_comparison``.
    """

    # ------------------------------------------------------------------ resuming saved annotations

    def _schedule_adoption(self) -> None:
        # Not from inside napari's layer-inserted event: adopting may add layers itself.
        if not self._adopt_scheduled:
            self._adopt_scheduled = True
            QTimer.singleShot(0, self._adopt_all)

    def _adopt_all(self) -> None:
        self._adopt_scheduled = False
        if not self.alive:
            return
        for lyr in self.viewer.layers:  # annotations opened with the reader, at any time
            if _roles.role_of(lyr) == "vessels" and _roles.info_of(lyr).get("source") == "file":
                self._adopt_seen.add(id(lyr))
        for image in self._image_layers():
            first = id(image) not in self._adopt_seen
            self._adopt_seen.add(id(image))
            if looks_like_annotation(image) or id(image) in self._results:
                continue
            try:
                # Files only when the photograph is new; open layers whenever they appear.
                self.resume_annotation(image, files=first)
            except DPNError as exc:
                show_warning(f"Could not resume the saved annotation of '{image.name}': {exc}")
        self._sync_controls()
        self._update_comparison()

    def _linked_labels(self, image, role: str, name: str):
        shape = tuple(self._image_shape(image))
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if (
                isinstance(lyr, Labels)
                and tuple(np.shape(lyr.data)) == shape
                and (
                    (info.get("role") == role and info.get("image") == image.name)
                    or (lyr.name == name and info.get("role") in (role, None))
                )
            ):
                return lyr
        return None

    def resume_annotation(self, image, files: bool = True) -> bool:
        """Make an annotation saved earlier for ``image`` its vessels layer (edited, ready to save).

        The annotation is a labels layer already open for it (the napari-dpn reader names a saved
        ``<stem>_vessels.png`` ``"<stem> vessels"``), else the file in the save folder or beside
        the image.  Returns True when one was found.
        """
        from napari_dpn.annotations import annotation_paths
        from napari_dpn.image_io import read_mask

        vessels = self._linked_labels(image, "vessels", _roles.vessels_name(image.name))
        if vessels is not None and not _roles.is_corrected(vessels):
            vessels = None  # a bare network output (another widget's): nothing to resume
        fov_layer = self._linked_labels(image, "fov", _roles.fov_name(image.name))
        shape = tuple(self._image_shape(image))
        source = _roles.info_of(vessels).get("path") if vessels is not None else None
        if vessels is None:
            image_path = self.image_path(image) if files else None
            if image_path is None:
                return False
            found = None
            for folder in (self._save_folder, None):
                paths = annotation_paths(image_path, folder)
                if paths[0].is_file():
                    found = paths
                    break
            if found is None:
                return False
            mask = read_mask(found[0])
            if mask.shape != shape:
                raise InputError(f"{found[0].name} is {mask.shape[1]}x{mask.shape[0]}, the image {shape[1]}x{shape[0]}")
            source = str(found[0])
            vessels = self.viewer.add_labels(
                mask.astype(np.uint8),
                name=_roles.vessels_name(image.name),
                **_roles.style("vessels"),
                metadata=_roles.meta("vessels", image=image.name, path=source, source="file", corrected=True),
            )
            vessels.translate = image.translate[-2:]
            vessels.scale = image.scale[-2:]
            if fov_layer is None and found[1].is_file():
                fov = read_mask(found[1])
                if fov.shape == shape:
                    fov_layer = self.viewer.add_labels(
                        fov.astype(np.uint8),
                        name=_roles.fov_name(image.name),
                        visible=False,
                        **_roles.style("fov"),
                        metadata=_roles.meta("fov", image=image.name, path=str(found[1]), source="file"),
                    )
                    fov_layer.translate = image.translate[-2:]
                    fov_layer.scale = image.scale[-2:]
        _roles.set_info(vessels, role="vessels", image=image.name, corrected=True)
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else None
        res = _Result(
            image=image,
            name=image.name,
            prob=None,
            fov=fov,
            threshold=self.threshold,
            layers={"vessels": vessels, **({"fov": fov_layer} if fov_layer else {})},
            edited=True,
            resumed=source or vessels.name,
        )
        self._results[id(image)] = res
        self._watch_vessels(vessels)
        vessels.selected_label = 1
        vessels.brush_size = BRUSH_SIZE
        where = f" from {Path(source).name}" if source else ""
        show_info(
            f"Resumed your annotation of '{image.name}'{where}: '{vessels.name}' holds it, ready to correct and save."
        )
        if image is self.current_image():
            self._show_run_info(res)
        return True

    # ------------------------------------------------------------------ saving

    def choose_save_folder(self, *_) -> None:
        folder = self._ask_folder("Folder for saved annotations")
        if folder is not None:
            self.set_save_folder(folder)

    def set_save_folder(self, folder) -> None:
        self._save_folder = Path(folder) if folder else None
        self.folder_label.setText(f"Folder: {self._save_folder}" if self._save_folder else "Folder: next to the image")

    @staticmethod
    def image_path(layer) -> Path | None:
        """The file the image layer came from, if any."""
        path = _roles.info_of(layer).get("path")
        if not path:
            path = getattr(getattr(layer, "source", None), "path", None)
        if path and Path(path).is_file():
            return Path(path)
        return None

    def save_annotation(self, *_) -> tuple[Path, Path | None] | None:
        """Write the corrected vessels and the FOV as '<stem>_vessels.png' / '<stem>_fov.png'."""
        from napari_dpn.annotations import annotation_paths
        from napari_dpn.image_io import write_mask

        res = self.current_result()
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        if vessels is None:
            self._save_error("Nothing to save yet: segment the image first.")
            return None
        image_path = self.image_path(res.image)
        folder = self._save_folder
        if folder is None and image_path is None:
            folder = self._ask_folder(f"Folder for the annotation of '{res.name}'")
            if folder is None:
                self.save_status.setText("Not saved.")
                return None
        if image_path is None:
            image_path = Path(folder) / f"{res.name}.png"
        try:
            vessels_path, fov_path = (Path(p) for p in annotation_paths(image_path, folder))
        except DPNError as exc:
            self._save_error(str(exc))
            return None
        fov_layer = res.layer(self.viewer, "fov")
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else res.fov
        targets = [vessels_path] + ([fov_path] if fov is not None else [])
        existing = [p for p in targets if p.exists()]
        if existing:
            protected = self._ground_truth_paths() & {p.resolve() for p in existing}
            warn = " One of them is a ground-truth annotation." if protected else ""
            if not self._confirm(
                "Overwrite?",
                f"{', '.join(p.name for p in existing)} already exist in {existing[0].parent}.{warn} Overwrite?",
                ok="Overwrite",
            ):
                self.save_status.setText("Not saved: the existing files were kept.")
                return None
        try:
            write_mask(vessels_path, np.asarray(vessels.data) > 0, on_value=255)
            if fov is not None:
                write_mask(fov_path, fov, on_value=255)
        except (DPNError, OSError) as exc:
            self._save_error(f"Cannot save the annotation: {exc}")
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

    def _save_error(self, message: str) -> None:
        self.save_status.setText(message)
        show_error(message)

"""Resuming saved annotations in the Segment widget.

:class:`Resumer` makes an annotation saved earlier for a photograph (``<stem>_vessels.png``
beside it or in the state's save folder, or a layer opened with the napari-dpn reader) the
photograph's vessels layer, an edited :class:`~._segment_state.ImageResult` ready to correct and
save.  It looks when an image or a reader's annotation appears (``schedule``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from napari_dpn.errors import DPNError, InputError

from . import _roles
from ._segment_layers import ResultLayers
from ._segment_state import ImageResult, SegmentState, image_path, image_shape, looks_like_annotation


class Resumer:
    """Finds and opens the saved annotation of each photograph in the viewer."""

    def __init__(self, state: SegmentState, viewer, layers: ResultLayers, image_layers):
        self.state = state
        self.viewer = viewer
        self.layers = layers
        self.image_layers = image_layers  # () -> the image layers the widget lists
        self._scheduled = False

    def wants_a_look(self, images) -> bool:
        """True when an image or a reader's annotation appeared that was not looked at yet."""
        seen = self.state.adopt_seen
        return any(img not in seen for img in images) or any(
            _roles.role_of(lyr) == "vessels" and _roles.info_of(lyr).get("source") == "file" and lyr not in seen
            for lyr in self.viewer.layers
        )

    def schedule(self) -> None:
        # Not from inside napari's layer-inserted event: adopting may add layers itself.
        if not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self.adopt_all)

    def adopt_all(self) -> None:
        self._scheduled = False
        state = self.state
        if not state.alive:
            return
        for lyr in self.viewer.layers:  # annotations opened with the reader, at any time
            if _roles.role_of(lyr) == "vessels" and _roles.info_of(lyr).get("source") == "file":
                state.adopt_seen.add(lyr)
        for image in self.image_layers():
            first = image not in state.adopt_seen
            state.adopt_seen.add(image)
            if looks_like_annotation(image) or image in state.results:
                continue
            try:
                # Files only when the photograph is new; open layers whenever they appear.
                self.resume_annotation(image, files=first)
            except DPNError as exc:
                show_warning(f"Could not resume the saved annotation of '{image.name}': {exc}")
        state.touch()

    def resume_annotation(self, image, files: bool = True) -> bool:
        """Make an annotation saved earlier for ``image`` its vessels layer (edited, ready to save).

        The annotation is a labels layer already open for it (the napari-dpn reader names a saved
        ``<stem>_vessels.png`` ``"<stem> vessels"``), else the file in the save folder or beside
        the image.  Returns True when one was found.
        """
        vessels = self.layers.linked_labels(image, "vessels", _roles.vessels_name(image.name))
        if vessels is not None and not _roles.is_corrected(vessels):
            vessels = None  # a bare network output (another widget's): nothing to resume
        fov_layer = self.layers.linked_labels(image, "fov", _roles.fov_name(image.name))
        source = _roles.info_of(vessels).get("path") if vessels is not None else None
        if vessels is None:
            found = self._files(image) if files else None
            if found is None:
                return False
            source = str(found[0])
            vessels, fov_layer = self._open_files(image, found, fov_layer)
        _roles.set_info(vessels, role="vessels", image=image.name, corrected=True)
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else None
        res = ImageResult(
            image=image,
            name=image.name,
            prob=None,
            fov=fov,
            threshold=self.state.threshold,
            layers={"vessels": vessels, **({"fov": fov_layer} if fov_layer else {})},
            edited=True,
            resumed=source or vessels.name,
        )
        self.state.results[image] = res
        self.layers.watch(vessels)
        where = f" from {Path(source).name}" if source else ""
        show_info(
            f"Resumed your annotation of '{image.name}'{where}: '{vessels.name}' holds it, ready to correct and save."
        )
        if image is self.state.current_image():
            self.state.run_info.emit(res)
        return True

    def _files(self, image) -> tuple[Path, Path] | None:
        """The image's saved annotation files (save folder first, then beside it), if any."""
        from napari_dpn.annotations import annotation_paths

        path = image_path(image)
        if path is None:
            return None
        for folder in (self.state.save_folder, None):
            paths = annotation_paths(path, folder)
            if paths[0].is_file():
                return paths
        return None

    def _open_files(self, image, found, fov_layer):
        """Open the saved vessels (and FOV, when none is open) as labels layers over ``image``."""
        from napari_dpn.image_io import read_mask

        shape = image_shape(image)
        mask = read_mask(found[0])
        if mask.shape != shape:
            raise InputError(f"{found[0].name} is {mask.shape[1]}x{mask.shape[0]}, the image {shape[1]}x{shape[0]}")
        vessels = self.viewer.add_labels(
            mask.astype(np.uint8),
            name=_roles.vessels_name(image.name),
            **_roles.style("vessels"),
            metadata=_roles.meta("vessels", image=image.name, path=str(found[0]), source="file", corrected=True),
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
        return vessels, fov_layer

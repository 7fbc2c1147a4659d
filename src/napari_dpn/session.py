"""A folder being corrected: the :class:`Session` (Qt-free).

The photographs of a folder, each with a state (new / segmented / corrected / saved / accepted /
skipped, see :data:`napari_dpn.session_file.STATES`), the model that produced its first map,
timings and timestamps, persisted atomically in ``.napari-dpn-session.json`` beside the
annotations, so reopening the folder resumes exactly.  Moving on is not approval: only an image
the user edited (saved) or accepted as is is a correction (:attr:`Session.corrected_indices`,
:meth:`Session.training_pairs`); an untouched one stays "segmented" and is segmented again by a
new model (:meth:`Session.needs_segmentation`).

Its neighbours: :mod:`.session_file` (the file format, the folder's photographs and ground
truths), :mod:`.session_maps` (the maps it keeps), :mod:`.session_csv` (the table);
the correction tools are in :mod:`.vessel_tools`, "where to look next" in :mod:`.uncertainty`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .annotations import annotation_paths
from .errors import InputError
from .session_csv import session_rows, write_csv
from .session_file import (
    CACHE_DIR,
    CORRECTIONS,
    LABELS,
    SESSION_FILE,
    STATES,
    VERSION,
    Entry,
    SessionConflict,
    SessionDamaged,
    file_digest,
    list_photographs,
    move_aside,
    now_stamp,
    parse_session_data,
    room_for,
)
from .session_finetune import finetune_session
from .session_maps import Segmented, fov_diameter, read_map_arrays, read_map_cache, vessel_density, write_map_cache


class Session:
    """A folder of photographs being corrected; ``Session.open(folder)`` creates or resumes one."""

    def __init__(
        self, folder: Path, annotations: Path, entries: list[Entry], current: int = 0, models: list | None = None
    ):
        self.folder, self.annotations = folder, annotations
        self.entries, self.current = entries, current
        self.models = list(models or [])  # fine-tuned versions: name, path, base, images, at
        self.field_angle: float | str | None = None  # the folder's camera: degrees, None (estimate) or 'native'
        self.write_error: str | None = None  # why the session file could not be written (kept in memory)
        self.backup: Path | None = None  # where a damaged session file was moved to
        self.lock = threading.RLock()  # entries and the session file: the widget saves from a worker thread
        self._save_lock = threading.Lock()  # one annotation write at a time

    # -- creation and persistence
    @classmethod
    def open(cls, folder: str | Path, annotations: str | Path | None = None, start_afresh: bool = False) -> Session:
        """The session of ``folder`` (annotations beside the photographs unless given): resumed
        from its session file, new photographs added, vanished ones dropped.

        A session file that is not a session raises SessionDamaged (one sentence); with
        ``start_afresh`` it is moved aside (``.napari-dpn-session.damaged-<time>.json``, never
        over another file: ``session.backup``) and a new session starts.  A file of version 1,
        where moving on saved the untouched map as "saved", is read with :meth:`_migrate_v1`."""
        folder = Path(folder).expanduser().resolve()
        photos = list_photographs(folder)
        if not photos:
            raise InputError(f"No photographs in {folder}.")
        annotations = Path(annotations).expanduser().resolve() if annotations else folder
        try:
            annotations.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from .files import os_error_message

            raise InputError(os_error_message(exc, annotations, "create the folder")) from None
        old: dict[str, Entry] = {}
        models: list[dict] = []
        current_name, angle, version, backup = None, None, VERSION, None
        path = annotations / SESSION_FILE
        if path.is_file():
            try:
                try:
                    data = json.loads(path.read_text())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise SessionDamaged(f"The session file {path} is damaged: it is not JSON ({exc}).", path) from None
                except OSError as exc:
                    from .files import os_error_message

                    raise InputError(os_error_message(exc, path, "read")) from None
                old, current_name, models, angle, version = parse_session_data(data, path)
            except SessionDamaged:
                if not start_afresh:
                    raise
                backup = move_aside(path)
        entries = []
        for p in photos:
            e = old.get(p.name) or Entry(p.name)
            vessels, _ = annotation_paths(p, annotations)
            if e.state == "new" and vessels.is_file():
                digest = file_digest(vessels)
                if e.digest is None or digest != e.digest:  # saved before the session, or by someone else
                    e.state, e.digest, e.saved_at = "saved", digest, now_stamp()
            entries.append(e)
        names = [e.name for e in entries]
        session = cls(folder, annotations, entries, names.index(current_name) if current_name in names else 0, models)
        session.field_angle, session.backup = angle, backup
        if version < 2:
            session._migrate_v1()
        session.persist()
        return session

    def _migrate_v1(self) -> None:
        """Version 1 marked an image "saved" when the user merely moved on from it (the network's
        map, written untouched).  Such an entry stays a correction only if its vessels file differs
        from the cached map, or was changed since the session wrote it, or cannot be compared; an
        untouched one becomes "segmented" again (its file stays on disk, recognised as the
        session's own, so a later correction replaces it without asking)."""
        for i, e in enumerate(self.entries):
            if e.state != "saved":
                continue
            path = self.vessels_path(i)
            if not path.is_file():
                e.state = "segmented" if e.model else "new"
                continue
            cached = self.cached(i)
            if cached is None or e.digest is None or file_digest(path) != e.digest:
                continue  # someone's annotation, or nothing to compare with: keep it
            try:
                saved = self.saved_mask(i)
            except InputError:
                continue
            prob, fov, t = cached
            if saved is None or saved.shape != prob.shape:
                continue
            differ = saved != ((prob >= t) & fov)
            # The cache holds float16: pixels this close to the threshold may round across it.
            if not differ.any() or bool((np.abs(prob[differ] - t) <= 2e-3).all()):
                e.state = "segmented"

    @property
    def path(self) -> Path:
        return self.annotations / SESSION_FILE

    def write(self) -> Path:
        """Write the session file atomically (OutputError with one sentence when it cannot)."""
        from .files import atomic_write, os_error_message

        with self.lock:
            data = {
                "version": VERSION,
                "folder": str(self.folder),
                "annotations": str(self.annotations),
                "current": self.entries[self.current].name,
                "field_angle": self.field_angle,
                "images": [asdict(e) for e in self.entries],
                "models": self.models,
            }
            try:
                with atomic_write(self.path) as tmp:
                    Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
            except OSError as exc:  # the write inside the block (atomic_write converts its own)
                from .errors import OutputError

                raise OutputError(os_error_message(exc, self.path)) from exc
            self.write_error = None
        return self.path

    def persist(self) -> str | None:
        """Write the session file; when that fails (a full disk) keep the state in memory, remember
        the sentence in ``write_error`` and return it, never raise: a brush stroke, Next or a
        prefetch must not fail because the bookkeeping could not be written.  The next write
        that succeeds records everything."""
        from .errors import DPNError

        try:
            self.write()
        except (DPNError, OSError) as exc:
            self.write_error = str(exc) if isinstance(exc, DPNError) else f"Cannot write {self.path}: {exc}."
        return self.write_error

    # -- navigation
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def done(self) -> int:
        """Images nobody needs to look at again: corrections (saved, accepted) and skipped ones."""
        return sum(e.state in CORRECTIONS or e.state == "skipped" for e in self.entries)

    def counts(self) -> dict:
        """How many images are in each state."""
        return {state: sum(e.state == state for e in self.entries) for state in STATES}

    def is_correction(self, index: int) -> bool:
        """Whether the image's annotation on disk is the user's: edited and saved, or accepted as
        is.  Only these are training pairs; moving on from an image approves nothing."""
        return self.entries[index].state in CORRECTIONS

    @property
    def corrected_indices(self) -> list[int]:
        """The images whose annotation is a correction (:meth:`is_correction`)."""
        return [i for i in range(len(self.entries)) if self.is_correction(i)]

    def needs_segmentation(self, index: int) -> bool:
        """Whether a new model (or field of view) segments this image again: nobody edited,
        accepted or skipped it (new / segmented)."""
        return self.entries[index].state in ("new", "segmented")

    def label(self, index: int) -> str:
        """The image's state in words, as the list shows it."""
        return LABELS[self.entries[index].state]

    def image_path(self, index: int | None = None) -> Path:
        return self.folder / self.entries[self.current if index is None else index].name

    def vessels_path(self, index: int | None = None) -> Path:
        return annotation_paths(self.image_path(index), self.annotations)[0]

    def fov_path(self, index: int | None = None) -> Path:
        return annotation_paths(self.image_path(index), self.annotations)[1]

    def cache_path(self, index: int | None = None) -> Path:
        return self.annotations / CACHE_DIR / f"{self.image_path(index).stem}.npz"

    def go(self, index: int) -> int:
        """Make ``index`` the current image (persisted; a failed write is kept in ``write_error``)."""
        self.current = max(0, min(len(self.entries) - 1, int(index)))
        self.persist()
        return self.current

    # -- the segmentation of one image
    def record_segmentation(self, index: int, seg: Segmented) -> None:
        """Keep the probability map (in the cache folder) and, on the first map, which model made
        it; a 'new' image becomes 'segmented'."""
        self.store_probability(index, seg)
        self.note_segmentation(index, seg)

    def store_probability(self, index: int, seg: Segmented) -> Path:
        """Write the probability map, FOV and threshold to the cache folder (any thread)."""
        return write_map_cache(self.cache_path(index), seg)

    def cached_segmentation(self, index: int) -> Segmented | None:
        """The kept map of an image with who made it (model, scale, field angle), or None.  A
        cache written before that was recorded has the model ''."""
        return read_map_cache(self.cache_path(index))

    def note_segmentation(self, index: int, seg: Segmented) -> None:
        """Record the first map's model, time, scale and numbers; 'new' becomes 'segmented'."""
        e = self.entries[index]
        if e.model is None and seg.model:
            e.model, e.seconds, e.scale = seg.model, round(seg.seconds, 3), seg.scale
            e.threshold, e.segmented_at = seg.threshold, now_stamp()
            e.field_angle, e.scale_note = seg.field_angle, seg.scale_note or None
            e.fov_diameter = round(fov_diameter(seg.fov), 1)
            e.density = round(vessel_density(seg.mask(), seg.fov), 5)
        if e.state == "new":
            e.state = "segmented"
        self.persist()

    def cached(self, index: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(probability, FOV, threshold) kept for an image, or None."""
        return read_map_arrays(self.cache_path(index))

    def mark_corrected(self, index: int) -> None:
        """The user edited the image: a correction, to be saved (persisted without raising)."""
        e = self.entries[index]
        if e.state != "corrected":
            e.before, e.state = e.state, "corrected"
            self.persist()

    def unmark_corrected(self, index: int) -> None:
        """The edits were undone to what was there before: the image goes back to its earlier
        state (an untouched map stays "segmented", not a correction)."""
        e = self.entries[index]
        if e.state == "corrected":
            e.state, e.before = e.before or "segmented", None
            self.persist()

    def skip(self, index: int) -> None:
        """Leave the image out: not a correction, not a training pair, not segmented again by
        *Re-segment the rest*.  Its annotation file, if any, stays on disk untouched; editing or
        accepting it later makes it a correction again."""
        e = self.entries[index]
        e.state, e.before = "skipped", None
        self.persist()

    def room_to_save(self, index: int, shape) -> bool:
        """Whether the annotations folder has room for this image's vessels and FOV files."""
        return room_for(self.annotations, 2 * (int(np.prod(shape[:2])) // 8 + 4096))

    def conflict(self, index: int) -> Path | None:
        """The vessels file of an image when it exists and is not the one this session wrote or
        resumed (someone else's file: ask before replacing it), else None."""
        path = self.vessels_path(index)
        if not path.is_file():
            return None
        return None if file_digest(path) == self.entries[index].digest else path

    def save(
        self, index: int, mask: np.ndarray, fov: np.ndarray | None = None, overwrite: bool = False, state="saved"
    ) -> Path:
        """Write the corrected vessels (and FOV) of an image atomically: it is a correction
        ("saved"; ``state="accepted"``: the network's map accepted as is).  Refuses
        (SessionConflict) to replace a vessels file the session did not write unless
        ``overwrite``; a failed write (a full disk: OutputError) changes no state.  The session
        file is written after the annotation; when only that fails, ``write_error`` says so."""
        from .image_writers import write_mask

        if state not in CORRECTIONS:
            raise ValueError(f"state must be one of {CORRECTIONS}")
        # Saves are ordered by their own lock; the session's lock (entries, the session file) is
        # held only for the bookkeeping, so the GUI thread's navigation never waits for a PNG.
        with self._save_lock:
            return self._save(index, mask, fov, overwrite, write_mask, state)

    def accept(self, index: int, mask: np.ndarray, fov: np.ndarray | None = None, overwrite: bool = False) -> Path:
        """The user accepts the map as it is: written like a correction, state "accepted"."""
        return self.save(index, mask, fov, overwrite, state="accepted")

    def save_copy(self, index: int, mask: np.ndarray, fov: np.ndarray | None, folder: str | Path) -> Path:
        """Write an image's vessels (and FOV) into another ``folder`` (when the annotations folder
        is full), never over a file there (OutputExistsError); the session's state is unchanged."""
        from .image_writers import write_mask

        folder = Path(folder)
        vessels, fov_path = annotation_paths(self.image_path(index), folder)
        write_mask(vessels, np.asarray(mask, bool), on_value=255, overwrite=False)
        if fov is not None and not fov_path.exists():
            write_mask(fov_path, np.asarray(fov, bool), on_value=255, overwrite=False)
        return vessels

    def _save(self, index, mask, fov, overwrite, write_mask, state="saved") -> Path:
        path = self.conflict(index)
        if path is not None and not overwrite:
            raise SessionConflict(f"{path.name} was not written by this session; confirm to replace it.")
        vessels = write_mask(self.vessels_path(index), np.asarray(mask, bool), on_value=255)
        if fov is not None and (
            not self.fov_path(index).is_file() or overwrite or self.entries[index].digest is not None
        ):
            write_mask(self.fov_path(index), np.asarray(fov, bool), on_value=255)
        digest = file_digest(vessels)
        numbers = (
            (round(vessel_density(mask, np.asarray(fov, bool)), 5), round(fov_diameter(np.asarray(fov, bool)), 1))
            if fov is not None
            else None
        )
        with self.lock:
            e = self.entries[index]
            e.state, e.saved_at, e.digest, e.before = state, now_stamp(), digest, None
            if numbers is not None:
                e.density, e.fov_diameter = numbers
            self.persist()
        return vessels

    def saved_mask(self, index: int) -> np.ndarray | None:
        """The vessels annotation on disk of an image (resumed), or None."""
        from .image_io import read_mask

        path = self.vessels_path(index)
        return read_mask(path) if path.is_file() else None

    # -- the human-in-the-loop cycle
    def training_pairs(self) -> list[tuple]:
        """(rgb, vessels, FOV or None) of every correction (edited and saved, or accepted as is;
        :attr:`corrected_indices`); an image the user only moved on from is never one."""
        from .image_io import as_rgb, read_image, read_mask

        pairs = []
        for i in self.corrected_indices:
            if not self.vessels_path(i).is_file():
                continue
            rgb = as_rgb(read_image(self.image_path(i)))
            fov = read_mask(self.fov_path(i)) if self.fov_path(i).is_file() else None
            pairs.append((rgb, read_mask(self.vessels_path(i)), fov))
        return pairs

    def finetune(
        self,
        init,
        steps: int = 200,
        name: str | None = None,
        device: str = "auto",
        out_dir=None,
        should_stop=None,
        callback=None,
        field_angle: float | str | None = None,
    ):
        """Fine-tune ``init`` on the saved annotations (:func:`napari_dpn.session_finetune.finetune_session`);
        returns the engine's ``TrainResult``."""
        return finetune_session(self, init, steps, name, device, out_dir, should_stop, callback, field_angle)

    def reset_unsaved(self) -> list[int]:
        """Forget the maps of the images nobody edited, accepted or skipped
        (:meth:`needs_segmentation`: moving on from one approved nothing), so the next visit
        segments them again with the chosen model and field of view; returns their indices."""
        reset = []
        with self.lock:
            for i, e in enumerate(self.entries):
                if self.needs_segmentation(i):
                    self.cache_path(i).unlink(missing_ok=True)
                    e.state, e.model, e.seconds, e.segmented_at = "new", None, None, None
                    e.scale, e.scale_note, e.field_angle = None, None, None
                    reset.append(i)
            self.persist()
        return reset

    def visit(self, index: int, region) -> None:
        self.entries[index].visited.append([int(region[0]), int(region[1])])
        self.persist()

    # -- export
    def rows(self) -> list[dict]:
        """One row per image for the CSV (:func:`napari_dpn.session_csv.session_rows`)."""
        return session_rows(self)

    def export_csv(self, path: str | Path) -> Path:
        """Write the per-image table atomically."""
        return write_csv(self, path)

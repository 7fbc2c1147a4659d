"""The human-in-the-loop half of the Correct-a-folder widget: fine-tune on the saved images,
re-segment the images nobody corrected, and export the per-image CSV; all in workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog

from napari_dpn.errors import DPNError

from ._dock import CancellableWorker, _Job, unstarted_worker


class LoopMixin:
    """Fine-tune, re-segment the rest, export (part of :class:`SessionWidget`).

    Uses the widget's ``alive``, ``session``, ``index``, ``shown``, ``_ready``, ``_arrival``,
    ``_generation``, ``_ft_worker``, ``_csv_worker``, ``_life``, ``_spec``, ``_request``,
    ``save_now``, ``_say``, ``_error``, ``_sync``, ``_refresh_list``, the model picker and device controls.
    """

    # ------------------------------------------------------------------ human in the loop

    def finetune(self, *_) -> bool:
        """Fine-tune the chosen model on the saved images, in a worker, with the running panel
        (progress, ETA, loss, Cancel).  The click returns at once: the image on screen is saved
        by the worker before training, and nothing here waits for the network."""
        if self.session is None or self._ft_worker is not None:
            return False
        spec = self._spec()
        if spec is None:
            show_warning("Choose a model to fine-tune first.")
            return False
        session, steps = self.session, int(self.ft_steps.value())
        device, life = self.device_combo.currentText() or "auto", self._life
        pending = self._pending_correction()
        panel = self.training_panel()
        stop = panel.start(steps)
        self._make_room(True)

        def should_stop() -> bool:
            return stop.is_set() or life.cancel.is_set() or life.closed

        report = panel.reporter(alive=lambda: not life.closed)  # runs in the worker: draws the loss there
        job = _Job(
            self._finetune_job,
            f"fine-tuning on the saved images of {session.folder.name}",
            *(session, spec, steps, device, pending, should_stop, report),
        )
        worker = create_worker(job, _worker_class=CancellableWorker, _start_thread=False)
        worker.cancel_event = stop  # napari quits workers when the window closes: stop the run
        worker.returned.connect(lambda out, s=session, p=pending: self._on_finetuned(s, out, p))
        worker.finished.connect(self._on_ft_finished)
        self._ft_worker = worker
        n = len(session.corrected_indices) + (pending is not None and pending[0] not in session.corrected_indices)
        self._say(f"Fine-tuning {Path(str(spec)).stem} on {n} corrected image(s), {steps} steps…")
        worker.start()
        self._sync()
        return True

    def _pending_correction(self):
        """(index, mask, FOV, the shown image, edits, the file's digest) of corrections on screen
        not yet saved, when they may be written (what ``save_now`` would write), else None."""
        prep, vessels = self.shown, self.layers.get("vessels")
        if self.session is None or prep is None or vessels is None or not self.dirty:
            return None
        try:
            if self.session.conflict(prep.index) is not None:
                return None  # someone else's file: Next asks before replacing it
        except OSError:
            return None
        digest = self.session.entries[prep.index].digest
        return prep.index, np.asarray(vessels.data) > 0, prep.seg.fov, prep, self.edits, digest

    def training_panel(self):
        """The running panel, made on the first fine-tune and placed above the status line."""
        from ._training_panel import TrainingPanel

        panel = getattr(self, "ft_panel", None)
        if panel is None:
            panel = self.ft_panel = TrainingPanel("Fine-tuning on saved", theme=getattr(self.viewer, "theme", None))
            outer = self.layout()
            at = outer.indexOf(self.status)
            outer.insertWidget(at if at >= 0 else outer.count(), panel)
        return panel

    @staticmethod
    def _finetune_job(session, spec, steps, device, pending, should_stop, report):
        """Worker: save the corrections on screen, then fine-tune; never raises.  A cancelled
        run leaves no model and no checkpoint: the session keeps the model it had."""
        try:
            # Unless a newer save (Next, right after the click) came first: never write older edits over it.
            if pending is not None and session.entries[pending[0]].digest == pending[5]:
                session.save(*pending[:3])
            result = session.finetune(spec, steps=steps, device=device, should_stop=should_stop, callback=report)
        except DPNError as exc:
            return str(exc)
        except OSError as exc:
            return f"Fine-tuning stopped: {exc.strerror or exc}."
        except Exception as exc:  # noqa: BLE001 - a notification, never a traceback
            return f"Fine-tuning failed ({type(exc).__name__}: {exc})."
        if result.model_path is None and result.checkpoint is not None:
            Path(result.checkpoint).unlink(missing_ok=True)  # ours, and nothing here resumes it
        return result

    def _make_room(self, running: bool) -> None:
        """While a run lasts the Folder section folds, so the plot fits a 768 px high screen;
        afterwards it comes back and the panel folds to its one-line outcome (click to see the loss)."""
        folder = getattr(self, "folder_section", None)
        if running:
            self._unfold_after_run = folder is not None and folder.is_expanded()
            if self._unfold_after_run:
                folder.set_expanded(False)
            return
        if getattr(self, "_unfold_after_run", False):
            folder.set_expanded(True)
        self._unfold_after_run = False
        self.training_panel().set_expanded(False)

    def _on_ft_finished(self) -> None:
        self._ft_worker = None
        if self.alive:
            self._make_room(False)
            self._sync()

    def _on_finetuned(self, session, out, pending=None) -> None:
        if not self.alive:
            return
        panel = self.training_panel()
        if isinstance(out, str):
            panel.finish("stopped")  # the sentence is in the status line and the notification
            self._error(out)
            return
        if pending is not None and self.shown is pending[3] and self.edits == pending[4]:
            self.edits, self.dirty = 0, False  # saved by the job; no edit since
        self._refresh_list()
        if out.model_path is None:
            panel.finish(f"cancelled at step {out.steps} · no model saved", out.steps)
            self._say(
                f"Fine-tuning was cancelled at step {out.steps}: no model was saved; "
                f"the session keeps using {self.model_picker.combo.currentText()}."
            )
            return
        panel.finish(f"done · {out.steps} steps · saved '{out.card.name}'", out.steps)
        from ._model_picker import announce_new_model

        announce_new_model()  # every model list re-reads the folder (this one, Segment, Fine-tune)
        if session is self.session:
            self._select_path(out.model_path)
        self._say(
            f"Saved the model '{out.card.name}' ({out.steps} steps) to {out.model_path}; "
            "'Re-segment the rest' applies it to the images nobody corrected."
        )

    def _select_path(self, path) -> None:
        """Choose the model saved at ``path`` (by its file, never by a name another model may share)."""
        combo, target = self.model_picker.combo, Path(path).resolve()
        for i in range(combo.count()):
            data = combo.itemData(i)
            if isinstance(data, tuple) and Path(data[1]).resolve() == target:
                combo.setCurrentIndex(i)
                return
        self.add_model_file(path)

    def resegment_rest(self, *_) -> int:
        """Segment again, with the chosen model, every image not corrected or saved."""
        if self.session is None:
            return 0
        self._generation += 1
        reset = self.session.reset_unsaved()
        for i in reset:
            self._ready.pop(i, None)
        self._refresh_list()
        if self.index in reset:  # the image on screen was not touched: show its new map
            self.shown, self._arrival = None, None
            self._request(self.index)
        elif self.index is not None:
            self._request(self.index + 1)
        self._say(
            f"Re-segmenting {len(reset)} image(s) with {self.model_picker.combo.currentText()} as they are visited."
        )
        return len(reset)

    # ------------------------------------------------------------------ export

    def _ask_save_path(self) -> Path | None:
        """Ask where the CSV goes; tests replace this method."""
        default = str(self.session.annotations / "session.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Export CSV", default, "CSV (*.csv)")
        return Path(path) if path else None

    def export_clicked(self, *_) -> bool:
        if self.session is None:
            return False
        path = self._ask_save_path()
        return path is not None and self.export_csv(path)

    def export_csv(self, path) -> bool:
        """Write the per-image CSV in a worker."""
        if self.session is None or self._csv_worker is not None:
            return False

        def job(session=self.session, path=Path(path)):
            try:
                return session.export_csv(path)
            except (DPNError, OSError) as exc:
                return f"Cannot export the CSV: {exc}"

        worker = unstarted_worker(job)
        worker.returned.connect(self._on_exported)
        worker.finished.connect(lambda: setattr(self, "_csv_worker", None))
        self._csv_worker = worker
        worker.start()
        return True

    def _on_exported(self, out) -> None:
        if not self.alive:
            return
        if isinstance(out, str):
            self._error(out)
        else:
            show_info(f"Wrote {out}.")
            self._say(f"Wrote {out}.")

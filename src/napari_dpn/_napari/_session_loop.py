"""The human-in-the-loop half of the Correct-a-folder widget: fine-tune on the saved images,
re-segment the images nobody corrected, and export the per-image CSV; all in workers."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog

from napari_dpn.errors import DPNError

from ._dock import unstarted_worker


class LoopMixin:
    """Fine-tune, re-segment the rest, export (part of :class:`SessionWidget`).

    Uses the widget's ``alive``, ``session``, ``index``, ``shown``, ``_ready``, ``_arrival``,
    ``_generation``, ``_ft_worker``, ``_csv_worker``, ``_life``, ``_spec``, ``_request``,
    ``save_now``, ``_say``, ``_error``, ``_sync``, ``_refresh_list``, the model picker and device controls.
    """

    # ------------------------------------------------------------------ human in the loop

    def finetune(self, *_) -> bool:
        """Fine-tune the chosen model on the saved images, in a worker."""
        if self.session is None or self._ft_worker is not None:
            return False
        spec = self._spec()
        if spec is None:
            show_warning("Choose a model to fine-tune first.")
            return False
        self.save_now()
        session, steps = self.session, int(self.ft_steps.value())
        device, cancel = self.device_combo.currentText() or "auto", self._life.cancel

        def job():
            try:
                return session.finetune(spec, steps=steps, device=device, should_stop=cancel.is_set)
            except DPNError as exc:
                return str(exc)
            except Exception as exc:  # noqa: BLE001 - a notification, never a traceback
                return f"Fine-tuning failed ({type(exc).__name__}: {exc})."

        worker = unstarted_worker(job)
        worker.returned.connect(self._on_finetuned)
        worker.finished.connect(self._on_ft_finished)
        self._ft_worker = worker
        self._say(f"Fine-tuning on {len(session.corrected_indices)} corrected image(s), {steps} steps…")
        worker.start()
        self._sync()
        return True

    def _on_ft_finished(self) -> None:
        self._ft_worker = None
        if self.alive:
            self._sync()

    def _on_finetuned(self, out) -> None:
        if not self.alive:
            return
        if isinstance(out, str):
            self._error(out)
            return
        if out.model_path is None:
            self._say("Fine-tuning was cancelled; no model was saved.")
            return
        self.model_picker.refresh()
        try:
            self.select_model(out.card.name)
        except ValueError:
            self.add_model_file(out.model_path)
        self._say(
            f"Saved the model '{out.card.name}' ({out.steps} steps); 'Re-segment the rest' "
            "applies it to the images nobody corrected."
        )

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

"""The *Loop* panel of *Correct a folder*, the human-in-the-loop half: fine-tune on the saved
images (with the running panel: progress, ETA, loss, Cancel), re-segment the images nobody
corrected, and export the per-image CSV; all in workers."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSpinBox, QWidget

from napari_dpn.errors import DPNError
from napari_dpn.messages import sentence

from ._dock import named_worker, unstarted_worker
from ._model_picker import announce_new_model
from ._session_folder import FolderPanel
from ._session_layers import FolderLayers
from ._session_navigation import Navigator
from ._session_state import FolderState
from ._training_panel import TrainingPanel


def finetune_job(session, spec, steps, device, pending, should_stop, report):
    """Worker: save the corrections on screen, then fine-tune; never raises.  A cancelled
    run leaves no model and no checkpoint: the session keeps the model it had."""
    try:
        # Unless a newer save (Next, right after the click) came first: never write older edits over it.
        if pending is not None and session.entries[pending[0]].digest == pending[5]:
            session.save(*pending[:3])
        result = session.finetune(spec, steps=steps, device=device, should_stop=should_stop, callback=report)
    except Exception as exc:  # noqa: BLE001 - a notification, never a traceback
        return sentence(exc, doing="Fine-tuning")
    if result.model_path is None and result.checkpoint is not None:
        Path(result.checkpoint).unlink(missing_ok=True)  # ours, and nothing here resumes it
    return result


class LoopPanel(QWidget):
    """Fine-tune on saved, Re-segment the rest, Export CSV….  ``host``: ``life`` (the widget's
    cancel flag and closed state), ``theme``, ``place(panel)`` (puts the running panel above the
    status line) and ``ask_save_path()`` (where the CSV goes; tests replace it)."""

    def __init__(self, state: FolderState, nav: Navigator, layers: FolderLayers, folder: FolderPanel, host):
        super().__init__()
        self.state, self.nav, self.layers, self.folder, self.host = state, nav, layers, folder, host
        self.ft_panel: TrainingPanel | None = None
        self._unfold_after_run = False
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.ft_steps = QSpinBox()
        self.ft_steps.setRange(1, 100_000)
        self.ft_steps.setValue(200)
        self.ft_steps.setToolTip("Fine-tuning steps.")
        self.ft_button = QPushButton("Fine-tune on saved")
        self.ft_button.setToolTip(
            "Fine-tune the chosen model on the images saved so far, in the "
            "background; the new model is saved with its card and selected."
        )
        self.ft_button.clicked.connect(self.finetune)
        self.reseg_button = QPushButton("Re-segment the rest")
        self.reseg_button.setToolTip("Segment the images nobody corrected or saved again, with the chosen model.")
        self.reseg_button.clicked.connect(self.resegment_rest)
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.setToolTip(
            "Per-image state, model, density, FOV diameter, time, and Se/Sp/Acc/AUC/F1 where a ground truth is known."
        )
        self.csv_button.clicked.connect(self.export_clicked)
        for w in (self.ft_steps, self.ft_button, self.reseg_button, self.csv_button):
            row.addWidget(w)
        state.changed.connect(self.sync)
        self.sync()

    def sync(self) -> None:
        has, running = self.state.session is not None, "finetune" in self.state.workers
        self.csv_button.setEnabled(has)
        self.ft_button.setEnabled(has and not running)
        self.reseg_button.setEnabled(has and not running)

    # -- fine-tuning
    def finetune(self, *_) -> bool:
        """Fine-tune the chosen model on the saved images, in a worker, with the running panel.
        The click returns at once: the image on screen is saved by the worker before training."""
        st = self.state
        if st.session is None or "finetune" in st.workers:
            return False
        spec = self.folder.spec()
        if spec is None:
            st.notify("warning", "Choose a model to fine-tune first.")
            return False
        session, steps, life = st.session, int(self.ft_steps.value()), self.host.life
        device = self.folder.device_combo.currentText() or "auto"
        pending = self._pending_correction()
        panel = self.training_panel()
        stop = panel.start(steps)
        self._make_room(True)
        report = panel.reporter(alive=lambda: not life.closed)  # runs in the worker: draws the loss there
        worker = named_worker(
            finetune_job,
            f"fine-tuning on the saved images of {session.folder.name}",
            *(session, spec, steps, device, pending),
            lambda: stop.is_set() or life.cancel.is_set() or life.closed,
            report,
            cancel_event=stop,  # napari quits workers when the window closes: stop the run
        )
        worker.returned.connect(lambda out, s=session, p=pending: self._on_finetuned(s, out, p))
        worker.finished.connect(self._on_ft_finished)
        n = len(session.corrected_indices) + (pending is not None and pending[0] not in session.corrected_indices)
        st.say(f"Fine-tuning {Path(str(spec)).stem} on {n} corrected image(s), {steps} steps…")
        st.set_worker("finetune", worker)
        worker.start()
        return True

    def _pending_correction(self):
        """(index, mask, FOV, the shown image, edits, the file's digest) of corrections on screen
        not yet saved, when they may be written, else None."""
        st, prep, mask = self.state, self.state.shown, self.layers.vessels_mask()
        if st.session is None or prep is None or mask is None or not st.dirty:
            return None
        try:
            if st.session.conflict(prep.index) is not None:
                return None  # someone else's file: Next asks before replacing it
        except OSError:
            return None
        return prep.index, mask, prep.seg.fov, prep, st.edits, st.session.entries[prep.index].digest

    def training_panel(self) -> TrainingPanel:
        """The running panel, made on the first fine-tune and placed above the status line."""
        if self.ft_panel is None:
            self.ft_panel = TrainingPanel("Fine-tuning on saved", theme=self.host.theme)
            self.host.place(self.ft_panel)
        return self.ft_panel

    def _make_room(self, running: bool) -> None:
        """While a run lasts the Folder section folds, so the plot fits a 768 px high screen;
        afterwards it comes back and the panel folds to its one-line outcome (click to see the loss)."""
        section = self.folder.section
        if running:
            self._unfold_after_run = section.is_expanded()
            if self._unfold_after_run:
                section.set_expanded(False)
            return
        if self._unfold_after_run:
            section.set_expanded(True)
        self._unfold_after_run = False
        self.training_panel().set_expanded(False)

    def _on_ft_finished(self) -> None:
        alive = self.layers.alive()
        self.state.worker_done("finetune", alive)
        if alive:
            self._make_room(False)

    def _on_finetuned(self, session, out, pending=None) -> None:
        st = self.state
        if not self.layers.alive():
            return
        panel = self.training_panel()
        if isinstance(out, str):
            panel.finish("stopped")  # the sentence is in the status line and the notification
            st.error(out)
            return
        if pending is not None and st.shown is pending[3] and st.edits == pending[4]:
            st.edits, st.dirty = 0, False  # saved by the job; no edit since
        st.listed.emit()
        if out.model_path is None:
            panel.finish(f"cancelled at step {out.steps} · no model saved", out.steps)
            st.say(
                f"Fine-tuning was cancelled at step {out.steps}: no model was saved; "
                f"the session keeps using {self.folder.model_picker.combo.currentText()}."
            )
            return
        panel.finish(f"done · {out.steps} steps · saved '{out.card.name}'", out.steps)
        announce_new_model()  # every model list re-reads the folder (this one, Segment, Fine-tune)
        if session is st.session:
            self._select_path(out.model_path)
        st.say(
            f"Saved the model '{out.card.name}' ({out.steps} steps) to {out.model_path}; "
            "'Re-segment the rest' applies it to the images nobody corrected."
        )

    def _select_path(self, path) -> None:
        """Choose the model saved at ``path`` (by its file, never by a name another model may share)."""
        combo, target = self.folder.model_picker.combo, Path(path).resolve()
        for i in range(combo.count()):
            data = combo.itemData(i)
            if isinstance(data, tuple) and Path(data[1]).resolve() == target:
                combo.setCurrentIndex(i)
                return
        self.folder.model_picker.add_model_file(path)

    # -- re-segmenting and the CSV
    def resegment_rest(self, *_) -> int:
        """Segment again, with the chosen model, every image not corrected or saved."""
        if self.state.session is None:
            return 0
        reset = self.nav.resegment_rest()
        model = self.folder.model_picker.combo.currentText()
        self.state.say(f"Re-segmenting {len(reset)} image(s) with {model} as they are visited.")
        return len(reset)

    def export_clicked(self, *_) -> bool:
        if self.state.session is None:
            return False
        path = self.host.ask_save_path()
        return path is not None and self.export_csv(path)

    def export_csv(self, path) -> bool:
        """Write the per-image CSV in a worker."""
        st = self.state
        if st.session is None or "csv" in st.workers:
            return False

        def job(session=st.session, path=Path(path)):
            try:
                return session.export_csv(path)
            except (DPNError, OSError) as exc:
                return f"Cannot export the CSV: {exc}"

        worker = unstarted_worker(job)
        worker.returned.connect(self._on_exported)
        worker.finished.connect(lambda: st.worker_done("csv", self.layers.alive()))
        st.set_worker("csv", worker)
        worker.start()
        return True

    def _on_exported(self, out) -> None:
        if not self.layers.alive():
            return
        if isinstance(out, str):
            self.state.error(out)
        else:
            self.state.notify("info", f"Wrote {out}.")
            self.state.say(f"Wrote {out}.")

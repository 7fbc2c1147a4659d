"""The "Fine-tune DPN" dock widget: train a model further on corrected annotations.

Training pairs come from the viewer (an image layer with its *corrected* ``"<image> vessels"``
labels layer and, when present, its ``"<image> FOV"`` layer, as the "Segment vessels" widget
makes them; a bare network output is never a training pair: only a layer the user edited,
saved, or opened from a saved annotation) and/or from a folder of images with ``<stem>_vessels.png`` / ``<stem>_fov.png``
saved by that widget (:mod:`napari_dpn.annotations`).  Validation pairs (optional) are image
layers with a ground-truth labels layer, or a folder in the same convention; an image with a
ground truth stays a validation image (its corrected layer is listed for training unticked).

The run uses :func:`napari_dpn.training.train` in a napari worker thread: a progress bar with
the ETA, a live loss plot, Cancel (stops before the next step and keeps the checkpoint).  The
model and its card are written to the user models folder under the chosen name, so the
"Segment vessels" widget lists it at once.  Training runs at the base model's working scale, as
segmentation resamples photographs (``training.finetune_config``), and the card keeps the base's
scale, fusion and threshold rule.  At the end (and after a cancel) a table compares Se, Sp, Acc,
AUC and F1 inside the FOV on the validation images before and after, each model at the threshold
it is used with.  *Resume…* trains on from a cancelled or finished run's checkpoint.  Closing the viewer or the dock
during a run cancels it the same way (see :mod:`._dock`): no model is saved after the window
is gone, and the checkpoint is the last good state.

Shape: one :class:`FinetuneState` (``_finetune_state``) and four panels that show and change it:
:class:`PairsPanel` (training and validation pairs), :class:`SettingsPanel`, :class:`RunPanel`
(buttons, progress, loss) and :class:`ResultsPanel` (the before/after table).  The widget wires
the buttons to the worker life cycle it inherits from :class:`DockWidget`.

Errors never raise into napari: they are shown with ``show_error`` and in the status line.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QApplication, QFileDialog, QFrame, QScrollArea, QVBoxLayout, QWidget

from napari_dpn.errors import DPNError
from napari_dpn.models import user_models_dir

from ._dock import DockWidget
from ._finetune_pairs import PairsPanel
from ._finetune_results import ResultsPanel
from ._finetune_run import RunPanel
from ._finetune_settings import SettingsPanel
from ._finetune_state import FinetuneState, Outcome, Run, train_job
from ._model_picker import announce_new_model


class FinetuneWidget(DockWidget):
    """Dock widget: pick pairs and settings, train in the background, compare, save.

    ``state`` holds what it knows; ``pairs``, ``settings``, ``run_panel`` and ``results`` show it.
    """

    LAYER_ATTR_EVENTS = ("name", "metadata")  # "corrected" lives in the vessels layer's metadata
    IGNORED_ROLES = ("probability", "errors")

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.state = FinetuneState()
        self._start_up()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.body = body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll)
        lay = QVBoxLayout(body)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.setSpacing(4)
        self.pairs = PairsPanel(self.state, self.viewer, ask_folder=lambda title: self._ask_folder(title))
        self.settings = SettingsPanel(self.state)
        self.run_panel = RunPanel(self.state, theme=getattr(self.viewer, "theme", None), alive=lambda: self.alive)
        self.results = ResultsPanel(self.state)
        for panel in (self.pairs, self.settings, self.run_panel, self.results):
            lay.addWidget(panel)
        lay.addStretch(1)
        # Never narrower than the body: a horizontal scroll bar (or clipped buttons) would hide
        # half of a row on a laptop screen.
        scroll.setMinimumWidth(body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        self.model_picker, self.device_combo = self.settings.model_picker, self.settings.device_combo  # DockWidget's
        self.pairs.error.connect(self._error)
        self.model_picker.error.connect(self._error)
        self.run_panel.run_button.clicked.connect(self.run)
        self.run_panel.cancel_button.clicked.connect(self.cancel)
        self.run_panel.resume_button.clicked.connect(self.resume)
        self.results.save_button.clicked.connect(self.save_checkpoint_as_model)
        self.state.events.outcome.connect(self._on_outcome)

    def refresh_layers(self) -> None:
        """Re-list the training and validation pairs and the validation combos."""
        self.pairs.refresh(self._gt_candidates())

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self.is_running:
            self.refresh_models_soon()

    def _error(self, message: str) -> None:
        self.state.last_error = message
        self.run_panel.status.setText(message)
        show_error(message)

    # ------------------------------------------------------------------ running

    def run(self, *_):
        """Start a fine-tuning run in a background worker; returns the worker or None."""
        if self._worker is not None:
            return None
        try:
            config = self.state.make_config()
            train, val, no_fov = self.pairs.collect_pairs()
        except DPNError as exc:
            self._error(str(exc))
            return None
        data = self.model_combo.currentData()
        if not isinstance(data, tuple):
            self._error("No base model chosen: pick one in the list or use Browse….")
            return None
        out_dir = user_models_dir()
        if (out_dir / f"{config.name}.safetensors").exists() and not self._confirm(
            "Replace model?",
            f"A model named '{config.name}' already exists in {out_dir}. Replace it when this run finishes?",
            ok="Replace",
        ):
            self.run_panel.status.setText("Not started: choose another name.")
            return None
        if no_fov:
            show_info(f"No FOV mask for {', '.join(no_fov)}: the field of view will be estimated from the image.")
        names = ", ".join(p.name for p in train[:5]) + ("…" if len(train) > 5 else "")
        self.state.run = Run(
            config=config,
            train_pairs=train,
            val_pairs=val,
            init=data[1],
            out_dir=out_dir,
            description=f"{len(train)} corrected image(s) ({names})",
        )
        self._start(config, resume=None)
        return self._worker

    def _start(self, config, resume) -> None:
        run = self.state.run
        self.state.last_error = None
        worker = self._start_worker(
            train_job,
            f"fine-tuning '{config.name}'",
            config,
            run.train_pairs,
            run.val_pairs,
            run.init,
            run.out_dir,
            resume,
            run.description,
            run.overwrite,
            self.run_panel.reporter(),
            returned=self._on_returned,
            finished=self._on_finished,
        )
        self.state.set_running(True)
        self.results.started(fresh=resume is None)
        self.run_panel.started(
            f"{self._verb(config, resume)} '{config.name}' from {Path(str(run.init)).stem} on "
            f"{len(run.train_pairs)} image(s)"
            + (f", validating on {len(run.val_pairs)}" if run.val_pairs else ", no validation images")
            + f" ({config.device})…",
            fresh=resume is None,
        )
        worker.start()

    def _verb(self, config, resume) -> str:
        if resume is None:
            return "Fine-tuning"
        done = self.state.run.result
        return "Saving" if done is not None and config.steps == done.steps else "Resuming"

    def cancel(self, *_) -> None:
        """Stop before the next step; the engine writes a checkpoint."""
        if self._worker is not None and self.alive:
            self._cancel.set()
            self.run_panel.cancelling()

    def _on_finished(self) -> None:
        if self.alive:
            self._worker = None
            self.state.set_running(False)

    def _on_returned(self, out: Outcome) -> None:
        if self.alive:
            self.state.returned(out)

    def _on_outcome(self, out: Outcome) -> None:
        """Notifications of a run's end (the panels show the rest)."""
        if out.error:
            self._error(out.error)
            return
        res = out.result
        QTimer.singleShot(0, lambda: self.alive and self.scroll.ensureWidgetVisible(self.results))
        if res.cancelled:
            show_info(f"Fine-tuning cancelled at step {res.steps}; checkpoint {res.checkpoint.name} kept.")
            return
        show_info(f"Fine-tuned model '{res.card.name}' saved (threshold {res.threshold:.3f}).")
        # The new model appears in every model list at once (ours and Segment vessels').
        self.settings.forget_name()
        announce_new_model()

    def save_checkpoint_as_model(self, *_):
        """After a cancel: finish the run at the checkpoint's step (save model, card, metrics)."""
        run = self.state.run
        if self._worker is not None or run is None or run.result is None or not run.result.cancelled:
            return None
        config = replace(run.config, steps=int(run.result.steps))
        run.overwrite = False
        self._start(config, resume=run.result.checkpoint)
        return self._worker

    def resume(self, *_, checkpoint=None):
        """Continue a run from its checkpoint up to the Steps set: the last cancelled (or finished)
        run of this widget, else a checkpoint file the user picks (``checkpoint`` in scripts),
        trained on the ticked pairs.  The new model never replaces an existing one."""
        if self._worker is not None:
            return None
        run = self.state.run
        if checkpoint is None and run is not None and run.result is not None:
            checkpoint = run.result.checkpoint
        elif checkpoint is None:
            checkpoint = self._ask_checkpoint()
            if checkpoint is None:
                return None
        try:
            config, checkpoint = self.state.resume_run(checkpoint, self.pairs.collect_pairs)
        except DPNError as exc:
            self._error(str(exc))
            return None
        self._start(config, resume=checkpoint)
        return self._worker

    def _ask_checkpoint(self):
        """Ask for a checkpoint file (``*.ckpt.pt``); tests replace this method."""
        path, _ = QFileDialog.getOpenFileName(
            self, "Resume from a checkpoint", str(user_models_dir()), "Checkpoints (*.ckpt.pt)"
        )
        return Path(path) if path else None


def wait(widget: FinetuneWidget, timeout: float = 600.0) -> None:  # pragma: no cover - helper
    """Block (processing Qt events) until the widget's worker finished; for scripts."""
    end = time.monotonic() + timeout
    while widget.is_running and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)

"""The Fine-tune widget's run panel: Fine-tune, Resume… and Cancel, the progress bar (step,
s/step, ETA), the status line, the live loss plot and a short log.

The buttons are wired by the widget (it owns the worker); the panel follows the run through
:class:`FinetuneState`'s ``running`` and ``outcome`` signals and the training events that reach it
through :meth:`RunPanel.reporter` (a queued signal: the worker thread emits, the GUI thread draws).
"""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QPlainTextEdit, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout

from napari_dpn.text import duration

from . import _finetune_tips as tips
from ._dock import Section, wrapped_label
from ._finetune_state import FinetuneState, Outcome
from ._loss_plot import LossPlot


class _Bridge(QObject):
    """Carries training events from the worker thread to the GUI thread (queued signal).  It has
    no Qt parent: closing the viewer deletes the panel, never the object the worker emits on."""

    event = Signal(object)


class RunPanel(Section):
    """Buttons, progress, status, loss and log of one :class:`FinetuneState`'s runs."""

    def __init__(self, state: FinetuneState, theme: str | None = None, alive=lambda: True, parent=None):
        super().__init__("Run", parent=parent)
        self.state, self._alive = state, alive
        v = QVBoxLayout(self.body)
        v.setContentsMargins(4, 0, 0, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton("Fine-tune")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip(tips.CANCEL)
        self.resume_button = QPushButton("Resume…")
        self.resume_button.setToolTip(tips.RESUME)
        row.addWidget(self.run_button, 1)
        row.addWidget(self.resume_button)
        row.addWidget(self.cancel_button)
        v.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        v.addWidget(self.progress)
        self.status = wrapped_label("Tick the training pairs and press 'Fine-tune'.")
        v.addWidget(self.status)
        self.loss_plot = LossPlot(theme=theme)
        self.loss_plot.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        v.addWidget(self.loss_plot)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(200)
        self.log.setMaximumHeight(56)
        self.log.setStyleSheet("font-size: small;")
        self.log.setVisible(False)  # shown once a run has something to say
        v.addWidget(self.log)
        self._bridge = _Bridge()
        self._bridge.event.connect(self.on_event)
        state.events.running.connect(self._set_running)
        state.events.outcome.connect(self._on_outcome)

    # ------------------------------------------------------------------ a run

    def reporter(self):
        """The training callback for the worker thread: it hands each event to the GUI thread."""
        return self._bridge.event.emit

    def started(self, text: str, fresh: bool) -> None:
        """A run starts (``fresh``: not resumed): busy bar, ``text`` in the status line."""
        if fresh:
            self.loss_plot.clear()
            self.log.clear()
        self.progress.setRange(0, 0)  # busy until the first step
        self.progress.setFormat("preparing…")
        self.status.setText(text)

    def cancelling(self) -> None:
        self.cancel_button.setEnabled(False)
        self.status.setText("Cancelling: stopping after the current step…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.resume_button.setEnabled(not running)
        if running:
            self.set_expanded(True)
            return
        self.loss_plot.redraw(force=True)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _log(self, text: str) -> None:
        self.log.setVisible(True)
        self.log.appendPlainText(text)

    # ------------------------------------------------------------------ events (GUI thread)

    def on_event(self, event) -> None:
        if not self._alive():
            return
        name = type(event).__name__  # training's events (importing training would load torch)
        if name == "StepEvent":
            if self.progress.maximum() != event.total:
                self.progress.setRange(0, event.total)
            self.progress.setValue(event.step)
            self.progress.setFormat(
                f"step {event.step}/{event.total} · "
                f"{event.seconds_per_step:.2f} s/step · ETA "
                f"{duration(event.eta_seconds)}"
            )
            self.loss_plot.add(event.step, event.loss, event.head_losses)
        elif name == "ValidationEvent":
            m = event.metrics
            self._log(f"step {event.step}: AUC {m['auc']:.4f}, F1 {m['f1']:.4f}")
        elif name == "MessageEvent":
            self._log(event.text)
        elif name == "CheckpointEvent":
            self._log(f"checkpoint at step {event.step}: {event.path.name}")
        elif name == "CancelledEvent":
            self._log(f"stopped at step {event.step}")
            self.progress.setFormat(f"stopped at step {event.step} · evaluating…")
        elif name == "DoneEvent":
            self._log(f"saved {event.model_path.name}")

    def _on_outcome(self, out: Outcome) -> None:
        self.loss_plot.redraw(force=True)
        if out.error:
            self.progress.setFormat("stopped")
            self.status.setText(out.error)
            return
        res = out.result
        if res.cancelled:
            self.progress.setFormat(f"cancelled at step {res.steps}/{self.state.run.config.steps}")
            self.status.setText(
                f"Cancelled at step {res.steps}. 'Resume' trains on to the Steps set; "
                "'Save model from checkpoint' keeps these weights as a model."
            )
            return
        self.progress.setRange(0, max(1, res.steps))
        self.progress.setValue(res.steps)
        self.progress.setFormat(f"done · {res.steps} steps")
        self.status.setText(f"Done: '{res.card.name}' saved after {res.steps} steps.")

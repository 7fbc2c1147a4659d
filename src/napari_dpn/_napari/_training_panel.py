"""A fine-tuning run's panel: a progress bar (step/steps, s/step, ETA), Cancel, and the live
loss plot, as the *Fine-tune DPN* widget shows them; used by *Correct a folder*.

The training runs in a worker thread and reports through ``callback(event)``; the panel's
:attr:`TrainingPanel.reported` signal carries each event to the GUI thread (a queued connection:
the worker never touches a widget).  Cancel only sets a flag the engine polls before every
step, so the click returns at once and the run stops at its last good state.
"""

from __future__ import annotations

import threading

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout

from napari_dpn.text import duration

from ._dock import Section
from ._loss_plot import LossPlot

PLOT_HEIGHT = 110  # a 768 px high screen still holds the folder widget with the plot


class TrainingPanel(Section):
    """Progress, Cancel and loss of one run at a time; folds to its progress line."""

    reported = Signal(object)  # a training event, emitted from any thread

    def __init__(self, title: str = "Fine-tuning", theme: str | None = None, parent=None):
        super().__init__(title, expanded=True, parent=parent)
        lay = QVBoxLayout(self.body)
        lay.setContentsMargins(4, 0, 0, 0)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop before the next step: no model is saved, the session keeps its model.")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.loss_plot = LossPlot(theme=theme)
        self.loss_plot.canvas.setMinimumHeight(PLOT_HEIGHT)
        self.loss_plot.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        lay.addWidget(self.loss_plot)
        self.stop = threading.Event()
        self.running = False
        self.reported.connect(self.on_event)

    # ------------------------------------------------------------------ a run

    def start(self, steps: int) -> threading.Event:
        """A new run of ``steps`` steps; returns its cancel flag (set by Cancel)."""
        self.stop = threading.Event()
        self.running = True
        self.set_expanded(True)
        self.setVisible(True)
        self.loss_plot.clear()
        self.progress.setRange(0, 0)  # busy until the first step
        self._say(f"preparing {steps} steps…")
        self.cancel_button.setEnabled(True)
        return self.stop

    def cancel(self, *_) -> None:
        """Ask the run to stop before its next step (returns at once)."""
        if not self.running or self.stop.is_set():
            return
        self.stop.set()
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._say(f"stopping after step {self.progress.value()}…")

    def finish(self, text: str, steps: int | None = None) -> None:
        """The run is over (done, cancelled or failed): ``text`` on the bar."""
        self.running = False
        self.cancel_button.setEnabled(False)
        self.loss_plot.redraw(force=True)
        if steps is not None and steps > 0:
            if self.progress.maximum() < steps:
                self.progress.setRange(0, steps)
            self.progress.setValue(min(steps, self.progress.maximum()))
        elif self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        self._say(text)

    def _say(self, text: str) -> None:
        self.progress.setFormat(text)
        self.progress.setToolTip(text)
        self.set_summary(text)

    # ------------------------------------------------------------------ events (GUI thread)

    def on_event(self, event) -> None:
        from napari_dpn import training as t

        if not self.running:
            return
        if isinstance(event, t.StepEvent):
            if self.progress.maximum() != event.total:
                self.progress.setRange(0, event.total)
            self.progress.setValue(event.step)
            self.loss_plot.add(event.step, event.loss, event.head_losses)
            if self.stop.is_set():
                return  # "stopping…" stays until the run returns
            if event.step >= event.total:
                self.cancel_button.setEnabled(False)  # past the last step: only saving is left
                self._say(f"step {event.step}/{event.total} · choosing the threshold, saving the model…")
            else:
                self._say(
                    f"step {event.step}/{event.total} · {event.seconds_per_step:.2f} s/step · "
                    f"ETA {duration(event.eta_seconds)}"
                )
        elif isinstance(event, t.CancelledEvent):
            self._say(f"stopped at step {event.step}…")

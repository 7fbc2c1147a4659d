"""A fine-tuning run's panel: a progress bar (step/steps, s/step, ETA), Cancel, and the live
loss plot, as the *Fine-tune DPN* widget shows them; used by *Correct a folder*.

The training runs in a worker thread and reports through the callable :meth:`TrainingPanel.reporter`
returns.  That callable runs in the worker: it also draws the loss plot there (matplotlib's Agg
canvas, the lines and colours of :mod:`._loss_plot`), so the GUI thread only shows a finished
picture.  Drawing on the GUI thread cost 50-230 ms a redraw on a loaded 2-core machine (the first
one, with the font look-ups, and the matplotlib import before it: ~1 s): over the viewer's 200 ms
budget.  The panel's :attr:`TrainingPanel.reported` signal carries the events and pictures to the
GUI thread (a queued connection: the worker never touches a widget).  Cancel only sets a flag
the engine polls before every step, so the click returns at once and the run stops at its last
good state.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout

from napari_dpn.text import duration

from ._dock import Section

PLOT_HEIGHT = 90  # a 768 px high screen still holds the folder widget with the plot
PLOT_TIP = (
    "Training loss (vertical) against the step (horizontal): white, the total (faint: each step; "
    "bold: running mean); blue to cyan, the running mean of the heads aux1, aux2, aux3 and main."
)


@dataclass
class PlotImage:
    """A drawn loss plot (RGBA bytes), made in the worker for the GUI thread."""

    rgba: bytes
    width: int
    height: int
    steps: int  # steps drawn


class _Renderer:
    """The loss plot drawn off the GUI thread: one figure, redrawn at most every ``interval``
    seconds (and never more than ~10 % of the time the training gets)."""

    def __init__(self, theme: str | None, size: list, interval: float = 1.0, window: int = 20):
        self.theme, self.size, self.interval, self.window = theme, size, interval, window
        self.steps: list[int] = []
        self.total: list[float] = []
        self.heads: dict[str, list[float]] = {}
        self.last, self.cost, self.drawn = 0.0, 0.0, 0
        self.fig = None

    def add(self, event) -> None:
        from ._loss_plot import HEADS

        self.steps.append(int(event.step))
        self.total.append(float(event.loss))
        for h in HEADS:
            self.heads.setdefault(h, []).append(float((event.head_losses or {}).get(h, float("nan"))))

    def due(self) -> bool:
        wait = max(self.interval, 10 * self.cost)
        return len(self.steps) > self.drawn and (self.drawn == 0 or time.monotonic() - self.last >= wait)

    def _build(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ._loss_plot import HEAD_COLOURS, HEADS, TOTAL_COLOUR, theme_colours

        bg, text, grid = theme_colours(self.theme)
        fig = Figure(dpi=100, facecolor=bg)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_facecolor(bg)
        for side in ax.spines.values():
            side.set_color(grid)
        ax.tick_params(colors=text, labelsize=7)
        ax.grid(True, color=grid, linewidth=0.5)
        ax.set_ylabel("loss", color=text, fontsize=8)
        self.raw = ax.plot([], [], color=TOTAL_COLOUR, alpha=0.25, linewidth=0.8)[0]
        self.mean = ax.plot([], [], color=TOTAL_COLOUR, linewidth=1.6)[0]
        self.lines = {h: ax.plot([], [], color=HEAD_COLOURS[h], linewidth=1.0)[0] for h in HEADS}
        self.fig, self.ax = fig, ax

    def render(self) -> PlotImage:
        """Draw every step so far at the plot's current size (pixels, set by the GUI)."""
        import numpy as np

        from ._loss_plot import running_mean

        t0 = time.perf_counter()
        if self.fig is None:
            self._build()
        w, h = (max(int(v), 40) for v in self.size)
        fig, ax = self.fig, self.ax
        fig.set_size_inches(w / fig.dpi, h / fig.dpi)
        left, bottom, right, top = 40.0, 22.0, 8.0, 6.0  # pixels: tick labels and the axis title
        ax.set_position([left / w, bottom / h, max(0.1, 1 - (left + right) / w), max(0.1, 1 - (bottom + top) / h)])
        x = np.asarray(self.steps)
        self.raw.set_data(x, self.total)
        self.mean.set_data(x, running_mean(self.total, self.window))
        for name, line in self.lines.items():
            line.set_data(x, running_mean(self.heads[name], self.window))
        ys = np.asarray(self.total, np.float64)
        ys = ys[np.isfinite(ys)]
        ax.set_xlim(0, max(10, int(x[-1])) * 1.02)
        ax.set_ylim(0, max(float(np.percentile(ys, 99)) * 1.1 if ys.size else 1.0, 1e-3))
        fig.canvas.draw()
        rgba = bytes(fig.canvas.buffer_rgba())
        self.drawn, self.last = len(self.steps), time.monotonic()
        self.cost = time.perf_counter() - t0
        return PlotImage(rgba, w, h, self.drawn)


class _PlotLabel(QLabel):
    """The picture of the loss; keeps ``size_px`` (device pixels, read by the worker) current."""

    def __init__(self, text: str):
        super().__init__(text)
        self.size_px = [400, PLOT_HEIGHT]

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        ratio = max(1.0, float(self.devicePixelRatioF()))
        self.size_px[:] = [max(self.width(), 200) * ratio, max(self.height(), PLOT_HEIGHT) * ratio]


class TrainingPanel(Section):
    """Progress, Cancel and loss of one run at a time; folds to its progress line."""

    reported = Signal(object)  # a training event or a PlotImage, emitted from any thread

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
        self.plot = _PlotLabel("The loss appears here during training.")
        self.plot.setAlignment(Qt.AlignCenter)
        self.plot.setMinimumHeight(PLOT_HEIGHT)
        self.plot.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.plot.setScaledContents(True)  # a resize stretches the last picture until the next one
        self.plot.setToolTip(PLOT_TIP)
        self.plot.setStyleSheet("color: gray; font-size: small;")
        lay.addWidget(self.plot)
        self._theme = theme
        self.n_steps = 0  # loss values received in the current run
        self.plotted_steps = 0  # of which the picture shows
        self.stop = threading.Event()
        self.running = False
        self.reported.connect(self.on_event)

    # ------------------------------------------------------------------ a run

    def start(self, steps: int) -> threading.Event:
        """A new run of ``steps`` steps; returns its cancel flag (set by Cancel)."""
        self.stop = threading.Event()
        self.running = True
        self.n_steps = self.plotted_steps = 0
        self.set_expanded(True)
        self.setVisible(True)
        self.plot.clear()
        self.plot.setText("Preparing the training data…")
        self.progress.setRange(0, 0)  # busy until the first step
        self._say(f"preparing {steps} steps…")
        self.cancel_button.setEnabled(True)
        return self.stop

    def reporter(self, alive=lambda: True):
        """The training callback for the worker: events (and pictures of the loss drawn there)
        go to the GUI thread; nothing is sent once ``alive()`` is false or the panel is gone."""
        from napari_dpn import training as t

        renderer = _Renderer(self._theme, self.plot.size_px)
        signal = self.reported

        def send(item) -> None:
            if alive():
                with contextlib.suppress(RuntimeError):  # the panel was deleted meanwhile
                    signal.emit(item)

        def report(event) -> None:
            send(event)
            if isinstance(event, t.StepEvent):
                renderer.add(event)
            last = isinstance(event, (t.DoneEvent, t.CancelledEvent))
            if alive() and renderer.steps and (renderer.due() or (last and renderer.drawn < len(renderer.steps))):
                send(renderer.render())

        return report

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
        if steps is not None and steps > 0:
            if self.progress.maximum() < steps:
                self.progress.setRange(0, steps)
            self.progress.setValue(min(steps, self.progress.maximum()))
        elif self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        if not self.plotted_steps:
            self.plot.setText("No step was trained.")
        self._say(text)

    def _say(self, text: str) -> None:
        self.progress.setFormat(text)
        self.progress.setToolTip(text)
        self.set_summary(text)

    # ------------------------------------------------------------------ events (GUI thread)

    def on_event(self, event) -> None:
        from napari_dpn import training as t

        if isinstance(event, PlotImage):
            image = QImage(event.rgba, event.width, event.height, 4 * event.width, QImage.Format_RGBA8888)
            pixmap = QPixmap.fromImage(image)
            pixmap.setDevicePixelRatio(max(1.0, float(self.devicePixelRatioF())))
            self.plot.setPixmap(pixmap)
            self.plotted_steps = event.steps
            return
        if not self.running:
            return
        if isinstance(event, t.StepEvent):
            self.n_steps += 1
            if self.progress.maximum() != event.total:
                self.progress.setRange(0, event.total)
            self.progress.setValue(event.step)
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

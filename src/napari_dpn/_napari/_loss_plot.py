"""A small live loss plot for the "Fine-tune DPN" dock (matplotlib's Qt canvas, no pyplot).

The training emits one loss per step; redrawing a matplotlib canvas costs tens of
milliseconds, so :meth:`LossPlot.add` only stores the values and redraws at most every
``every_steps`` steps *and* ``min_interval`` seconds.  :meth:`LossPlot.redraw` with
``force=True`` draws whatever is pending (the end of a run).

Lines: the total loss (sum of the four heads, raw values faint, running mean solid) and the
running mean of each head (aux1, aux2, aux3 and main).
"""

from __future__ import annotations

import time

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

HEADS = ("aux1", "aux2", "aux3", "main")
HEAD_COLOURS = {"aux1": "#7f7fff", "aux2": "#b07cff", "aux3": "#ff7cc8", "main": "#00e5ff"}
TOTAL_COLOUR = "#f0f1f2"


def running_mean(values, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at every position (shorter at the start)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def theme_colours(theme_name: str | None) -> tuple[str, str, str]:
    """(background, text, grid) of napari's theme, with the dark theme as fallback."""
    bg, text, grid = "#262930", "#f0f1f2", "#414851"
    try:
        from napari.utils.theme import get_theme

        t = get_theme(theme_name or "dark")
        bg, text, grid = t.background.as_hex(), t.text.as_hex(), t.primary.as_hex()
    except Exception:  # noqa: BLE001 - any theme problem: keep the fallback colours
        pass
    return bg, text, grid


class LossPlot(QWidget):
    """Total and per-head training loss against the step, redrawn with throttling."""

    def __init__(
        self, parent=None, theme: str | None = None, every_steps: int = 5, min_interval: float = 0.5, window: int = 20
    ):
        super().__init__(parent)
        self.every_steps = every_steps
        self.min_interval = min_interval
        self.window = window
        self.steps: list[int] = []
        self.total: list[float] = []
        self.heads: dict[str, list[float]] = {h: [] for h in HEADS}
        self.draw_count = 0
        self._drawn_steps = 0
        self._last_draw = 0.0

        bg, text, grid = theme_colours(theme)
        self._text = text
        self.figure = Figure(figsize=(4.0, 1.8), dpi=100, facecolor=bg, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.canvas.setMinimumHeight(150)  # a laptop screen holds the whole Run section
        self.ax = self.figure.add_subplot(1, 1, 1)
        ax = self.ax
        ax.set_facecolor(bg)
        for side in ax.spines.values():
            side.set_color(grid)
        ax.tick_params(colors=text, labelsize=7)
        ax.grid(True, color=grid, linewidth=0.5)
        ax.set_xlabel("step", color=text, fontsize=8)
        ax.set_ylabel("loss", color=text, fontsize=8)
        (self._raw_line,) = ax.plot([], [], color=TOTAL_COLOUR, alpha=0.25, linewidth=0.8)
        (self._total_line,) = ax.plot([], [], color=TOTAL_COLOUR, linewidth=1.6, label="total")
        self._head_lines = {h: ax.plot([], [], color=HEAD_COLOURS[h], linewidth=1.0, label=h)[0] for h in HEADS}
        legend = ax.legend(loc="upper right", fontsize=7, ncol=5, frameon=False, handlelength=1.2, columnspacing=0.8)
        for t in legend.get_texts():
            t.set_color(text)
        self._message = ax.text(
            0.5,
            0.5,
            "The loss appears here during training.",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color=grid if grid != bg else text,
            fontsize=8,
        )
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.redraw(force=True)

    # ------------------------------------------------------------------ data

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def clear(self, message: str = "Preparing the training data…") -> None:
        self.steps.clear()
        self.total.clear()
        for v in self.heads.values():
            v.clear()
        self._drawn_steps = 0
        self._message.set_text(message)
        self.redraw(force=True)

    def add(self, step: int, total: float, head_losses: dict | None = None) -> bool:
        """Store one step's losses; redraws when due.  Returns True if it redrew."""
        self.steps.append(int(step))
        self.total.append(float(total))
        head_losses = head_losses or {}
        for h in HEADS:
            self.heads[h].append(float(head_losses.get(h, np.nan)))
        return self.redraw()

    # ------------------------------------------------------------------ drawing

    def redraw(self, force: bool = False) -> bool:
        now = time.monotonic()
        pending = self.n_steps - self._drawn_steps
        if not force and (pending < self.every_steps or now - self._last_draw < self.min_interval):
            return False
        x = np.asarray(self.steps)
        self._raw_line.set_data(x, self.total)
        self._total_line.set_data(x, running_mean(self.total, self.window))
        for h, line in self._head_lines.items():
            line.set_data(x, running_mean(self.heads[h], self.window))
        if self.n_steps:
            self._message.set_text("")
            self.ax.set_xlim(0, max(10, x[-1]) * 1.02)
            ys = np.asarray(self.total, np.float64)
            ys = ys[np.isfinite(ys)]
            top = float(np.percentile(ys, 99)) if ys.size else 1.0
            self.ax.set_ylim(0, max(top * 1.1, 1e-3))
        else:
            self.ax.set_xlim(0, 10)
            self.ax.set_ylim(0, 1)
        self.canvas.draw_idle()
        self._drawn_steps = self.n_steps
        self._last_draw = now
        self.draw_count += 1
        return True

    def line_data(self, which: str = "total") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) currently set on a line: 'raw', 'total' or a head name (for tests)."""
        line = {"raw": self._raw_line, "total": self._total_line}.get(which) or self._head_lines[which]
        x, y = line.get_data()
        return np.asarray(x), np.asarray(y)

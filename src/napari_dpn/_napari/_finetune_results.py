"""The Fine-tune widget's results panel: the before/after table (Se, Sp, Acc, AUC, F1 and the
threshold on the validation images, for the base model and the fine-tuned weights), what the run
gave, and 'Save model from checkpoint' after a cancel.  It shows :class:`FinetuneState`'s outcome."""

from __future__ import annotations

import math

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from . import _finetune_tips as tips
from ._dock import Section, wrapped_label
from ._finetune_state import FinetuneState, Outcome

METRIC_ROWS = (("se", "Se"), ("sp", "Sp"), ("acc", "Acc"), ("auc", "AUC"), ("f1", "F1"), ("threshold", "Threshold"))
ROW_HEIGHT = 24


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4f}"


def _table() -> QTableWidget:
    table = QTableWidget(len(METRIC_ROWS), 3)
    table.setHorizontalHeaderLabels(["Before", "After", "Change"])
    table.setVerticalHeaderLabels([label for _, label in METRIC_ROWS])
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
    table.horizontalHeader().setFixedHeight(ROW_HEIGHT + 2)
    table.verticalHeader().setSectionResizeMode(QHeaderView.Fixed)
    table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    table.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
    table.setToolTip(tips.TABLE)
    table.setFixedHeight(ROW_HEIGHT + 2 + ROW_HEIGHT * len(METRIC_ROWS) + 2 * table.frameWidth() + 2)
    return table


class ResultsPanel(Section):
    """Before → after of one :class:`FinetuneState`'s last run; folded until a run has some."""

    def __init__(self, state: FinetuneState, parent=None):
        super().__init__("Validation: before → after", expanded=False, parent=parent)
        self.state = state
        v = QVBoxLayout(self.body)
        v.setContentsMargins(4, 0, 0, 0)
        self.table = _table()
        v.addWidget(self.table)
        self.result_label = wrapped_label("No run yet.", selectable=True)
        v.addWidget(self.result_label)
        self.save_button = QPushButton("Save model from checkpoint")
        self.save_button.setToolTip(tips.SAVE_CHECKPOINT)
        self.save_button.setVisible(False)
        v.addWidget(self.save_button)
        state.events.running.connect(lambda running: self.save_button.setEnabled(not running))
        state.events.outcome.connect(self._on_outcome)

    def started(self, fresh: bool) -> None:
        """A run starts; a fresh one (not resumed) clears the last one's results."""
        if fresh:
            self.clear()
            self.result_label.setText("Running…")
            self.save_button.setVisible(False)

    def clear(self) -> None:
        for r in range(self.table.rowCount()):
            for c in range(self.table.columnCount()):
                self.table.setItem(r, c, QTableWidgetItem(""))

    def fill(self, before: dict | None, after: dict | None) -> None:
        for r, (key, _) in enumerate(METRIC_ROWS):
            b = (before or {}).get(key)
            a = (after or {}).get(key)
            change = ""
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                change = f"{a - b:+.4f}"
            for c, text in enumerate((_fmt(b), _fmt(a), change)):
                item = QTableWidgetItem(text)
                item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self.table.setItem(r, c, item)
        if before is None and after is None:
            self.table.setToolTip(tips.TABLE_EMPTY)

    def table_values(self) -> dict[str, tuple]:
        """{metric: (before, after)} as shown (floats, or None for '–'), for tests and scripts."""
        out = {}
        for r, (key, _) in enumerate(METRIC_ROWS):
            vals = []
            for c in (0, 1):
                item = self.table.item(r, c)
                text = item.text() if item is not None else ""
                try:
                    vals.append(float(text))
                except ValueError:
                    vals.append(None)
            out[key] = tuple(vals)
        return out

    def _on_outcome(self, out: Outcome) -> None:
        if out.error:
            self.result_label.setText(out.error)
            return
        run, res = self.state.run, out.result
        self.fill(run.before, run.after)
        self.set_expanded(True)
        if res.cancelled:
            text = f"Cancelled at step {res.steps}; the checkpoint is kept: {res.checkpoint}. No model was saved."
            if run.after:
                text += (
                    f" Saved, these weights would get the threshold {run.after['threshold']:.3f} "
                    "(max accuracy on the validation images); the table uses it."
                )
            self.result_label.setText(text)
            self.save_button.setText(f"Save model from checkpoint (step {res.steps})")
            self.save_button.setVisible(True)
            return
        self.save_button.setVisible(False)
        rule = getattr(res.card, "threshold_rule", "") or "max accuracy"
        self.result_label.setText(
            f"Recommended threshold {res.threshold:.3f} ({rule}); stored in the model card.\n"
            f"Saved '{res.card.name}' to {res.model_path} — pick it in 'Segment vessels'."
        )

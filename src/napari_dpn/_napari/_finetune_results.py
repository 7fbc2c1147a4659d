"""The Fine-tune widget's before/after table: Se, Sp, Acc, AUC, F1 and the threshold on the
validation images, for the base model and the fine-tuned weights."""

from __future__ import annotations

import math

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QTableWidgetItem

METRIC_ROWS = (("se", "Se"), ("sp", "Sp"), ("acc", "Acc"), ("auc", "AUC"), ("f1", "F1"), ("threshold", "Threshold"))
ROW_HEIGHT = 24


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4f}"


class ResultsMixin:
    """Fills and reads ``self.table`` (built in ``_build_ui``; part of :class:`FinetuneWidget`)."""

    def _clear_table(self) -> None:
        for r in range(self.table.rowCount()):
            for c in range(self.table.columnCount()):
                self.table.setItem(r, c, QTableWidgetItem(""))

    def _fill_table(self, before: dict | None, after: dict | None) -> None:
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
            self.table.setToolTip(
                "No validation images: add an image with a ground-truth "
                "labels layer, or a folder, to compare before and after."
            )

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

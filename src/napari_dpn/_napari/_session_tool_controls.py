"""The controls of the *Tools* panel of *Correct a folder*, with their tooltips (built here so
the panel's own file holds what the tools do)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QPushButton, QSpinBox

from ._session_state import KEYS


def _spin(cls, low, high, value, step=None, tip: str = ""):
    spin = cls()
    spin.setRange(low, high)
    if step is not None:
        spin.setSingleStep(step)
    spin.setValue(value)
    if tip:
        spin.setToolTip(tip)
    return spin


def _button(text: str, tip: str, checkable: bool = False) -> QPushButton:
    button = QPushButton(text)
    button.setCheckable(checkable)
    button.setToolTip(tip)
    return button


def _row(form: QFormLayout, label: str | None, *widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    if label is None:
        form.addRow(row)
    else:
        form.addRow(label, row)
    return row


def build_controls(panel, form: QFormLayout) -> None:
    """Make the panel's buttons, spin boxes and the outline check box, laid out in ``form``."""
    panel.branch_button = _button(
        "Remove this branch",
        "Click a false branch: it is cut at the nearest junctions of the skeleton and removed "
        "(not the whole tree). Ctrl+Z undoes.",
        checkable=True,
    )
    panel.add_button = _button(
        "Add vessel here",
        "Click a missed vessel: the connected region of probability >= 'low' around the click is "
        "added; drag along it: the path along the ridge of the probability map is added. Ctrl+Z undoes.",
        checkable=True,
    )
    _row(form, None, panel.branch_button, panel.add_button)
    panel.low_spin = _spin(QDoubleSpinBox, 0.01, 0.99, 0.3, 0.05, "Hysteresis threshold of 'Add vessel here'.")
    form.addRow("Low threshold", panel.low_spin)
    panel.speck_spin = _spin(QSpinBox, 2, 100_000, 30)
    panel.speck_button = _button("Remove specks", "Erase vessel pieces smaller than this many pixels (one undo step).")
    panel.outline_check = QCheckBox("Outline")
    panel.outline_check.setToolTip(
        "Show the vessels as outlines (contours) instead of filled, to see the photograph under them."
    )
    _row(form, "Specks <", panel.speck_spin, panel.speck_button, panel.outline_check)
    panel.local_spin = _spin(
        QDoubleSpinBox, 0.01, 0.99, 0.5, 0.05, "A threshold for the region on screen only (a hazy area)."
    )
    panel.local_button = _button(
        "Threshold this region",
        "Inside the region shown by 'Next uncertain region' only: vessel = probability >= this "
        "threshold. Ctrl+Z undoes.",
    )
    _row(form, "Local", panel.local_spin, panel.local_button)
    panel.uncertain_button = _button(
        "Next uncertain region", f"Zoom onto the most uncertain 64x64 region not yet visited ({KEYS['uncertain']})."
    )
    panel.uncertain_row = _row(form, None, panel.uncertain_button)

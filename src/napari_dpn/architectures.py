"""The names of the networks and the input convention of a fresh one, without torch: model cards
are checked against this list when the widgets dock (``models.py``), and ``model.register_network``
appends to it, so ``model`` and ``models`` both import this module and not each other."""

from __future__ import annotations

ARCHITECTURES = ["dpn", "dpn-release"]

# Input convention of networks trained from scratch here: RGB scaled to 0..1, centred.
FRESH_INPUT = {"channel_order": "RGB", "scale": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "clahe": False}

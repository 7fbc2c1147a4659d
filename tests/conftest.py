"""Fixtures shared by the napari widget tests.

Nothing here imports Qt or napari at import time: the core tests run with ``-p no:xvfb`` and
without a display, and collect this file too.
"""

from __future__ import annotations

import os
import sys

import pytest

WIDGET_MODULES = (  # every module whose notifications the widgets show
    "napari_dpn._napari._segment_widget",
    "napari_dpn._napari._segment_running",
    "napari_dpn._napari._segment_threshold",
    "napari_dpn._napari._segment_saving",
    "napari_dpn._napari._segment_resume",
    "napari_dpn._napari._finetune_widget",
    "napari_dpn._napari._finetune_running",
    "napari_dpn._napari._session_widget",
    "napari_dpn._napari._session_loop",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_display: opens a napari viewer (Qt needs a display)")


def _no_display() -> bool:
    # Read when a test starts: pytest-xvfb sets DISPLAY only once pytest is configured.
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_display") and _no_display():
        pytest.skip("a napari viewer needs a display: run with pytest-xvfb (default) or xvfb-run")


@pytest.fixture
def notes(monkeypatch):
    """What the dock widgets show as napari notifications, recorded instead of shown:
    {"error": [...], "warning": [...], "info": [...]}."""
    got = {"error": [], "warning": [], "info": []}
    for module in WIDGET_MODULES:
        for kind, messages in got.items():
            monkeypatch.setattr(
                f"{module}.show_{kind}", messages.append, raising=False
            )  # not every widget uses every kind
    return got


@pytest.fixture
def dock_widget(make_napari_viewer):
    """``dock_widget(cls, name)``: a new viewer with ``cls(viewer)`` docked as ``name``."""

    def dock(cls, name: str):
        viewer = make_napari_viewer()
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=name)
        return widget

    return dock


@pytest.fixture
def stall_probe(qtbot):
    """A QTimer firing every 10 ms on the GUI thread that records the largest gap between two
    ticks: how long the event loop was blocked (a frozen viewer).  ``probe.reset()`` starts a
    new measurement, ``probe.max_gap`` is its largest gap in seconds (the gap that is still open
    counts too).  A latency budget of the GUI, not a speed benchmark."""
    import time

    from qtpy.QtCore import QTimer

    class Probe:
        def __init__(self):
            self.timer = QTimer()
            self.timer.setInterval(10)
            self.timer.timeout.connect(self._tick)
            self.reset()
            self.timer.start()

        def reset(self):
            self.last = time.perf_counter()
            self._max = 0.0

        def _tick(self):
            now = time.perf_counter()
            self._max = max(self._max, now - self.last)
            self.last = now

        @property
        def max_gap(self) -> float:
            return max(self._max, time.perf_counter() - self.last)

        def measure(self, action, until=lambda: True, timeout_ms: int = 120_000, settle_ms: int = 100) -> float:
            """Max gap while ``action()`` runs (synchronously, as a click handler does) and the
            event loop then works until ``until()`` and ``settle_ms`` more.

            A full garbage collection runs first: with napari and torch loaded the interpreter's
            own full collections pause every thread for 0.1-0.4 s whenever they fall due, which
            is not what a widget's latency budget measures."""
            import gc

            qtbot.wait(30)
            gc.collect()
            self.reset()
            action()
            qtbot.waitUntil(until, timeout=timeout_ms)
            qtbot.wait(settle_ms)
            self._tick()
            return self._max

    probe = Probe()
    yield probe
    probe.timer.stop()

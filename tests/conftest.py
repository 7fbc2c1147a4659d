"""Fixtures and markers shared by every test.

- ``user_models`` (autouse): a private, empty user-models folder for every test, so no test reads
  or writes the real one; ``models_dir``: the same with a small random-weights model, 'tiny-test'.
- ``photos``: a folder of synthetic fundus photographs (``@pytest.mark.photos(count=, size=)``).
- ``one_torch_thread``: bit-identical runs, and the shared machine stays usable.
- Markers: ``gui`` (every test under tests/napari/, set here) and ``slow`` (dataset evaluations,
  training runs, Dask clusters and subprocesses): ``pytest -m "not slow"`` is the quick loop.

Nothing here imports Qt, napari or torch at import time: the core tests run with ``-p no:xvfb`` and
without a display, and collect this file too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from synthetic_fundus import fundus
from widget_setup import save_random_model

WIDGET_MODULES = (  # every module whose notifications the widgets show
    "napari_dpn._napari._segment_widget",
    "napari_dpn._napari._segment_running",
    "napari_dpn._napari._segment_threshold",
    "napari_dpn._napari._segment_saving",
    "napari_dpn._napari._finetune_widget",
    "napari_dpn._napari._finetune_running",
    "napari_dpn._napari._session_widget",
    "napari_dpn._napari._session_loop",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_display: opens a napari viewer (Qt needs a display)")
    config.addinivalue_line("markers", "photos(count=3, size=96): what the ``photos`` fixture makes")


GUI_TESTS = Path(__file__).parent / "napari"


def pytest_collection_modifyitems(config, items):
    """Every napari test is ``gui`` (it needs Qt, and most a display)."""
    for item in items:
        if GUI_TESTS in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.gui)


def _no_display() -> bool:
    # Read when a test starts: pytest-xvfb sets DISPLAY only once pytest is configured.
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_display") and _no_display():
        pytest.skip("a napari viewer needs a display: run with pytest-xvfb (default) or xvfb-run")


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch) -> Path:
    """A private user-models folder (``NAPARI_DPN_MODELS``), empty and not yet created: no test
    sees the user's own models or saves among them."""
    folder = tmp_path / "user-models"
    monkeypatch.setenv("NAPARI_DPN_MODELS", str(folder))
    return folder


@pytest.fixture
def models_dir(user_models) -> Path:
    """The private user-models folder with a small random-weights 'dpn' model, 'tiny-test' (seed 0)."""
    save_random_model(user_models)
    return user_models


def save_photos(folder: Path, count: int = 3, size: int = 96) -> Path:
    """``folder/eye0.png`` ... ``eye{count-1}.png``: synthetic fundus photographs (seed i, size x size)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray((fundus(size, seed=i)[0] * 255).astype(np.uint8)).save(folder / f"eye{i}.png")
    return folder


@pytest.fixture
def photos(request, tmp_path) -> Path:
    """``tmp_path/photos`` with synthetic photographs eye0.png, eye1.png, ... (3 of 96 px unless a
    ``@pytest.mark.photos(count=..., size=...)`` on the test or its module says otherwise)."""
    marker = request.node.get_closest_marker("photos")
    return save_photos(tmp_path / "photos", **(marker.kwargs if marker else {}))


@pytest.fixture
def one_torch_thread():
    """One torch thread: the same thread count in every run (bit-identical losses), and the shared
    machine stays usable."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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

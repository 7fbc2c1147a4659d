"""Fixtures shared by the napari widget tests.

Nothing here imports Qt or napari at import time: the core tests run with ``-p no:xvfb`` and
without a display, and collect this file too.
"""
from __future__ import annotations

import os
import sys

import pytest

WIDGET_MODULES = ("napari_dpn._napari._segment_widget", "napari_dpn._napari._finetune_widget")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_display: opens a napari viewer (Qt needs a display)")


def _no_display() -> bool:
    # Read when a test starts: pytest-xvfb sets DISPLAY only once pytest is configured.
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                     or os.environ.get("WAYLAND_DISPLAY"))


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
            monkeypatch.setattr(f"{module}.show_{kind}", messages.append)
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

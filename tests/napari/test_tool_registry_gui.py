"""A newcomer's correction tool in *Correct a folder* (issue 19): registered in vessel_tools, it
runs through the Tools panel's ``apply_tool`` in a real viewer, as one undo step."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_dpn import vessel_tools as V
from napari_dpn._napari._session_widget import SessionWidget

pytestmark = pytest.mark.needs_display
TIMEOUT_MS = 120_000


def square(inputs: V.ToolInput) -> np.ndarray:
    """A toy tool: the 5x5 square centred on the click."""
    out = np.zeros(inputs.mask.shape, bool)
    r, c = (int(round(v)) for v in inputs.point)
    out[r - 2 : r + 3, c - 2 : c + 3] = True
    return out


@pytest.fixture
def square_tool():
    tool = V.register_tool(V.Tool("square", adds=True, status="Added a square", pixels=square))
    yield tool
    V.TOOLS.pop("square", None)


def test_a_registered_tool_runs_from_the_panel_as_one_undo_step(
    qtbot, make_napari_viewer, models_dir, notes, photos, square_tool
):
    viewer = make_napari_viewer()
    w = SessionWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correct a folder")
    w.refresh_models()
    w.select_model("tiny-test")
    w.device_combo.setCurrentText("cpu")
    try:
        assert w.open_folder(photos)
        qtbot.waitUntil(lambda: w.shown is not None, timeout=TIMEOUT_MS)
        vessels = w.layers["vessels"]
        vessels.data = np.zeros(vessels.data.shape, np.uint8)
        before = np.array(vessels.data)
        assert w.tools.apply_tool("square", (30, 40))
        qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
        after = np.asarray(vessels.data) > 0
        assert after[28:33, 38:43].all() and after.sum() == 25
        assert "Added a square (25 px)" in w.status.text()
        assert not w.tools.apply_tool("no such tool", (30, 40))
        vessels.undo()
        assert (np.asarray(vessels.data) == before).all()
    finally:
        w.cancel()

"""The correction-tool registry of napari_dpn.vessel_tools (issue 19): the four tools of *Correct a
folder* are entries, and a newcomer's tool is one ``register_tool`` call (Qt-free)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dpn import vessel_tools as V
from synthetic_fundus import y_tree


def square(inputs: V.ToolInput) -> np.ndarray:
    """A toy tool: the 5x5 square centred on the click, minus what is vessel already."""
    out = np.zeros(inputs.mask.shape, bool)
    r, c = (int(round(v)) for v in inputs.point)
    out[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3] = True
    return out & ~inputs.mask


@pytest.fixture
def square_tool():
    tool = V.register_tool(V.Tool("square", adds=True, status="Added a square", pixels=square))
    yield tool
    V.TOOLS.pop("square", None)


def test_the_four_tools_are_registered_with_todays_status_and_pixels():
    assert {"branch", "add", "trace", "specks"} <= set(V.TOOLS)
    m = np.zeros((96, 96), bool)
    m[:80, :80] = y_tree(80)
    m[90:92, 90:92] = True  # a 4 px speck
    prob = np.zeros(m.shape, np.float32)
    prob[85, 5:60] = 0.4
    inputs = V.ToolInput(mask=m, probability=prob, point=(15, 17), low=0.3, speck_size=10)
    branch, add, trace, specks = (V.TOOLS[k] for k in ("branch", "add", "trace", "specks"))
    assert (branch.adds, add.adds, trace.adds, specks.adds) == (False, True, True, False)
    assert branch.describe(inputs) == "Removed a branch"
    assert add.describe(inputs) == "Added a vessel"
    assert trace.describe(inputs) == "Traced a vessel"
    assert specks.describe(inputs) == "Removed specks < 10 px"
    assert (branch.pixels(inputs) == V.branch_pixels(m, (15, 17))).all()
    assert (specks.pixels(inputs) == V.speck_pixels(m, 10)).all()
    at = V.ToolInput(mask=m, probability=prob, point=(85, 20), low=0.3)
    assert (add.pixels(at) == V.vessel_region(prob, m, (85, 20), 0.3)).all() and add.pixels(at)[85, 20]
    drag = V.ToolInput(mask=m, probability=prob, point=((85, 10), (85, 50)))
    assert (trace.pixels(drag) == V.trace_pixels(prob, m, (85, 10), (85, 50), 2)).all()


def test_a_new_tool_is_one_register_call_and_a_taken_name_is_refused(square_tool):
    assert V.TOOLS["square"] is square_tool
    mask = np.zeros((20, 20), bool)
    out = square_tool.pixels(V.ToolInput(mask=mask, probability=None, point=(10, 10)))
    assert out.sum() == 25 and out[8:13, 8:13].all()
    with pytest.raises(ValueError, match="already registered"):
        V.register_tool(V.Tool("square", adds=False, status="", pixels=square))
    assert V.TOOLS["square"] is square_tool
    other = V.register_tool(V.Tool("square", adds=False, status="", pixels=square), replace=True)
    assert V.TOOLS["square"] is other

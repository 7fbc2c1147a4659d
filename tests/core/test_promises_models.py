"""The embedded card is the truth (promise 4), and its fields are checked (promise 8a).

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_dpn.errors import WeightsError
from napari_dpn.model import build_model
from napari_dpn.models import ModelCard, load_model, read_card
from promise_helpers import (
    SEGMENT,
    _saved,
    error_line,
    one_sentence,
    run,
    snapshot,
    unchanged,
)

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= 4. the embedded card is the truth


def _edit_json(path: Path, **changes) -> None:
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), **changes}))


def test_a_sidecar_that_disagrees_is_reported_and_ignored(tmp_path):
    path = _saved(tmp_path, threshold=0.3)
    _edit_json(path, threshold=0.9)
    before = snapshot(tmp_path)
    loaded = load_model(path)
    assert loaded.card.threshold == pytest.approx(0.3)
    assert len(loaded.warnings) == 1 and "threshold" in one_sentence_text(loaded.warnings[0])
    assert read_card(path).threshold == pytest.approx(0.3)  # list_models shows the truth too
    unchanged(before, tmp_path)


def one_sentence_text(text: str) -> str:
    assert "\n" not in text and 10 < len(text) < 400
    return text


def test_weights_copied_over_old_ones_use_their_own_card(tmp_path):
    """New weights over old ones (or a crash between the two writes): the old .json must not rule."""
    old = _saved(tmp_path / "a", name="m", threshold=0.3)
    new = _saved(
        tmp_path / "b",
        name="m",
        threshold=0.7,
        input={"channel_order": "BGR", "scale": 255.0, "mean": [0, 0, 0], "std": [1, 1, 1], "clahe": False},
    )
    old.write_bytes(new.read_bytes())
    loaded = load_model(old)
    assert loaded.card.threshold == pytest.approx(0.7) and loaded.card.input["channel_order"] == "BGR"
    assert any("sha256 differs" in one_sentence_text(w) for w in loaded.warnings)


def test_an_unreadable_sidecar_does_not_stop_the_model(tmp_path):
    path = _saved(tmp_path, threshold=0.4)
    path.with_suffix(".json").write_text("{ not json")
    loaded = load_model(path)
    assert loaded.card.threshold == pytest.approx(0.4)
    assert len(loaded.warnings) == 1 and "m.json" in one_sentence_text(loaded.warnings[0])


def test_an_old_weights_file_without_an_embedded_card_loads_with_a_note(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("dpn").state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(
        json.dumps(ModelCard(name="old", architecture="dpn", threshold=0.45).to_dict())
    )
    loaded = load_model(path)
    assert loaded.card.threshold == pytest.approx(0.45)
    assert len(loaded.warnings) == 1 and "no model card inside it" in one_sentence_text(loaded.warnings[0])


def test_segment_prints_a_card_mismatch_as_one_warning_line(photos, tmp_path, capsys):
    path = _saved(tmp_path / "models", threshold=0.3)
    _edit_json(path, threshold=0.9)
    before = snapshot(tmp_path / "models")
    rc, out, err = run(["segment", photos / "eye0.png", "--out", tmp_path / "out", "--model", path, *SEGMENT], capsys)
    assert rc == 0 and "threshold 0.300" in out
    warnings = [line for line in err.splitlines() if line.startswith("napari-dpn: warning: ")]
    assert len(warnings) == 1 and "threshold" in warnings[0]
    unchanged(before, tmp_path / "models")


# ============================================================================= 8a. card fields are checked


def _weights_with_card(path: Path, **changes) -> Path:
    from safetensors.torch import save_file

    card = ModelCard(name="bad", architecture="dpn").to_dict()
    for key, value in changes.items():
        if key.startswith("input_"):
            card["input"][key[6:]] = value
        else:
            card[key] = value
    state = {k: v.contiguous() for k, v in build_model("dpn").state_dict().items()}
    save_file(state, str(path), metadata={"napari_dpn_card": json.dumps(card)})
    return path


BAD_CARDS = [
    ({"threshold": "0.5"}, "'threshold'"),
    ({"threshold": 1.5}, "'threshold'"),
    ({"threshold": None}, "'threshold'"),
    ({"input_mean": [0.5, 0.5]}, "'input.mean'"),
    ({"input_std": [0.25, 0.0, 0.25]}, "'input.std'"),
    ({"input_std": "0.25"}, "'input.std'"),
    ({"input_scale": 0}, "'input.scale'"),
    ({"input_channel_order": "GBR"}, "'input.channel_order'"),
    ({"input_clahe": "yes"}, "'input.clahe'"),
    ({"input": "BGR"}, "'input'"),
    ({"name": 5}, "'name'"),
    ({"description": ["x"]}, "'description'"),
]


@pytest.mark.parametrize("changes, field", BAD_CARDS, ids=[m for _, m in BAD_CARDS])
def test_card_fields_of_the_wrong_type_are_named(tmp_path, changes, field):
    path = _weights_with_card(tmp_path / "bad.safetensors", **changes)
    before = snapshot(tmp_path)
    with pytest.raises(WeightsError) as info:
        load_model(path)
    assert field in one_sentence(info.value) and "bad.safetensors" in str(info.value)
    unchanged(before, tmp_path)


def test_a_bad_card_is_one_line_in_the_cli(photos, tmp_path, capsys):
    path = _weights_with_card(tmp_path / "bad.safetensors", input_std=[1, 0, 1])
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", "--model", path, *SEGMENT], capsys)
    assert rc == 2 and "'input.std' must be a list of 3 numbers above 0" in error_line(err)
    unchanged(before, tmp_path)

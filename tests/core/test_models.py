"""Model cards, the registry, and loading of shipped, user and broken weights files."""

import json

import numpy as np
import pytest
import torch

from napari_dpn.errors import WeightsError
from napari_dpn.model import build_model
from napari_dpn.models import (
    ModelCard,
    list_models,
    load_model,
    read_card,
    resolve_model_path,
    save_model,
    user_models_dir,
)
from napari_dpn.preprocess import normalise


def test_shipped_release_model_is_listed_and_loads():
    names = [c.name for c in list_models()]
    assert "dpn-release-drive" in names
    loaded = load_model("dpn-release-drive")
    assert loaded.card.architecture == "dpn-release"
    assert loaded.card.input["channel_order"] == "BGR"
    assert not loaded.model.training
    card = json.loads(loaded.path.with_suffix(".json").read_text())
    assert len(card["sha256"]) == 64 and card["licence"]


SHIPPED = sorted(p.stem for p in (resolve_model_path("dpn-release-drive").parent).glob("*.safetensors"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_is_complete_and_honest(name):
    """Each shipped card says what it was measured on and, for a run cut short, how far it got."""
    from napari_dpn.inference import predict

    loaded = load_model(name)
    card = loaded.card
    assert card.name == name and 0 < card.threshold < 1 and card.threshold_rule and card.licence
    assert 0.9 < card.metrics["auc"] < 1 and "test" in card.metrics["dataset"]
    assert card.scale["working_ppd"] > 0 and card.scale["vessel_calibre_px"] > 0  # scale-aware inference works
    training = card.training or {}
    if training.get("stopped_early"):
        assert training["steps"] < training["steps_planned"]
        assert f"{training['steps']:,}" in card.description and "stopped" in card.description
    rgb = np.random.default_rng(0).random((24, 20, 3), dtype=np.float32)
    prob = predict(loaded, rgb, device="cpu", precision="fp32").probability
    assert prob.shape == (24, 20) and np.isfinite(prob).all()


def test_save_then_load_by_name_from_user_folder(user_models):
    torch.manual_seed(0)
    model = build_model("dpn")
    card = ModelCard(name="my-camera", architecture="dpn", threshold=0.41, description="fine-tuned")
    path = save_model(model, card, user_models_dir() / "my-camera")
    assert path == user_models / "my-camera.safetensors"
    assert [c.name for c in list_models()][-1] == "my-camera"
    loaded = load_model("my-camera")
    assert loaded.card.threshold == pytest.approx(0.41)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])


def test_card_embedded_in_weights_travels_without_the_json(tmp_path):
    path = save_model(build_model("dpn"), ModelCard(name="solo", architecture="dpn", threshold=0.3), tmp_path / "solo")
    path.with_suffix(".json").unlink()
    assert read_card(path).threshold == pytest.approx(0.3)
    assert load_model(str(path)).card.name == "solo"


def test_unknown_name_lists_what_is_available():
    with pytest.raises(WeightsError, match="no model named 'nope'.*dpn-release-drive"):
        resolve_model_path("nope")


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(str(tmp_path / "missing.safetensors"))


def test_corrupt_weights_file(tmp_path):
    path = save_model(build_model("dpn"), ModelCard(name="c", architecture="dpn"), tmp_path / "c")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="corrupt|not a valid"):
        load_model(str(path))


def test_weights_of_the_other_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    card = ModelCard(name="x", architecture="dpn-release")  # the card says release, the weights are dpn
    state = {k: v.contiguous() for k, v in build_model("dpn").state_dict().items()}
    path = tmp_path / "x.safetensors"
    save_file(state, str(path), metadata={"napari_dpn_card": json.dumps(card.to_dict())})
    with pytest.raises(WeightsError, match="does not fit the 'dpn-release' network"):
        load_model(str(path))


def test_a_json_that_disagrees_with_the_weights_is_reported_not_used(tmp_path):
    path = save_model(build_model("dpn"), ModelCard(name="x", architecture="dpn"), tmp_path / "x")
    card = json.loads(path.with_suffix(".json").read_text())
    card["architecture"] = "dpn-release"
    path.with_suffix(".json").write_text(json.dumps(card))
    loaded = load_model(str(path))
    assert loaded.card.architecture == "dpn"
    assert len(loaded.warnings) == 1 and "architecture" in loaded.warnings[0]


def test_unreadable_card_is_skipped_in_listing(user_models):
    user_models.mkdir(parents=True)
    (user_models / "broken.safetensors").write_bytes(b"junk")
    assert "broken" not in [c.name for c in list_models()]


def test_release_input_convention_is_bgr_0_255():
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0] = 1.0  # pure red
    x = normalise(rgb, load_model("dpn-release-drive").card.input)
    assert x.shape == (3, 2, 2)
    assert x[2].max() == 255.0 and x[0].max() == 0.0  # red lands in the last (BGR) channel


def test_clahe_flag_replaces_colour_by_equalised_green():
    rng = np.random.default_rng(0)
    rgb = rng.random((40, 40, 3)).astype(np.float32) * 0.3
    x = normalise(rgb, {"channel_order": "RGB", "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1], "clahe": True})
    assert np.allclose(x[0], x[1]) and np.allclose(x[1], x[2])
    assert x.max() > rgb[..., 1].max()  # contrast was stretched

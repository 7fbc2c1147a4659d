"""A new network is one ``register_network`` call: the CLI offers it, training builds and trains it,
its card names it and ``load_model`` reads it back (docs/design.md, "Where to add a network")."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from napari_dpn import model as model_mod
from napari_dpn.architectures import ARCHITECTURES, FRESH_INPUT
from napari_dpn.cli import build_parser, main
from napari_dpn.errors import DPNError, InputError
from napari_dpn.messages import sentence
from napari_dpn.model import NETWORKS, build_model, register_network
from napari_dpn.models import load_model
from synthetic_fundus import fundus

TOY_INPUT = {**FRESH_INPUT, "mean": [0.4, 0.4, 0.4]}


class ToyNet(nn.Module):
    """The output contract (model.SegmentationNetwork) in a dozen lines: four logit heads while
    training, the main head's probability in evaluation mode, full resolution."""

    architecture = "toy-net"

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.heads = nn.ModuleList(nn.Conv2d(4, 1, 1) for _ in range(4))

    def forward(self, x):
        f = torch.relu(self.body(x))
        logits = [h(f) for h in self.heads]
        return logits if self.training else torch.sigmoid(logits[-1])


@pytest.fixture
def toy():
    register_network("toy-net", ToyNet, input=TOY_INPUT, summary="a test network")
    yield NETWORKS["toy-net"]
    del NETWORKS["toy-net"]
    ARCHITECTURES.remove("toy-net")


@pytest.fixture
def pairs(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    for s in range(2):
        rgb, label, fov = fundus(64, seed=s)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"eye{s}.png")
        Image.fromarray(label.astype(np.uint8) * 255).save(folder / f"eye{s}_vessels.png")
        Image.fromarray(fov.astype(np.uint8) * 255).save(folder / f"eye{s}_fov.png")
    return folder


def test_the_shipped_networks_are_registry_entries():
    assert list(NETWORKS)[:2] == ["dpn", "dpn-release"] and model_mod.ARCHITECTURES is ARCHITECTURES
    assert isinstance(build_model("dpn"), model_mod.DPN)
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        build_model("nope")


def test_a_registered_network_is_offered_built_and_trained_through_the_cli(toy, pairs, tmp_path, capsys):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    arch = next(a for a in train._actions if a.dest == "arch")
    assert "toy-net" in arch.choices  # the CLI's choices come from the registry
    out = tmp_path / "models"
    args = ["train", "--images", str(pairs), "--init", "none", "--arch", "toy-net", "--name", "toy", "--out", str(out)]
    rc = main([*args, "--steps", "1", "--crop", "32", "--device", "cpu", "--quiet", "--amp", "off", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    loaded = load_model(out / "toy.safetensors", device="cpu")
    assert isinstance(loaded.model, ToyNet) and loaded.card.architecture == "toy-net"
    assert loaded.card.input["mean"] == [0.4, 0.4, 0.4]  # the entry's input convention reached the card
    with torch.no_grad():
        prob = loaded.model(torch.rand(1, 3, 40, 48))
    assert prob.shape == (1, 1, 40, 48) and 0 <= float(prob.min()) <= float(prob.max()) <= 1


def test_one_sentence_per_exception():
    assert sentence(InputError("the image is empty")) == "the image is empty"
    assert sentence(MemoryError(), out_of_memory="out of memory; try --device cpu") == "out of memory; try --device cpu"
    assert sentence(RuntimeError("CUDA out of memory. Tried ...")) == "out of memory"
    assert sentence(FileNotFoundError(2, "No such file", "/x/y.png")).startswith("Cannot use /x/y.png")
    assert sentence(ValueError("bad\nvalue"), doing="Segmentation") == "Segmentation failed (ValueError: bad)"
    assert issubclass(InputError, DPNError)

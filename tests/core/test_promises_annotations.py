"""Implausible annotations are refused before training (promise 5).

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_dpn.errors import TrainingError
from promise_helpers import (
    error_line,
    one_sentence,
    run,
    save_mask,
    save_photo,
    snapshot,
    unchanged,
)
from synthetic_fundus import fundus

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= 5. implausible annotations


def _annotation(case: str):
    rgb, label, fov = fundus(64)
    if case == "all vessel":
        label = np.ones_like(label)
    elif case == "all vessel but five pixels":
        label = fov.copy()
        label[tuple(np.argwhere(fov)[:5].T)] = False
    elif case == "inverted":
        label = fov & ~label
    elif case == "tiny FOV":
        fov = np.zeros_like(fov)
        fov[30:34, 30:35] = True
        label = fov.copy()
        label[30, 30] = False
    elif case == "one vessel pixel":
        label = np.zeros_like(label)
        label[32, 32] = True
    elif case == "all vessel outside a small FOV":
        small = np.zeros_like(fov)
        small[20:44, 20:44] = True
        label = ~small | (label & small)
        fov = small
    return rgb, label, fov


ANNOTATION_CASES = [
    "all vessel",
    "all vessel but five pixels",
    "inverted",
    "tiny FOV",
    "one vessel pixel",
    "all vessel outside a small FOV",
]


@pytest.mark.parametrize("case", ANNOTATION_CASES)
def test_implausible_annotations_are_refused_before_training(case):
    from napari_dpn.training import prepare_pairs

    with pytest.raises(TrainingError) as info:
        prepare_pairs([_annotation(case)])
    text = one_sentence(info.value)
    assert ("FOV" in text) and ("%" in text)


def test_a_real_annotation_passes_the_checks():
    from napari_dpn.training import prepare_pairs

    assert len(prepare_pairs([fundus(64, seed=s) for s in range(3)])) == 3


def test_train_refuses_an_all_vessel_annotation_and_saves_nothing(tmp_path, capsys):
    folder = tmp_path / "train"
    rgb, label, fov = fundus(64)
    save_photo(folder / "eye.png")
    save_mask(folder / "eye_vessels.png", fov)  # every FOV pixel painted
    save_mask(folder / "eye_fov.png", fov)
    before = snapshot(tmp_path)
    rc, _, err = run(
        [
            "train",
            "--images",
            folder,
            "--out",
            tmp_path / "models",
            "--steps",
            "1",
            "--crop",
            "32",
            "--device",
            "cpu",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 2 and "eye: the annotation marks" in error_line(err)
    unchanged(before, tmp_path, new_allowed=set())
    assert not list((tmp_path / "models").glob("*.safetensors"))

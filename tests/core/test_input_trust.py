"""Trust, second pass (issue #20, h5): reading what users have (bit depth, CMYK, red-on-black
annotations, huge photographs), bounded memory, model-card validation, full disks by errno."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from paths import DATASETS as _STAGED
from synthetic_fundus import fundus

from napari_dpn.cli import main

DATASETS = _STAGED if _STAGED.is_dir() else Path("/work/shared/datasets")
DRIVE_IMAGE = DATASETS / "DRIVE" / "test" / "images" / "01_test.tif"


def _cli(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def _one_sentence(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("napari-dpn: error:")]
    assert lines, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------ model card validation
def _edited_weights(tmp_path: Path, **changes) -> Path:
    """A copy of a shipped model whose embedded card (and .json) has ``changes``, as a hand edit."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_dpn.models import resolve_model_path

    src = resolve_model_path("dpn-release-drive")
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    card = json.loads(meta["napari_dpn_card"])
    card.update(changes)
    meta["napari_dpn_card"] = json.dumps(card)
    dst = tmp_path / "edited.safetensors"
    save_file(load_file(str(src)), str(dst), metadata=meta)
    dst.with_suffix(".json").write_text(json.dumps(card))
    return dst


@pytest.mark.parametrize(
    ("scale", "field"),
    [("big", "'scale'"), ({"working_ppd": "12"}, "scale.working_ppd"), ({"fusion": 9}, "scale.fusion")],
)
def test_card_with_a_bad_scale_block_is_one_sentence(tmp_path, capsys, scale, field):
    photo = tmp_path / "photo.png"
    rgb, _, _ = fundus(96, seed=1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(photo)
    weights = _edited_weights(tmp_path, scale=scale)
    rc, err = _cli(["segment", photo, "--out", tmp_path / "out", "--model", weights], capsys)
    line = _one_sentence(err)
    assert rc == 2 and field in line and "must be" in line, err
    assert not list((tmp_path / "out").glob("photo_*"))


# ------------------------------------------------------------------- red-on-black annotations
@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255), (255, 255, 255)])
def test_vessels_drawn_in_colour_on_black_are_training_pairs(tmp_path, colour):
    """train --images/--labels pairs: an RGB PNG with vessels drawn in red on black is an annotation."""
    from napari_dpn.annotations import folder_pairs
    from napari_dpn.training.data import check_annotation

    rgb, label, fov = fundus(96, seed=2)
    (tmp_path / "photos").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp_path / "photos" / "eye.png")
    drawing = np.zeros((*label.shape, 3), np.uint8)
    drawing[label] = colour
    Image.fromarray(drawing).save(tmp_path / "labels" / "eye_vessels.png")
    (pair,) = folder_pairs(tmp_path / "photos", tmp_path / "labels")
    _, mask, _ = pair.load()
    np.testing.assert_array_equal(mask, label)
    check_annotation(pair.name, mask, fov)  # not "no vessel pixels ... empty"

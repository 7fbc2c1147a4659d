"""The folder session and the vessel tools of napari_dpn.session (Qt-free, issue 12)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_dpn import session as S
from napari_dpn import session_file, vessel_tools
from napari_dpn import uncertainty as U
from napari_dpn.image_writers import write_mask
from synthetic_fundus import fundus, y_tree


@pytest.mark.parametrize("width", [1, 3])
def test_remove_branch_removes_one_arm_only(width):
    m = y_tree(width=width)
    out = vessel_tools.remove_branch(m, (15, 17))  # on the up-left arm
    removed = m & ~out
    assert removed.any()
    assert not removed[:, 45:].any(), "the right arm is untouched"
    assert out[70, 40] and out[12, 66], "trunk and right arm stay"
    assert not out[12, 14], "the clicked arm is gone"
    assert removed.sum() < 0.5 * m.sum()


def test_remove_branch_clicked_beside_the_vessel_and_a_lone_segment():
    m = y_tree()
    out = vessel_tools.remove_branch(m, (70, 43))  # 3 px right of the trunk
    assert not out[70, 40] and out[12, 14] and out[12, 66]
    lone = np.zeros((30, 30), bool)
    lone[10, 3:25] = True
    assert not vessel_tools.remove_branch(lone, (10, 12)).any()
    assert not vessel_tools.remove_branch(np.zeros((5, 5), bool), (2, 2)).any()


def test_add_vessel_adds_the_connected_region_above_low():
    prob = np.zeros((40, 40), np.float32)
    prob[20, 5:35] = 0.35  # a faint vessel
    prob[5, 5:35] = 0.35  # another, not touching
    mask = np.zeros((40, 40), bool)
    out = vessel_tools.add_vessel(prob, mask, (21, 12), low=0.3)  # 1 px off the ridge
    assert out[20, 5:35].all() and not out[5].any()
    assert not vessel_tools.add_vessel(prob, mask, (30, 30), low=0.3).any()
    assert not vessel_tools.add_vessel(prob, mask, (20, 12), low=0.5).any()


def test_remove_specks_keeps_large_components():
    m = y_tree()
    m[2:4, 2:4] = True  # a 4 px speck
    out = vessel_tools.remove_specks(m, 10)
    assert not out[2:4, 2:4].any() and (out == y_tree()).all()
    assert vessel_tools.speck_pixels(m, 10).sum() == 4


def test_uncertainty_and_ranking_find_the_hazy_region():
    prob = np.zeros((256, 256), np.float32)
    prob[130:190, 70:120] = 0.5  # the model hesitates here
    prob[10:20, 10:200] = 1.0  # and is sure here
    u = U.uncertainty(prob, 0.5)
    assert u.max() <= 1 and u.min() >= 0
    fov = np.ones_like(prob, bool)
    regions = U.rank_regions(u, fov, size=64)
    assert len(regions) == 16
    y0, x0, y1, x1, score = regions[0]
    assert 128 <= y0 < 192 and 64 <= x0 < 128
    assert [r[4] for r in regions] == sorted((r[4] for r in regions), reverse=True)
    fov[:, 128:] = False
    assert all(r[1] < 128 for r in U.rank_regions(u, fov, 64))


def make_folder(folder, n=3, size=64):
    from PIL import Image

    for i in range(n):
        rgb, vessels, disc = fundus(size, seed=i)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"eye{i}.png")
        if i == 0:
            write_mask(folder / f"eye{i}_gt.png", vessels)
    return folder


def fake_seg(size=64, seed=0, model="tiny"):
    rgb, vessels, disc = fundus(size, seed=seed)
    prob = np.where(vessels, 0.8, 0.1).astype(np.float32)
    return S.Segmented(prob, disc, 0.5, model, 0.25)


def test_photographs_exclude_annotations(tmp_path):
    make_folder(tmp_path)
    write_mask(tmp_path / "eye1_vessels.png", np.ones((4, 4)))
    (tmp_path / "eye2_probability.png").write_bytes(b"")
    assert [p.name for p in S.list_photographs(tmp_path)] == ["eye0.png", "eye1.png", "eye2.png"]
    assert session_file.ground_truth_path(tmp_path / "eye0.png").name == "eye0_gt.png"
    assert session_file.ground_truth_path(tmp_path / "eye1.png") is None


def test_session_resumes_and_never_overwrites_a_foreign_file(tmp_path):
    make_folder(tmp_path)
    notes = tmp_path / "notes"
    s = S.Session.open(tmp_path, notes)
    assert [e.state for e in s.entries] == ["new"] * 3 and s.done == 0
    seg = fake_seg()
    s.record_segmentation(0, seg)
    assert s.entries[0].state == "segmented" and s.entries[0].model == "tiny"
    s.record_segmentation(0, fake_seg(model="other"))
    assert s.entries[0].model == "tiny", "the model of the first map is kept"
    s.mark_corrected(0)
    s.save(0, seg.mask(), seg.fov)
    assert s.entries[0].state == "saved" and s.done == 1
    s.save(0, seg.mask(), seg.fov)  # our own file: no question
    # Someone else's file for image 1
    write_mask(notes / "eye1_vessels.png", np.zeros((64, 64)))
    s.go(2)
    again = S.Session.open(tmp_path, notes)
    assert again.current == 2
    assert [e.state for e in again.entries] == ["saved", "saved", "new"]
    assert again.entries[0].model == "tiny"
    prob, fov, t = again.cached(0)
    assert prob.shape == (64, 64) and t == 0.5
    # A file changed behind the session's back is not ours any more.
    write_mask(notes / "eye0_vessels.png", np.ones((64, 64)))
    before = (notes / "eye0_vessels.png").read_bytes()
    with pytest.raises(S.SessionConflict):
        again.save(0, seg.mask(), seg.fov)
    assert (notes / "eye0_vessels.png").read_bytes() == before
    again.save(0, seg.mask(), seg.fov, overwrite=True)
    data = json.loads((notes / S.SESSION_FILE).read_text())
    assert data["current"] == "eye2.png" and len(data["images"]) == 3


def test_csv_export(tmp_path):
    make_folder(tmp_path)
    s = S.Session.open(tmp_path)
    for i in range(2):
        s.record_segmentation(i, fake_seg(seed=i))
    s.save(0, fake_seg().mask(), fake_seg().fov)
    path = s.export_csv(tmp_path / "out.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["image"] for r in rows] == ["eye0.png", "eye1.png", "eye2.png"]
    assert float(rows[0]["se"]) == pytest.approx(1.0) and float(rows[0]["auc"]) > 0.99
    assert rows[0]["ground_truth"] == "eye0_gt.png" and rows[0]["model"] == "tiny"
    assert rows[1]["se"] == "" and float(rows[1]["vessel_density"]) > 0
    assert float(rows[1]["fov_diameter_px"]) == pytest.approx(0.9 * 64, rel=0.05)
    assert rows[2]["state"] == "new" and rows[2]["model"] == ""


def test_damaged_session_file_is_one_sentence(tmp_path):
    make_folder(tmp_path)
    (tmp_path / S.SESSION_FILE).write_text("{not json")
    with pytest.raises(S.InputError, match="damaged"):
        S.Session.open(tmp_path)
    with pytest.raises(S.InputError, match="No photographs"):
        S.Session.open(tmp_path / "notes_missing_dir_is_not_a_folder") if False else S.Session.open(
            (tmp_path / "empty").mkdir() or tmp_path / "empty"
        )


def test_finetune_on_saved_and_reset_the_rest(tmp_path, monkeypatch):
    import torch

    from napari_dpn.model import build_model
    from napari_dpn.models import ModelCard, save_model

    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_DPN_MODELS", str(models))
    torch.manual_seed(0)
    save_model(
        build_model("dpn"), ModelCard(name="tiny", architecture="dpn", threshold=0.5), models / "tiny.safetensors"
    )
    make_folder(tmp_path)
    s = S.Session.open(tmp_path)
    with pytest.raises(S.InputError, match="No saved annotation"):
        s.finetune("tiny", steps=1)
    for i in range(3):
        s.record_segmentation(i, fake_seg(seed=i))
    s.save(0, fake_seg().mask(), fake_seg().fov)
    s.mark_corrected(1)
    result = s.finetune("tiny", steps=2, device="cpu", name="tiny-ft")
    assert result.model_path is not None and result.model_path.is_file()
    again = S.Session.open(tmp_path)
    assert again.models[0]["name"] == "tiny-ft" and again.models[0]["images"] == ["eye0.png"]
    assert again.reset_unsaved() == [2]
    assert again.entries[2].state == "new" and again.entries[2].model is None
    assert again.cached(2) is None and again.cached(1) is not None


def test_threshold_box_changes_only_the_box():
    prob = np.full((20, 20), 0.4, np.float32)
    mask = np.zeros((20, 20), bool)
    mask[0, 0] = True
    mask[5, 5] = True
    on, off = vessel_tools.threshold_box(prob, mask, None, (4, 4, 10, 10), 0.3)
    assert on[4:10, 4:10].sum() == 35 and not on[0, 0] and on.sum() == 35
    on, off = vessel_tools.threshold_box(prob, mask, None, (4, 4, 10, 10), 0.5)
    assert off[5, 5] and off.sum() == 1 and not on.any()


def test_trace_follows_the_ridge_between_two_points():
    prob = np.full((60, 60), 0.05, np.float32)
    prob[10, 10:50] = 0.6  # an L-shaped faint vessel
    prob[10:50, 49] = 0.6
    path = vessel_tools.trace_pixels(prob, np.zeros((60, 60), bool), (10, 12), (45, 49))
    assert path[10, 12:49].all() and path[11:45, 49].all()
    assert path.sum() < 90, "along the ridge, not a straight cut"

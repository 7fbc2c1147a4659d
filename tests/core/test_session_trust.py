"""The folder session's trust rules, Qt-free (issue 20): moving on is not approval, accepted and
skipped images, version-1 session files, malformed session files, the CSV's model/metrics pairing
and DRIVE ground truths, the folder's field of view, and a real full disk (a small tmpfs)."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import shutil
import subprocess

import numpy as np
import pytest

from napari_dpn import session as S
from napari_dpn import session_file, session_maps
from napari_dpn.errors import OutputError
from napari_dpn.image_writers import write_mask
from synthetic_fundus import fundus


def make_folder(folder, n=3, size=64):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for i in range(n):
        rgb, _, _ = fundus(size, seed=i)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"eye{i}.png")
    return folder


def fake_seg(size=64, seed=0, model="tiny", scale=1.0):
    _, vessels, disc = fundus(size, seed=seed)
    prob = np.where(vessels, 0.8, 0.1).astype(np.float32)
    return S.Segmented(prob, disc, 0.5, model, 0.25, scale)


@contextlib.contextmanager
def small_tmpfs(path, size="200k"):
    """A real small file system at ``path`` (root only): a full disk that gives ENOSPC."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder):
    """Fill the file system of ``folder`` until it says ENOSPC; returns the filler file."""
    import os

    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


# ----------------------------------------------------------------------------- item 1


def test_moving_on_is_not_approval(tmp_path):
    make_folder(tmp_path)
    s = S.Session.open(tmp_path)
    for i in range(3):
        s.record_segmentation(i, fake_seg(seed=i))
    s.go(1)
    s.go(2)  # moved on twice, no edit
    assert [e.state for e in s.entries] == ["segmented"] * 3
    assert s.done == 0 and s.corrected_indices == [] and s.training_pairs() == []
    assert all(s.needs_segmentation(i) for i in range(3))

    s.accept(0, fake_seg().mask(), fake_seg().fov)  # "Accept as is"
    s.skip(1)
    s.mark_corrected(2)
    assert s.entries[2].state == "corrected" and not s.is_correction(2)
    s.save(2, fake_seg(seed=2).mask(), fake_seg(seed=2).fov)
    assert [e.state for e in s.entries] == ["accepted", "skipped", "saved"]
    assert s.corrected_indices == [0, 2] and len(s.training_pairs()) == 2
    assert s.done == 3 and s.counts()["skipped"] == 1
    assert not s.needs_segmentation(1), "a skipped image is not segmented again"
    assert s.reset_unsaved() == []
    assert s.label(0) == "accepted as is" and s.label(2) == "corrected and saved"
    again = S.Session.open(tmp_path)
    assert [e.state for e in again.entries] == ["accepted", "skipped", "saved"]


def test_an_edit_undone_goes_back_to_its_state(tmp_path):
    make_folder(tmp_path)
    s = S.Session.open(tmp_path)
    s.record_segmentation(0, fake_seg())
    s.mark_corrected(0)
    s.unmark_corrected(0)
    assert s.entries[0].state == "segmented" and s.corrected_indices == []


def test_version_1_saved_entries_are_corrections_only_when_edited(tmp_path):
    """Version 1 wrote the untouched map as "saved" on Next: such an entry is "segmented" again;
    an edited one, one changed on disk since, and one that cannot be compared stay corrections."""
    make_folder(tmp_path, n=4)
    s = S.Session.open(tmp_path)
    for i in range(4):
        s.record_segmentation(i, fake_seg(seed=i))
    untouched = fake_seg(seed=0).mask()
    edited = fake_seg(seed=1).mask().copy()
    edited[5:9, 5:9] = True
    s.save(0, untouched, fake_seg(seed=0).fov)
    s.save(1, edited, fake_seg(seed=1).fov)
    s.save(2, fake_seg(seed=2).mask(), fake_seg(seed=2).fov)
    s.cache_path(2).unlink()  # nothing to compare with: kept as a correction
    s.save(3, fake_seg(seed=3).mask(), fake_seg(seed=3).fov)
    (tmp_path / "eye3_vessels.png").unlink()  # the file is gone: not a correction
    data = json.loads(s.path.read_text())
    data["version"] = 1
    for item in data["images"]:
        for key in ("field_angle", "scale_note", "before"):
            item.pop(key)
    data.pop("field_angle")
    s.path.write_text(json.dumps(data))

    again = S.Session.open(tmp_path)
    assert [e.state for e in again.entries] == ["segmented", "saved", "saved", "segmented"]
    assert again.corrected_indices == [1, 2]
    assert json.loads(again.path.read_text())["version"] == 2
    # The untouched file stays on disk, known as the session's own: a correction replaces it.
    assert again.conflict(0) is None and (tmp_path / "eye0_vessels.png").is_file()
    # Re-segmenting forgets its map; the session's own file does not make it a correction again.
    assert 0 in again.reset_unsaved()
    assert S.Session.open(tmp_path).entries[0].state == "new"


# ----------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("null", "it holds null, not a session"),
        ("[]", "it holds a list, not a session"),
        ('"x"', "it holds a text"),
        ('{"images": null}', '"images" is null'),
        ('{"images": {"a": 1}}', '"images" is an object'),
        ('{"images": [1]}', "image 1 is a number"),
        ('{"images": [{"name": 3}]}', 'image 1 has "name" a number'),
        ('{"images": [{"state": "saved"}]}', 'image 1 has no "name"'),
        ('{"images": [{"name": "eye0.png", "state": "done"}]}', 'unknown state "done"'),
        ('{"images": [{"name": "eye0.png", "visited": [5]}]}', '"visited" regions'),
        ('{"images": [], "models": 3}', '"models"'),
        ('{"images": [], "field_angle": "wide"}', '"field_angle"'),
        ('{"images": [], "version": 99}', "newer napari-dpn"),
        ("{not json", "it is not JSON"),
    ],
)
def test_a_malformed_session_file_is_one_sentence_and_kept(tmp_path, text, says):
    make_folder(tmp_path)
    path = tmp_path / S.SESSION_FILE
    path.write_text(text)
    with pytest.raises(S.SessionDamaged) as info:
        S.Session.open(tmp_path)
    message = str(info.value)
    assert says in message and message.count("\n") == 0 and str(path) in message
    assert path.read_text() == text, "never overwritten without asking"
    # Asked to start afresh: the damaged file is kept aside, byte for byte.
    s = S.Session.open(tmp_path, start_afresh=True)
    assert s.backup is not None and s.backup.read_text() == text
    assert s.backup.name.startswith(S.SESSION_FILE + ".damaged-") and s.backup.suffix == ".json"
    assert [e.state for e in s.entries] == ["new"] * 3
    assert json.loads(path.read_text())["version"] == 2


# ----------------------------------------------------------------------------- the CSV


def test_csv_never_has_metrics_without_their_model(tmp_path):
    """A map kept in the cache whose arrival was never recorded (napari closed during a
    prefetch): the row is "new" without a model, so it has no metrics either."""
    make_folder(tmp_path)
    write_mask(tmp_path / "eye1_gt.png", fundus(64, seed=1)[1])
    s = S.Session.open(tmp_path)
    s.store_probability(1, fake_seg(seed=1))  # the worker's half; note_segmentation never ran
    rows = {r["image"]: r for r in s.rows()}
    row = rows["eye1.png"]
    assert row["state"] == "new" and row["model"] == ""
    assert all(row[k] == "" for k in ("se", "sp", "acc", "auc", "f1", "measured"))
    # Once recorded, the metrics come with the model that made the map.
    s.note_segmentation(1, s.cached_segmentation(1))
    row = {r["image"]: r for r in s.rows()}["eye1.png"]
    assert row["model"] == "tiny" and row["measured"] == "network map" and float(row["f1"]) == pytest.approx(1.0)


def test_csv_scale_is_the_resampling_factor_and_corrections_are_measured(tmp_path):
    make_folder(tmp_path)
    write_mask(tmp_path / "eye0_gt.png", fundus(64, seed=0)[1])
    s = S.Session.open(tmp_path)
    s.field_angle = 30.0
    seg = fake_seg(scale=0.586)
    seg.field_angle = 30.0
    s.record_segmentation(0, seg)
    s.save(0, seg.mask(), seg.fov)
    row = s.rows()[0]
    assert row["scale"] == "0.586" and row["field_angle"] == "30"
    assert row["measured"] == "annotation" and row["model"] == "tiny"
    out = s.export_csv(tmp_path / "out.csv")
    assert list(csv.DictReader(out.open()))[0]["scale"] == "0.586"


def test_drive_ground_truth_beside_the_photograph(tmp_path):
    from PIL import Image

    rgb, vessels, _ = fundus(64, seed=0)
    for folder in (tmp_path / "flat", tmp_path / "DRIVE" / "training" / "images"):
        folder.mkdir(parents=True)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "21_training.tif")
    Image.fromarray(vessels.astype(np.uint8) * 255).save(tmp_path / "flat" / "21_manual1.gif")
    manual = tmp_path / "DRIVE" / "training" / "1st_manual"
    manual.mkdir()
    Image.fromarray(vessels.astype(np.uint8) * 255).save(manual / "21_manual1.gif")
    assert session_file.ground_truth_path(tmp_path / "flat" / "21_training.tif").name == "21_manual1.gif"
    assert (
        session_file.ground_truth_path(tmp_path / "DRIVE/training/images/21_training.tif") == manual / "21_manual1.gif"
    )
    s = S.Session.open(tmp_path / "flat")
    assert [e.name for e in s.entries] == ["21_training.tif"], "the manual is not a photograph"
    s.record_segmentation(0, fake_seg())
    row = s.rows()[0]
    assert row["ground_truth"] == "21_manual1.gif" and float(row["se"]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- field of view


def test_the_field_of_view_is_remembered_per_folder(tmp_path):
    make_folder(tmp_path)
    s = S.Session.open(tmp_path)
    assert s.field_angle is None
    s.field_angle = 30.0
    s.persist()
    assert S.Session.open(tmp_path).field_angle == 30.0
    s.field_angle = "native"
    s.persist()
    assert S.Session.open(tmp_path).field_angle == "native"


def test_segment_photo_uses_the_field_angle(tmp_path):
    import torch

    from napari_dpn.model import build_model
    from napari_dpn.models import ModelCard, load_model, save_model

    torch.manual_seed(0)
    card = ModelCard(name="tiny", architecture="dpn", threshold=0.5, scale={"working_ppd": 12.0})
    save_model(build_model("dpn"), card, tmp_path / "tiny.safetensors")
    loaded = load_model(tmp_path / "tiny.safetensors")
    rgb, _, disc = fundus(256, seed=0)
    thirty = session_maps.segment_photo(loaded, rgb, device="cpu", field_angle=30.0, fov=disc)
    guess = session_maps.segment_photo(loaded, rgb, device="cpu", fov=disc)
    native = session_maps.segment_photo(loaded, rgb, device="cpu", field_angle="native", fov=disc)
    assert thirty.field_angle == 30.0 and "30 deg (given)" in thirty.scale_note
    assert "45 deg (assumed)" in guess.scale_note and thirty.scale != guess.scale
    assert native.scale == 1.0 and native.scale_note.startswith("native")
    s = S.Session.open(make_folder(tmp_path / "photos"))
    s.record_segmentation(0, thirty)
    assert s.entries[0].field_angle == 30.0 and s.cached_segmentation(0).field_angle == 30.0
    assert "30 deg" in S.Session.open(tmp_path / "photos").entries[0].scale_note


# ----------------------------------------------------------------------------- a full disk


def test_a_full_disk_never_raises_from_bookkeeping_and_loses_no_annotation(tmp_path):
    make_folder(tmp_path / "photos")
    with small_tmpfs(tmp_path / "disk") as disk:
        s = S.Session.open(tmp_path / "photos", disk)
        s.record_segmentation(0, fake_seg())
        filler = fill(disk)
        s.mark_corrected(0)  # a brush stroke's bookkeeping
        assert s.entries[0].state == "corrected" and "the disk is full" in s.write_error
        assert s.go(1) == 1 and s.write_error  # Next's bookkeeping
        with pytest.raises(OutputError) as info:
            s.save(0, fake_seg().mask(), fake_seg().fov)
        assert session_file.is_disk_full(info.value), "recognised by errno, not by its words"
        assert s.entries[0].state == "corrected" and not s.vessels_path(0).exists()
        assert not s.room_to_save(0, (64, 64))
        # Another folder takes them; the session's state is unchanged.
        rescued = s.save_copy(0, fake_seg().mask(), fake_seg().fov, tmp_path)
        assert rescued == tmp_path / "eye0_vessels.png" and rescued.is_file()
        assert s.entries[0].state == "corrected"
        filler.unlink()
        s.save(0, fake_seg().mask(), fake_seg().fov)
        assert s.write_error is None and s.entries[0].state == "saved"
        again = S.Session.open(tmp_path / "photos", disk)
        assert again.current == 1 and again.entries[0].state == "saved"

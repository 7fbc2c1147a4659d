"""File-system errors are one sentence (promise 7).

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from promise_helpers import (
    SEGMENT,
    TRAIN,
    _caffemodel,
    error_line,
    run,
    snapshot,
    unchanged,
)

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= 7. file-system errors: one sentence


def test_segment_out_that_is_a_file(photos, tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("my notes")
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", target, *SEGMENT], capsys)
    assert rc == 2 and "is a file, not a folder" in error_line(err)
    unchanged(before, tmp_path)


def test_segment_into_a_read_only_folder(photos, tmp_path, capsys, read_only):
    out_dir = read_only(tmp_path / "out")
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 2 and "permission denied" in error_line(err)
    unchanged(before, tmp_path)


def test_segment_on_a_full_disk(photos, tmp_path, capsys, disk_full):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 2 and "the disk is full" in error_line(err)
    unchanged(before, tmp_path)  # no half-written or temporary file left behind


def test_segment_does_not_leave_part_of_an_images_outputs(photos, tmp_path, capsys, monkeypatch):
    """The vessel mask write fails after the probability map was written: that map is removed."""
    import napari_dpn.image_writers as image_writers

    real = image_writers.write_mask

    def fail(path, *a, **k):
        if Path(path).name.endswith("_vessels.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(image_writers, "write_mask", fail)
    rc, _, err = run(["segment", photos / "eye0.png", "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 2 and error_line(err)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("where", ["folder", "under a file", "read-only folder"])
def test_evaluate_unwritable_json_fails_before_evaluating(fake_drive, tmp_path, capsys, read_only, monkeypatch, where):
    import napari_dpn.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate_model", lambda *a, **k: pytest.fail("evaluated first"))
    if where == "folder":
        target = tmp_path / "results"
        target.mkdir()
    elif where == "under a file":
        (tmp_path / "notes").write_text("x")
        target = tmp_path / "notes" / "r.json"
    else:
        target = read_only(tmp_path / "ro") / "r.json"
    before = snapshot(tmp_path)
    rc, out, err = run(
        ["evaluate", "--dataset", "drive", "--root", fake_drive, "--device", "cpu", "--json", target, "--quiet"], capsys
    )
    assert rc == 2 and out == ""
    assert any(k in error_line(err) for k in ("is a folder", "is a file", "permission denied"))
    unchanged(before, tmp_path)


def test_train_out_that_is_a_file(pairs, tmp_path, capsys):
    (tmp_path / "models").write_text("x")
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2 and "is a file, not a folder" in error_line(err)
    unchanged(before, tmp_path)


def test_train_checks_its_folder_before_step_one(pairs, tmp_path, capsys, read_only, monkeypatch):
    import napari_dpn.training as training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("training started"))
    out_dir = read_only(tmp_path / "models")
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", out_dir, *TRAIN], capsys)
    assert rc == 2 and "permission denied" in error_line(err)
    unchanged(before, tmp_path)


def test_train_on_a_full_disk_ends_in_one_line(pairs, tmp_path, capsys, disk_full):
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2 and "disk is full" in error_line(err)
    assert [p.name for p in (tmp_path / "models").iterdir()] == []


def test_import_caffe_into_a_read_only_folder(tmp_path, capsys, read_only):
    src = _caffemodel(tmp_path)
    out_dir = read_only(tmp_path / "ro")
    before = snapshot(tmp_path)
    rc, _, err = run(["import-caffe", src, out_dir / "w.safetensors"], capsys)
    assert rc == 2 and "permission denied" in error_line(err)
    unchanged(before, tmp_path)


def test_a_stray_os_error_is_still_one_line(photos, tmp_path, capsys, monkeypatch):
    import napari_dpn.cohort as cohort

    def boom(*a, **k):
        raise OSError(errno.EIO, "Input/output error", str(photos / "eye0.png"))

    monkeypatch.setattr(cohort, "plan_outputs", boom)
    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 2 and "Input/output error" in error_line(err)

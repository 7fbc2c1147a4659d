"""`segment` never overwrites (promise 1).

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

import pytest

from napari_dpn.image_io import read_mask
from napari_dpn.manifest import MANIFEST_NAME as MANIFEST
from promise_helpers import (
    SEGMENT,
    run,
    save_mask,
    snapshot,
    unchanged,
)
from synthetic_fundus import fundus

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= 1. segment never overwrites


def test_segment_keeps_a_correction_saved_from_napari(photos, capsys):
    """`segment FOLDER --out FOLDER` after the napari Save button wrote eye0_vessels.png."""
    correction = save_mask(photos / "eye0_vessels.png", fundus(64, seed=0)[1])
    before = snapshot(photos)
    rc, out, err = run(["segment", photos, "--out", photos, *SEGMENT], capsys)
    assert rc == 0
    assert "1 image(s) segmented" in out and "1 skipped because their outputs exist" in out
    assert err.count("napari-dpn: skipped eye0.png: eye0_vessels.png already exists") == 1
    unchanged(before, photos, new_allowed={"eye1_probability.png", "eye1_vessels.png", "eye1_fov.png", MANIFEST})
    assert not (photos / "eye0_vessels_vessels.png").exists()  # the correction is not a photograph
    assert correction.exists()


@pytest.mark.parametrize("existing", ["eye0_probability.png", "eye0_vessels.png", "eye0_fov.png"])
def test_segment_skips_an_image_if_any_of_its_outputs_exists(photos, tmp_path, capsys, existing):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / existing).write_bytes(b"made by the user")
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in out and "1 skipped" in out
    assert f"skipped eye0.png: {existing} already exists" in err
    unchanged(
        before,
        tmp_path,
        new_allowed={f"out/eye1_{k}.png" for k in ("probability", "vessels", "fov")} | {f"out/{MANIFEST}"},
    )


def test_segment_twice_changes_nothing_the_second_time(photos, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)[0] == 0
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 0 and out.startswith("0 image(s) segmented; 2 skipped")
    assert err.count("napari-dpn: skipped") == 2
    unchanged(before, tmp_path)


def test_segment_overwrite_flag_replaces_outputs(photos, capsys):
    (photos / "eye0_vessels.png").write_bytes(b"old")
    rc, out, _ = run(["segment", photos / "eye0.png", "--out", photos, "--overwrite", *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in out and "skipped" not in out
    assert read_mask(photos / "eye0_vessels.png").shape == (64, 64)


def test_segment_does_not_replace_an_output_that_appears_during_the_run(photos, tmp_path, capsys, monkeypatch):
    """Saved from napari while the batch runs: kept, and the image counts as skipped."""
    import napari_dpn.inference as inference

    out_dir = tmp_path / "out"
    real = inference.predict

    def predict_then_save(*a, **k):
        result = real(*a, **k)
        if not (out_dir / "eye0_vessels.png").exists():
            (out_dir / "eye0_vessels.png").write_bytes(b"saved meanwhile")
        return result

    monkeypatch.setattr(inference, "predict", predict_then_save)
    rc, out, err = run(["segment", photos / "eye0.png", "--out", out_dir, *SEGMENT], capsys)
    assert rc == 0 and out.startswith("0 image(s) segmented") and "1 skipped" in out
    assert (out_dir / "eye0_vessels.png").read_bytes() == b"saved meanwhile"
    assert sorted(p.name for p in out_dir.iterdir()) == ["eye0_vessels.png", MANIFEST]  # no half set of outputs
    assert "already exists" in err

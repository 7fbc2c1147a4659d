from pathlib import Path

from napari_dpn.annotations import annotation_paths, find_pairs, is_annotation


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_annotation_paths(tmp_path):
    v, f = annotation_paths(tmp_path / "img" / "01_test.tif")
    assert v == tmp_path / "img" / "01_test_vessels.png"
    assert f == tmp_path / "img" / "01_test_fov.png"
    v, f = annotation_paths("a/b/eye.jpeg", tmp_path)
    assert (v, f) == (tmp_path / "eye_vessels.png", tmp_path / "eye_fov.png")


def test_find_pairs_same_folder(tmp_path):
    a = _touch(tmp_path / "a.png")
    b = _touch(tmp_path / "b.jpg")
    _touch(tmp_path / "c.tif")  # no annotation: skipped
    _touch(tmp_path / "a_vessels.png")
    _touch(tmp_path / "a_fov.png")
    _touch(tmp_path / "b_vessels.png")
    _touch(tmp_path / "notes.txt")
    pairs = find_pairs(tmp_path)
    assert pairs == [(a, tmp_path / "a_vessels.png", tmp_path / "a_fov.png"), (b, tmp_path / "b_vessels.png", None)]
    assert is_annotation(tmp_path / "a_vessels.png") and not is_annotation(a)


def test_find_pairs_separate_folders(tmp_path):
    img = _touch(tmp_path / "images" / "eye1.tif")
    _touch(tmp_path / "images" / "eye2.tif")
    lab = _touch(tmp_path / "labels" / "eye1_vessels.png")
    fov = _touch(tmp_path / "fovs" / "eye1_fov.png")
    _touch(tmp_path / "labels" / "eye2_fov.png")  # FOV but no vessels: not a pair
    assert find_pairs(tmp_path / "images", tmp_path / "labels") == [(img, lab, None)]
    assert find_pairs(tmp_path / "images", tmp_path / "labels", tmp_path / "fovs") == [(img, lab, fov)]
    assert find_pairs(tmp_path / "missing") == []

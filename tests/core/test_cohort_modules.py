"""The shape of the `segment` path (issue #19, item 2 and the outputs half of item 4): one job per
module, no two modules that import each other, one `pid_alive`, the GPU batch built from
`segmentation`'s own stages, and the outputs as a list of named writers a newcomer extends.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_dpn import image_io, image_writers, outputs, segmentation
from napari_dpn.cli import main
from napari_dpn.manifest import read_manifest
from napari_dpn.models import DEFAULT_MODEL, load_model
from paths import REPO
from synthetic_fundus import fundus

SRC = REPO / "src" / "napari_dpn"
# The modules of the segment path (item 2): each has one job and stays small.
SEGMENT_PATH = (
    "files", "manifest", "planning", "placement", "lock", "outputs", "results", "recovery", "tasks",
    "cluster", "cohort", "batch", "segmentation",
)  # fmt: skip
KNOWN_PAIRS: set = set()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DPN_MODELS", str(tmp_path / "user-models"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (anywhere in it: top level or inside a function)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def core_import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, for every core module (outside ``_napari``)."""
    paths = {_module_name(p): p for p in SRC.rglob("*.py") if "_napari" not in p.parts}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def test_no_two_core_modules_import_each_other():
    graph = core_import_graph()
    assert {"napari_dpn.cohort", "napari_dpn.batch", "napari_dpn.files"} <= set(graph)
    pairs = {tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]}
    # A package and its own submodules (cli/__init__ registers cli/segment, which uses cli.options) are one unit.
    pairs = {(a, b) for a, b in pairs if not (b.startswith(a + ".") or a.startswith(b + "."))}
    assert pairs - KNOWN_PAIRS == set()


def _docstring_lines(node) -> int:
    """A function's docstring is documentation (numpydoc with examples), not body: not counted."""
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def test_each_module_of_the_segment_path_is_small():
    for name in SEGMENT_PATH:
        path = SRC / f"{name}.py"
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 450, f"{path.name} has more than 450 lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                assert length <= 60, f"{path.name}: {node.name} is {length} lines long"


def test_one_pid_alive_for_every_lock():
    """The folder lock and the training lock ask the same function (os.kill(pid, 0) ends a process on Windows)."""
    defined = [
        f"{p.name}:{node.name}"
        for p in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name in ("pid_alive", "_alive")
    ]
    assert defined == ["files.py:pid_alive"]


def test_the_batch_path_reuses_the_stages_of_segment():
    """prepare -> network -> finish is segment, and the batch module has no copy of them."""
    loaded = load_model(DEFAULT_MODEL)
    rgb = fundus(96, seed=3)[0]
    whole = segmentation.segment(loaded, rgb, fusion=None, device="cpu", precision="fp32")
    prep = segmentation.prepare(loaded.card, rgb)
    prob, pred, sc = segmentation.network(loaded, prep, device="cpu", precision="fp32")
    staged = segmentation.finish(prob, prep.fov, sc, pred, loaded.card.threshold, prep.reduction, prep.shape)
    assert np.array_equal(staged.probability, whole.probability) and np.array_equal(staged.mask(), whole.mask())
    assert staged.scale == whole.scale
    batch_source = (SRC / "batch.py").read_text(encoding="utf-8")
    assert "_CardOnly" not in batch_source and "estimate_fov" not in batch_source
    assert "segmentation.prepare(" in batch_source and "segmentation.finish(" in batch_source


# ----------------------------------------------------------------------------- a toy output writer


def _write_toy(path: Path, maps: outputs.Maps) -> None:
    """A newcomer's format: the vessel mask as an 8-bit PNG with 1 for vessels (not 255)."""
    image_writers.write_mask(path, maps.vessels, on_value=1, overwrite=False)


@pytest.fixture
def toy_writer():
    """One more entry in ``outputs.WRITERS``, as docs/design.md tells a newcomer to add one."""
    toy = outputs.OutputWriter("toy", _write_toy)
    outputs.WRITERS.append(toy)
    yield toy
    outputs.WRITERS.remove(toy)


def test_segment_writes_a_writer_added_to_the_list(toy_writer, tmp_path, capsys):
    photo = tmp_path / "photos" / "eye0.png"
    photo.parent.mkdir()
    Image.fromarray((fundus(96, seed=0)[0] * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "out"
    rc = main(["segment", str(photo), "--out", str(out), "--device", "cpu", "--quiet", "--precision", "fp32"])
    assert rc == 0, capsys.readouterr().err
    toy = out / "eye0_toy.png"
    assert toy.is_file() and set(np.unique(np.asarray(Image.open(toy)))) <= {0, 1}
    assert np.array_equal(np.asarray(Image.open(toy)) == 1, image_io.read_mask(out / "eye0_vessels.png"))
    (row,) = read_manifest(out)
    assert row["outputs"] == "eye0_probability.png;eye0_vessels.png;eye0_fov.png;eye0_toy.png"
    assert len(row["output_sha256"].split(";")) == 4
    assert outputs.output_name_pattern().fullmatch("eye0_toy.png")  # a dead run's stage may hold it
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no leftovers

    # A re-run finds all four outputs done with this model and skips the image.
    rc = main(["segment", str(photo), "--out", str(out), "--device", "cpu", "--quiet", "--precision", "fp32"])
    assert rc == 0 and "1 skipped because they were done with this model" in capsys.readouterr().out

"""Issue #19 item 5: one exception → sentence function, and no private names across modules."""

import ast
from pathlib import Path

from napari_dpn import messages, results
from napari_dpn.errors import InputError

SRC = Path(messages.__file__).parent


def test_a_manifest_row_is_the_same_sentence_on_one_line():
    long = ValueError("first\n  second " + "x" * 400)
    assert results.sentence(long) == messages.sentence(long, doing="segmentation", limit=300)
    assert results.sentence(long).startswith("segmentation failed (ValueError: first second x")
    assert "\n" not in results.sentence(long) and len(results.sentence(long)) < 360
    assert results.sentence(InputError("a  b\nc")) == "a b c"
    assert "fewer workers" in results.sentence(MemoryError())
    assert "fewer workers" in results.sentence(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert results.sentence(FileNotFoundError(2, "No such file", "/x/y.png")).startswith("Cannot use /x/y.png")


def test_no_private_name_is_imported_across_modules():
    """``from .x import _name`` ties a module to another's insides; the ``_napari`` modules
    themselves (``from . import _roles``) are the package's own and allowed."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                found += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_dpn"):
                found += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert found == []

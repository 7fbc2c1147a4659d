"""The runnable examples in the public API's docstrings (``napari_dpn.load_model``, ``segment``,
``evaluate``, ``train``) run as doctests: what a newcomer copies into a script works."""

from __future__ import annotations

import doctest
import importlib

import pytest

import napari_dpn

PUBLIC = ["load_model", "segment", "evaluate", "train"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", PUBLIC)
def test_the_public_functions_have_a_numpydoc_docstring_whose_example_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands in a temporary folder
    func = getattr(napari_dpn, name)
    module = importlib.import_module(func.__module__)
    doc = func.__doc__ or ""
    for section in ("Parameters\n    ----------", "Returns\n    -------", "Examples\n    --------"):
        assert section in doc, f"{name}: no {section.splitlines()[0]} section"
    tests = doctest.DocTestFinder(recurse=False).find(func, name, module=module, globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result.failed} example(s) failed"

"""Issue #19's house rule for the whole package: no module over 450 lines, no function over 60
lines (its docstring not counted, as in ``test_cohort_modules``), so each file is one readable job."""

from __future__ import annotations

import ast

from test_cohort_modules import SRC, _docstring_lines

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _modules():
    return sorted(SRC.rglob("*.py"))


def test_no_module_is_over_450_lines():
    too_long = {
        str(p.relative_to(SRC)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}


def test_no_function_is_over_60_lines_without_its_docstring():
    too_long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if length > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(SRC)}:{node.name}"] = length
    assert too_long == {}


def test_the_rule_sees_a_long_function(tmp_path):
    """The measure itself: a 61-line body is caught, and a long docstring is not counted."""
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    doc = '    """' + "\n" * 30 + '    """\n'
    long_fn = ast.parse(f"def f():\n{body}\n").body[0]
    documented = ast.parse(f"def g():\n{doc}{body[: body.rfind(chr(10))]}\n").body[0]
    assert long_fn.end_lineno - long_fn.lineno + 1 - _docstring_lines(long_fn) == 62
    assert documented.end_lineno - documented.lineno + 1 - _docstring_lines(documented) == 61

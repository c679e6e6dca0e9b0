"""The committed labs are clean, complete and wired to the grader (nbval runs them; see pyproject)."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from quantlab.grading import REGISTRY
from quantlab.notebooks import is_checked, problems

LABS = sorted(Path(__file__).resolve().parent.parent.joinpath("labs").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_labs():
    assert [p.name[:2] for p in LABS][:2] == ["01", "02"]


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_lab_is_clean_and_has_checked_cells(path):
    nb = nbformat.read(path, as_version=4)
    assert problems(nb) == []
    for c in nb.cells:  # the marker lives in metadata, out of the learner's sight
        assert "NBVAL_CHECK_OUTPUT" not in c.source
    assert any(is_checked(c) for c in nb.cells), "no cell tagged nbval-check-output: nbval would only check it runs"


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_exercises_are_registered_stubbed_and_checked(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    ids = []
    for i, c in enumerate(cells):
        if "exercise" not in c.metadata.get("tags", []):
            continue
        funcs = [n.name for n in ast.parse(c.source).body if isinstance(n, ast.FunctionDef)]
        assert len(funcs) == 1 and funcs[0] in REGISTRY, f"cell {i}: defines {funcs}"
        assert "raise NotImplementedError" in c.source and "# YOUR CODE HERE" in c.source
        nxt = next(x for x in cells[i + 1:] if x.cell_type == "code")
        assert f"check({funcs[0]})" in nxt.source, f"cell {i}: the next code cell must check {funcs[0]}"
        ids.append(funcs[0])
    if path.name[:2] in {"01", "02", "04", "05"}:
        assert ids, "this lab must have graded exercises"
    assert len(ids) == len(set(ids))

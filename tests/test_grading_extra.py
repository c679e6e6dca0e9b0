"""Instructor-private cases: ``python -m quantlab.grade --extra-cases FILE.py`` (issue 7 §2)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from grading_support import define
from grading_support import sol as _sol

from quantlab.grade import main
from quantlab.grading import REGISTRY, check, run_exercise
from quantlab.grading.cli import load_extra_cases
from quantlab.grading.exercise import extra_cases
from quantlab.grading.report import short_repr

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FIXTURES = Path(__file__).resolve().parent / "fixtures/grading"
EXTRA = FIXTURES / "extra_cases.py"
SOLUTIONS = _sol.SOLUTIONS

# Passes every shipped quantize case (all have fewer than 100 values) but not hidden case 1 (1000 values).
SHORTCUT = ("import numpy as np\ndef quantize(r, s, z, q_min, q_max):\n"
            "    if r.size > 100:\n        return np.zeros_like(r)\n"
            "    return np.clip(np.round(r / s + z), q_min, q_max)\n")
# Raises on hidden case 2 with a message that quotes its input.
LEAKY = ("import numpy as np\ndef quantize(r, s, z, q_min, q_max):\n"
         "    if q_min == 0 and np.ndim(s) == 0 and s == 0.01:\n        raise ValueError(f'odd input {r} {s}')\n"
         "    return np.clip(np.round(r / s + z), q_min, q_max)\n")


def notebook(path: Path, sources) -> str:
    nb = nbformat.v4.new_notebook()
    for src in sources:
        c = nbformat.v4.new_code_cell(src)
        c.metadata["tags"] = ["exercise"]
        nb.cells.append(c)
    nbformat.write(nb, str(path))
    return str(path)


def grade(paths, *extra, capsys):
    assert main([*paths, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["notebooks"]


def test_extra_cases_file_loads_in_the_shipped_format():
    cases = load_extra_cases(str(EXTRA))
    assert set(cases) <= set(REGISTRY) and len(cases["quantize"]) == 2


def test_hidden_cases_grade_but_never_show_their_inputs(tmp_path, capsys):
    full = notebook(tmp_path / "full.ipynb", SOLUTIONS.values())
    short = notebook(tmp_path / "01_short.ipynb", [SHORTCUT, SOLUTIONS["dequantize"]])
    leaky = notebook(tmp_path / "01_leaky.ipynb", [LEAKY])
    plain = grade([short], capsys=capsys)[0]
    assert {e["id"]: e["passed"] for e in plain["exercises"]}["quantize"]  # public cases alone: fooled
    nbs = grade([full, short, leaky, "--extra-cases", str(EXTRA)], capsys=capsys)
    assert nbs[0]["score"] == nbs[0]["max_score"]  # a correct solution passes the hidden cases too
    q = {e["id"]: e for e in nbs[1]["exercises"]}["quantize"]
    assert q["status"] == "failed" and q["points"] == 0
    assert q["feedback"].startswith("7/8 cases passed; hidden case 1 failed (wrong result)")
    assert "Hint:" in q["feedback"]
    hidden = load_extra_cases(str(EXTRA))["quantize"]
    for c in hidden:  # neither the inputs nor any expected value appear
        assert short_repr(c.args[0])[:25] not in q["feedback"] and "expected" not in q["feedback"]
        assert c.name not in q["feedback"]  # the instructor's case name stays private too
    lk = {e["id"]: e for e in nbs[2]["exercises"]}["quantize"]
    assert "hidden case 2 failed (raised ValueError)" in lk["feedback"] and "odd input" not in lk["feedback"]
    assert all(not ex._extra for ex in REGISTRY.values())  # removed again after the run


def test_check_report_of_a_hidden_case_shows_no_values(capsys):
    with extra_cases(load_extra_cases(str(EXTRA))):
        res = check(define(SHORTCUT))
    out = capsys.readouterr().out
    assert "✘ hidden case 1" in out and "First failing case: 'hidden case 1'" in out
    assert "inputs:" not in out and "expected:" not in out and "got:" not in out and "problem:" in out
    assert not res.passed and run_exercise(define(SHORTCUT)).passed  # without them: public cases only


def test_expected_may_be_given_explicitly():
    from quantlab.grading import Case

    with extra_cases({"requant_multiplier": [Case("given", (0.5,), expected=(2**30, 31))]}):
        cases = REGISTRY["requant_multiplier"].prepared_cases()
        assert cases[-1].name == "hidden case 1" and cases[-1].hidden and cases[-1].expected == (2**30, 31)
        res = run_exercise(lambda M: (2**30, 30), "requant_multiplier")
        assert not res.passed
    assert not REGISTRY["requant_multiplier"]._extra


@pytest.mark.parametrize("content,message", [
    ("x = 1\n", "define EXTRA_CASES"),
    ("from quantlab.grading import Case\nEXTRA_CASES = {'no_such_exercise': [Case('a', (1,))]}\n",
     "no exercise named 'no_such_exercise'"),
    ("EXTRA_CASES = {'quantize': [(1, 2)]}\n", "must be a list of quantlab.grading.Case objects"),
    ("def broken(:\n", "could not load it (SyntaxError"),
])
def test_bad_extra_cases_file_is_a_usage_error(tmp_path, capsys, content, message):
    bad = tmp_path / "extra.py"
    bad.write_text(content)
    nb = notebook(tmp_path / "01_x.ipynb", [SOLUTIONS["quantize"]])
    assert main([nb, "--extra-cases", str(bad)]) == 2
    assert message in capsys.readouterr().err
    assert main([nb, "--extra-cases", str(tmp_path / "missing.py")]) == 2


def test_fixture_cases_are_not_near_rounding_ties():
    r, s, z = load_extra_cases(str(EXTRA))["quantize"][0].args[:3]
    x = r.astype(np.float64) / s + z
    assert (np.abs(x - np.floor(x) - 0.5) > 1e-3).all()

"""What a learner and an instructor read (issue 15 §3): plain values, short arrays, no mid-word breaks, --partial."""

from __future__ import annotations

import csv
import json
import re

import nbformat
import numpy as np
import pytest

from quantlab.grade import main
from quantlab.grading import check, run_exercise
from quantlab.grading.cli import format_table
from quantlab.grading.report import REPORT_WIDTH, CheckResult, plain, short_repr, wrap

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

NOISE = re.compile(r"np\.(int|float|uint|bool)\w*\(|array\(|dtype=|tensor\(")


def define(src: str, name: str):
    ns: dict = {}
    exec("import numpy as np\nimport torch\n" + src, ns)
    return ns[name]


WRONG = [  # each returns NumPy scalars or arrays, the source of np.int64(3)-style noise
    ("symmetric_params", "def symmetric_params(r_min, r_max, q_min, q_max):\n"
                         "    return np.float64(max(-r_min, r_max) / ((q_max - q_min) / 2)), np.int64(1)\n"),
    ("asymmetric_params", "def asymmetric_params(r_min, r_max, q_min, q_max):\n"
                          "    s = np.float32((max(r_max, 0) - min(r_min, 0)) / (q_max - q_min))\n"
                          "    return s, np.int64(q_min - np.round(min(r_min, 0) / s) + 1)\n"),
    ("quantize", "def quantize(r, s, z, q_min, q_max):\n    return np.round(r / s + z).astype(np.int64)\n"),
    ("kl_divergence", "def kl_divergence(p, q):\n    return np.float64(0.5)\n"),
    ("requant_multiplier", "def requant_multiplier(M):\n    return np.int64(2**30), np.int32(3)\n"),
    ("per_channel_scale", "def per_channel_scale(w, bits, axis=0):\n    return np.abs(w).max(axis=0) / 127\n"),
]


@pytest.mark.parametrize("name,src", WRONG, ids=[w[0] for w in WRONG])
def test_feedback_has_no_numpy_type_noise(name, src, capsys):
    res = check(define(src, name))
    report = capsys.readouterr().out
    assert res.status == "failed"
    for text in (res.feedback, report):
        assert not NOISE.search(text), text


def test_plain_values():
    assert [plain(v) for v in (np.int64(3), np.float32(0.013), np.float64(2.0), np.bool_(True), -7)] == \
        ["3", "0.013", "2.0", "True", "-7"]
    assert short_repr((np.float32(0.5), np.int64(3))) == "(0.5, 3)"
    res = run_exercise(define(WRONG[0][1], "symmetric_params"))
    assert "z: expected 0, got 1" in res.feedback


def test_long_arrays_are_kept_short(capsys):
    check(define("def quantize(r, s, z, q_min, q_max):\n"  # wrong only where s, z are per-channel arrays
                 "    return np.clip(np.round(r / np.max(s) + np.max(z)), q_min, q_max)\n", "quantize"))
    out = capsys.readouterr().out
    fail = out[out.index("First failing case"):]
    assert "..." in fail  # the per-channel case has 48 values: first and last three shown
    for line in fail.splitlines():
        assert len(line) <= REPORT_WIDTH, line
    big = short_repr(np.arange(10_000, dtype=np.int32).reshape(100, 100))
    assert big == "int32 array of shape (100, 100) [0, 1, 2, ..., 9997, 9998, 9999]"
    assert len(short_repr(np.random.default_rng(0).normal(size=(64, 3, 3, 3)))) < 120


def _words(text: str) -> set:
    return set(text.split())


def test_hints_wrap_at_word_boundaries(capsys):
    res = check(define("def quantize(r, s, z, q_min, q_max):\n"
                       "    return np.clip(np.round(r / float(s) + int(z)), q_min, q_max)\n", "quantize"))
    out = capsys.readouterr().out
    hint = res.cases[[c.passed for c in res.cases].index(False)].hint
    assert len(hint) > REPORT_WIDTH  # long enough to need wrapping
    block = out[out.index("  hint:"):]
    block = block[: block.index("\n✘") if "\n✘" in block else len(block)]
    lines = block.splitlines()
    assert len(lines) >= 2 and all(len(ln) <= REPORT_WIDTH for ln in lines)
    assert " ".join(" ".join(lines).split()[1:]) == " ".join(hint.split())  # same words, none split
    text = "x" * 150 + " tail"  # a word longer than a line stays whole on its own line
    assert wrap(text, 40).splitlines() == ["x" * 150, "tail"]


def test_table_feedback_wraps_at_word_boundaries():
    fb = ("0/6 cases passed; case 'values outside the grid (clip)': values differ at 1 of 6 position(s). "
          "Hint: you forgot to clip: values outside the grid must be clamped, np.clip(q, q_min, q_max).")
    from quantlab.grading.batch import NotebookResult

    nb = NotebookResult("sub.ipynb", [CheckResult("quantize", "failed", 0, 3, fb)])
    table = format_table([nb], feedback_width=40)
    row = table.splitlines()[2:]
    cell_lines = [ln[ln.index("[failed]"):] if "[failed]" in ln else ln.strip() for ln in row
                  if ln.strip() and not ln.startswith(("-", "sub.ipynb  TOTAL"))][:8]
    joined = " ".join(cell_lines)
    assert _words(f"[failed] {fb}") <= _words(joined)  # every word intact, none cut into pieces
    assert all(len(c) <= 40 or " " not in c for c in cell_lines)


HALF_UP = ("import numpy as np\ndef quantize(r, s, z, q_min, q_max):\n"
           "    return np.clip(np.floor(r / s + z + 0.5), q_min, q_max)\n")  # fails only the ties case


def test_partial_points_in_proportion(tmp_path, capsys):
    res = run_exercise(define(HALF_UP, "quantize"), partial=True)
    assert res.status == "failed" and (res.n_passed, res.n_cases) == (5, 6) and res.points == 2.5
    assert run_exercise(define(HALF_UP, "quantize")).points == 0  # default: all-or-nothing
    cheat = define("import quantlab as ql\ndef quantize(r, s, z, q_min, q_max):\n"
                   "    return ql.quantize(r, s, z, q_min, q_max) if r.ndim > 1 else "
                   "np.clip(np.round(r / s + z), q_min, q_max)\n", "quantize")
    assert run_exercise(cheat, partial=True).points == 0  # a forbidden call earns nothing

    nb = nbformat.v4.new_notebook()
    c = nbformat.v4.new_code_cell(HALF_UP)
    c.metadata["tags"] = ["exercise"]
    nb.cells.append(c)
    path = tmp_path / "01_halfup.ipynb"
    nbformat.write(nb, str(path))
    book = tmp_path / "grades.csv"
    assert main([str(path), "--json", "--partial", "--csv", str(book)]) == 0
    data = json.loads(capsys.readouterr().out)["notebooks"][0]
    q = {e["id"]: e for e in data["exercises"]}["quantize"]
    assert q["points"] == 2.5 and q["status"] == "failed" and data["score"] == 2.5
    rows = list(csv.reader(book.open()))
    assert rows[1][rows[0].index("quantize")] == "2.5"
    assert main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notebooks"][0]["score"] == 0

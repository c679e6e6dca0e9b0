"""Tests for quantlab.grading (check / run_exercise) and the grading CLI (python -m quantlab.grade)."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from grading_support import define
from grading_support import sol as _sol

from quantlab.grade import main, read_submission
from quantlab.grading import REGISTRY, check, run_exercise
from quantlab.grading.checks_calibration import kl_reference, quantize_histogram_reference
from quantlab.grading.checks_engine import requant_multiplier_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # from deliberately wrong learner code

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, STUBS = _sol.SOLUTIONS, _sol.STUBS


def make_notebook(path: Path, cells) -> Path:
    """cells: list of (source, is_exercise)."""
    nb = nbformat.v4.new_notebook()
    for src, is_ex in cells:
        c = nbformat.v4.new_code_cell(src)
        if is_ex:
            c.metadata["tags"] = ["exercise"]
        nb.cells.append(c)
    nbformat.write(nb, str(path))
    return path


# ------------------------------------------------------------------------------------------ references


def test_every_exercise_has_a_solution_and_cases():
    assert set(SOLUTIONS) == set(REGISTRY)
    for ex in REGISTRY.values():
        assert len(ex.prepared_cases()) >= 4 and ex.points > 0


@pytest.mark.parametrize("name", list(SOLUTIONS))
def test_reference_solution_scores_full_marks(name, capsys):
    res = check(define(SOLUTIONS[name], name))
    assert res.status == "passed", res.feedback
    assert res.points == res.max_points == REGISTRY[name].points
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(STUBS))
def test_stub_is_not_attempted(name):
    res = run_exercise(define(STUBS[name], name))
    assert (res.status, res.points) == ("not attempted", 0)


def test_library_functions_are_refused_by_their_own_checks():
    """Handing in the library's own function is the shortcut forbidding exists for (tests/test_grading_forbid.py)."""
    from quantlab.linear import dequantize, quantize

    for fn in (quantize, dequantize):
        res = run_exercise(fn)
        assert res.status == "failed" and res.points == 0 and "may not call `quantlab." in res.feedback


def test_independent_references_agree_with_library():
    """Unguarded: the library must keep both names (see also tests/test_grading_references.py)."""
    import quantlab.calibration as cal

    rng = np.random.default_rng(1)
    p, q = rng.uniform(0, 1, 16), rng.uniform(0, 1, 16)
    p[3] = q[5] = 0
    assert float(cal.kl_divergence(p, q)) == pytest.approx(kl_reference(p, q), rel=1e-6)
    np.testing.assert_allclose(np.asarray(cal.quantize_histogram(p, 5), np.float64),
                               quantize_histogram_reference(p, 5), rtol=1e-6)


def _nan_like(x):
    return tuple(_nan_like(v) for v in x) if isinstance(x, tuple) else np.full(np.shape(x), np.nan)


def test_grader_computations_print_no_warnings():
    """References and known wrong solutions run when check() first meets an exercise: in the learner's notebook.
    A wrong solution that divides by zero on an edge case (weight_correction's flat channel) must stay silent."""
    import dataclasses
    import warnings

    for ex in REGISTRY.values():
        fresh = dataclasses.replace(ex, _cases=None, _extra=[], _mutants={})
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
            warnings.simplefilter("always")
            fresh.prepared_cases()
            bad = fresh.prepared_cases()[-1]
            fresh.match(bad, _nan_like(bad.expected), None)  # hint predicates on NaN output
        assert not caught, f"{ex.id}: {[str(w.message) for w in caught]}"


def test_requant_reference_definition():
    for M in [0.5, 0.0123, 0.7071, 3.1e-5, 1 - 2**-40, 0.99999]:
        M0, n = requant_multiplier_reference(M)
        assert 2**30 <= M0 < 2**31 and n >= 0 and M0 == round(M * 2**n)
        assert round(M * 2 ** (n + 1)) >= 2**31  # n is the largest


# ------------------------------------------------------------------------------------------ wrong solutions

Q = "import numpy as np\ndef quantize(r, s, z, q_min, q_max):\n    return {}\n"
AP = ("import numpy as np\ndef asymmetric_params(r_min, r_max, q_min, q_max):\n"
      "    {widen}\n    s = {s}\n    z = {z}\n    return s, z\n")
AP_OK = dict(widen="r_min, r_max = min(r_min, 0.0), max(r_max, 0.0)",
             s="max((r_max - r_min) / (q_max - q_min), 1.2e-7)",
             z="int(np.clip(q_min - np.round(r_min / s), q_min, q_max))")
SP = "def symmetric_params(r_min, r_max, q_min, q_max):\n    return {}\n"
PCM = ("import numpy as np\ndef per_channel_minmax(w, axis):\n"
       "    o = tuple(d for d in range(w.ndim) if d != axis)\n    return {}\n")
PCS = ("import numpy as np\ndef per_channel_scale(w, bits, axis=0):\n"
       "    o = tuple(d for d in range(w.ndim) if d != axis)\n    return {}\n")
KL = "import numpy as np\ndef kl_divergence(p, q):\n{}\n"
QH = """import numpy as np
def quantize_histogram(p, n_levels):
    w = len(p) // n_levels
    out = np.zeros(len(p))
    for k in range(n_levels):
        lo, hi = k * w, {hi}
        chunk = p[lo:hi]
        nz = chunk > 0
        if nz.any():
            {body}
    return out
"""
QH_HI_OK = "len(p) if k == n_levels - 1 else (k + 1) * w"
RM = "import math\ndef requant_multiplier(M):\n{}\n"

WRONG = [
    # (exercise, source, fragment of the expected hint)
    ("quantize", Q.format("np.round(r / s + z)"), "forgot to clip"),
    ("quantize", Q.format("np.clip((r / s + z).astype(int), q_min, q_max)"), "truncated"),
    ("quantize", Q.format("np.clip(np.floor(r / s + z), q_min, q_max)"), "truncated"),
    ("quantize", Q.format("np.clip(np.floor(r / s + z + 0.5), q_min, q_max)"), "half to even"),
    ("quantize", Q.format("np.clip(np.round(r / s - z), q_min, q_max)"), "you subtracted it"),
    ("quantize", Q.format("np.clip(np.round(r * s + z), q_min, q_max)"), "divide by it"),
    ("quantize", Q.format("np.clip(np.round(r / s + z), q_min, q_max).ravel()"), "same shape as r"),
    ("quantize", Q.format("np.clip(np.round(r / float(s) + int(z)), q_min, q_max)"), "broadcast"),
    ("dequantize", "def dequantize(q, s, z):\n    return s * q\n", "forgot the zero point"),
    ("dequantize", "def dequantize(q, s, z):\n    return s * (q + z)\n", "subtracted, not added"),
    ("dequantize", "import numpy as np\ndef dequantize(q, s, z):\n"
                   "    return np.round(s * (q - z)).astype(int)\n", "returned integers"),
    ("asymmetric_params", AP.format(**{**AP_OK, "z": "q_min - r_min / s"}), "forgot to round"),
    ("asymmetric_params",
     AP.format(**{**AP_OK, "z": "int(np.clip(q_min + np.round(r_min / s), q_min, q_max))"}),
     "sign of the zero point"),
    ("asymmetric_params", AP.format(**{**AP_OK, "widen": "pass"}), "include 0 in the range"),
    ("asymmetric_params", AP.format(**{**AP_OK, "s": "max((r_max - r_min) / q_max, 1.2e-7)"}),
     "q_max - q_min, not by q_max"),
    ("asymmetric_params",
     AP.format(**{**AP_OK, "s": "(r_max - r_min) / (q_max - q_min)",
                  "z": "0 if s == 0 else int(np.clip(q_min - np.round(r_min / s), q_min, q_max))"}),
     "s <= 0 for constant input"),
    ("asymmetric_params", AP.format(**{**AP_OK, "s": "(r_max - r_min) / (q_max - q_min)"}), "constant input"),
    ("symmetric_params", SP.format("max(-r_min, r_max) / ((q_max - q_min) / 2), q_min"), "z = 0"),
    ("symmetric_params", SP.format("r_max / ((q_max - q_min) / 2), 0"), "r_max only"),
    ("symmetric_params", SP.format("max(-r_min, r_max) / (q_max - q_min), 0"), "half the grid"),
    ("per_channel_minmax", PCM.format("w.min(axis=axis, keepdims=True), w.max(axis=axis, keepdims=True)"),
     "reduced along the channel axis"),
    ("per_channel_minmax", PCM.format("w.min(axis=o), w.max(axis=o)"), "keepdims"),
    ("per_channel_minmax", PCM.format("w.min(), w.max()"), "per-tensor"),
    ("per_channel_scale", PCS.format("np.abs(w).max(axis=axis, keepdims=True) / (2 ** (bits - 1) - 1)"),
     "reduced along the channel axis"),
    ("per_channel_scale", PCS.format("w.max(axis=o, keepdims=True) / (2 ** (bits - 1) - 1)"),
     "absolute value"),
    ("per_channel_scale", PCS.format("np.abs(w).max(axis=o, keepdims=True) / (2 ** bits - 1)"),
     "2^(b-1) - 1"),
    ("per_channel_scale", PCS.format("np.abs(w).max(axis=o, keepdims=True) / 2 ** (bits - 1)"),
     "2^(b-1) - 1"),
    ("kl_divergence",
     KL.format("    m = p > 0\n    return np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-10)))"),
     "forgot to normalise"),
    ("kl_divergence", KL.format("    p, q = p / p.sum(), q / q.sum()\n    return np.sum(p * np.log(p / q))"),
     "log(0) leaked"),
    ("kl_divergence", KL.format("    p, q = p / p.sum(), q / q.sum()\n    m = q > 0\n"
                                "    return np.sum(q[m] * np.log(q[m] / np.maximum(p[m], 1e-10)))"),
     "arguments swapped"),
    ("kl_divergence", KL.format("    p, q = p / p.sum(), q / q.sum()\n    m = p > 0\n"
                                "    return np.sum(p[m] * np.log2(p[m] / np.maximum(q[m], 1e-10)))"),
     "natural log"),
    ("quantize_histogram", QH.format(hi=QH_HI_OK, body="out[lo:hi] = chunk.sum() / len(chunk)"),
     "over all its bins"),
    ("quantize_histogram", QH.format(hi="(k + 1) * w", body="out[lo:hi][nz] = chunk.sum() / nz.sum()"),
     "lost the remainder"),
    ("quantize_histogram", QH.format(hi=QH_HI_OK, body="out[lo:hi][nz] = chunk.sum() / len(chunk)"),
     "mass not conserved"),
    ("requant_multiplier", RM.format("    m, e = math.frexp(M)\n    return round(m * 2**31), 31 - e"),
     "overflow"),
    ("requant_multiplier", RM.format("    m, e = math.frexp(M)\n    return round(m * 2**30), 30 - e"),
     "not normalised"),
    ("requant_multiplier", RM.format("    m, e = math.frexp(M)\n    return int(m * 2**31), 31 - e"),
     "truncated"),
    ("requant_multiplier", RM.format("    m, e = math.frexp(M)\n    n = 31 - e\n    M0 = round(m * 2**31)\n"
                                     "    if M0 == 2**31:\n        M0, n = 2**30, n - 1\n    return M0, -n"),
     "wrong sign"),
    ("log_quantize", "import numpy as np\ndef log_quantize(r, bits):\n    s, K = np.abs(r).max(), 2 ** (bits - 1) - 1\n"
                     "    m = np.clip(np.round(np.log2(np.abs(r) / s)) + K, 0, K)\n"
                     "    return np.sign(r) * s * 2.0 ** (m - K) * (m > 0)\n", "log of zero"),
    ("kmeans_step", "import numpy as np\ndef kmeans_step(x, centroids):\n"
                    "    codes = np.abs(x[:, None] - centroids[None]).argmin(1)\n"
                    "    return np.full(len(centroids), x.mean()), codes\n", "wrong set"),
    # lab 06 (the full catalogue of its mistakes is in tests/test_grading_correction.py)
    ("bias_correction",
     "import numpy as np\ndef bias_correction(a_fp, a_q):\n    return a_fp.mean(axis=0) - a_q.mean(axis=0)",
     "spatial mean"),
    ("weight_correction", "import numpy as np\ndef weight_correction(w, w_hat):\n    return w_hat",
     "zeta * (w_hat + u)"),
    # lab 09 (the full catalogue of its mistakes is in tests/test_grading_transformer.py)
    ("group_quantize_int4", "import numpy as np\ndef group_quantize_int4(w, group_size):\n"
                            "    s = np.abs(w).max() / 7\n    return np.clip(np.round(w / s), -7, 7) * s\n",
     "one scale for the whole tensor"),
    ("smooth_layer", "import numpy as np\ndef smooth_layer(x, w, alpha):\n"
                     "    s = np.abs(x).max(0) ** alpha / np.abs(w).max(0) ** (1 - alpha)\n    return x / s, w\n",
     "forgot to scale W"),
]


@pytest.mark.parametrize("name,src,hint", WRONG, ids=[f"{w[0]}:{w[2]}" for w in WRONG])
def test_wrong_solution_gets_its_hint(name, src, hint):
    res = run_exercise(define(src, name))
    assert res.status == "failed" and res.points == 0
    assert hint in res.feedback, res.feedback


def _topic_catalogues() -> set:
    """Exercise ids covered by the WRONG lists of the per-topic grader tests (tests/test_grading_<topic>.py)."""
    ids = set()
    for path in sorted(Path(__file__).parent.glob("test_grading_*.py")):
        spec = importlib.util.spec_from_file_location(f"_catalogue_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ids |= {w[0] for w in getattr(mod, "WRONG", [])}
    return ids


def test_catalogue_covers_every_exercise():
    assert {w[0] for w in WRONG} | _topic_catalogues() == set(REGISTRY) and len(WRONG) >= 12


# ------------------------------------------------------------------------------------------ hostile code


def test_exception_is_a_failure_with_reason():
    def quantize(r, s, z, q_min, q_max):
        raise ValueError("boom")

    res = run_exercise(quantize)
    assert res.status == "failed" and "ValueError: boom" in res.feedback


def test_endless_loop_times_out():
    def dequantize(q, s, z):
        while True:
            pass

    res = run_exercise(dequantize, timeout=0.5)
    assert res.status == "timeout" and res.points == 0 and "0.5 s" in res.feedback


def test_megabytes_of_printing_are_bounded(capsys):
    def symmetric_params(r_min, r_max, q_min, q_max):
        print("x" * 5_000_000)
        return max(-r_min, r_max) / ((q_max - q_min) / 2), 0

    res = check(symmetric_params)
    out = capsys.readouterr().out
    assert res.passed and len(res.stdout) < 3000 and len(out) < 10_000 and "dropped" in res.stdout


@pytest.mark.parametrize("body,reason", [
    ("return np.full(r.shape, np.nan)", "NaN"),
    ("return np.zeros(3)", "shape"),
    ("return 'q'", "expected numbers"),
    ("return None", "return"),
    ("import sys; sys.exit(1)", "sys.exit"),
    ("r /= s; return np.clip(np.round(r + z), q_min, q_max)", "modified its input"),
])
def test_bad_outputs_fail_with_reason(body, reason):
    fn = define(f"import numpy as np\ndef quantize(r, s, z, q_min, q_max):\n    {body}\n", "quantize")
    res = run_exercise(fn)
    assert res.status == "failed" and reason in res.feedback, res.feedback


def test_check_never_raises_on_nonsense(capsys):
    assert check(lambda x: x).status == "error"
    assert check(42, "quantize").status == "error"
    assert check(print).status == "error"


def test_report_shows_case_marks_inputs_and_hint(capsys):
    check(define(Q.format("np.round(r / s + z)"), "quantize"))
    out = capsys.readouterr().out
    for piece in ("✔ scalar s, z = 0", "✘ values outside the grid", "inputs:", "expected:", "got:", "hint:",
                  "0/3 points"):
        assert piece in out


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    d = tmp_path_factory.mktemp("nbs")
    full = make_notebook(d / "full.ipynb", [("print('not an exercise')", False)]
                         + [(s, True) for s in SOLUTIONS.values()])
    stubs = make_notebook(d / "01_stubs.ipynb", [(STUBS["quantize"], True)])
    hostile = dict(SOLUTIONS)
    hostile["quantize"] = "def quantize(r, s, z, q_min, q_max):\n    while True:\n        pass\n"
    hostile["dequantize"] = "import os\ndef dequantize(q, s, z):\n    os._exit(3)\n"
    hostile["symmetric_params"] = ("import sys\ndef symmetric_params(r_min, r_max, q_min, q_max):\n"
                                   "    sys.exit(0)\n")
    hostile["kl_divergence"] = ("import os\ndef kl_divergence(p, q):\n    print('x' * 10**7)\n"
                                "    os.write(1, b'y' * 10**6)\n    return float('nan')\n")
    bad = make_notebook(d / "hostile.ipynb", [(s, True) for s in hostile.values()])
    broken = d / "broken.ipynb"
    broken.write_text("{ not a notebook")
    return {"full": full, "stubs": stubs, "hostile": bad, "broken": broken}


def test_read_submission_finds_exercises(notebooks):
    sub = read_submission(notebooks["full"])
    assert len(sub.cells) == len(SOLUTIONS) and sub.ids == list(REGISTRY)
    stub = read_submission(notebooks["stubs"])  # lab 01 from the file name: all of lab 01 is graded
    assert stub.ids == ["quantize", "dequantize", "asymmetric_params", "symmetric_params"]


def test_cli_json_csv_and_hostile_code(notebooks, tmp_path, capsys):
    paths = [str(notebooks[k]) for k in ("full", "stubs", "hostile", "broken")]
    before = {p: (Path(p).read_bytes(), os.stat(p).st_mtime_ns) for p in paths}
    gradebook = tmp_path / "grades.csv"
    code = main([*paths, "--json", "--csv", str(gradebook), "--timeout", "20", "--exercise-timeout", "1"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert {p: (Path(p).read_bytes(), os.stat(p).st_mtime_ns) for p in paths} == before  # never written

    nbs = data["notebooks"]
    assert [n["path"] for n in nbs] == paths
    for n in nbs:
        assert set(n) == {"path", "score", "max_score", "error", "exercises"}
        for e in n["exercises"]:
            assert set(e) == {"id", "passed", "status", "points", "max_points", "feedback"}
    full, stubs, hostile, broken = nbs
    assert full["score"] == full["max_score"] == sum(ex.points for ex in REGISTRY.values())
    assert all(e["passed"] for e in full["exercises"])
    st = {e["id"]: e["status"] for e in stubs["exercises"]}
    assert st == {"quantize": "not attempted", "dequantize": "not attempted",
                  "asymmetric_params": "not attempted", "symmetric_params": "not attempted"}
    h = {e["id"]: e for e in hostile["exercises"]}
    assert h["quantize"]["status"] == "timeout"
    assert h["dequantize"]["status"] == "failed" and "exited" in h["dequantize"]["feedback"]
    assert h["symmetric_params"]["status"] == "failed" and "sys.exit" in h["symmetric_params"]["feedback"]
    assert h["kl_divergence"]["status"] == "failed" and len(h["kl_divergence"]["feedback"]) < 2000
    for k in ("asymmetric_params", "per_channel_scale", "quantize_histogram", "requant_multiplier"):
        assert h[k]["passed"], h[k]  # graded after the crash, in a fresh child
    assert not any(e["passed"] for k, e in h.items() if k in ("quantize", "dequantize", "symmetric_params",
                                                                 "kl_divergence"))
    assert broken["error"] and broken["exercises"] == [] and broken["score"] == 0

    rows = list(csv.reader(gradebook.open()))
    assert rows[0] == ["notebook", *REGISTRY, "total", "max_total", "error"]
    assert [r[0] for r in rows[1:]] == paths
    total = str(int(sum(ex.points for ex in REGISTRY.values())))
    assert rows[1][-3:] == [total, total, ""] and rows[4][-1].startswith("could not read")


def test_cli_notebook_timeout_keeps_graded_results(tmp_path, capsys):
    cells = dict(SOLUTIONS)
    cells["per_channel_minmax"] = "def per_channel_minmax(w, axis):\n    while True:\n        pass\n"
    nb = make_notebook(tmp_path / "slow.ipynb", [(s, True) for s in cells.values()])
    assert main([str(nb), "--json", "--timeout", "1.5"]) == 0
    ex = {e["id"]: e for e in json.loads(capsys.readouterr().out)["notebooks"][0]["exercises"]}
    assert all(ex[k]["passed"] for k in ("quantize", "dequantize", "asymmetric_params", "symmetric_params"))
    slow = ex["per_channel_minmax"]
    assert slow["status"] == "timeout" and "while checking" in slow["feedback"]
    assert all(ex[k]["status"] == "timeout"
               for k in ("per_channel_scale", "kl_divergence", "requant_multiplier"))


def test_cell_level_problems(tmp_path, capsys):
    nb = make_notebook(tmp_path / "cells.ipynb", [
        ("def quantize(r, s, z, q_min, q_max)\n    return r", True),          # syntax error
        ("%timeit 1\n" + SOLUTIONS["dequantize"], True),                        # magic line
        ("import os\nos._exit(1)\n", False),                                    # not an exercise: never run
        # uses `ql` from the lab's setup cell, which the grader provides
        (SOLUTIONS["symmetric_params"].replace("return s, 0", "return max(s, ql.EPS), 0"), True),
    ])
    assert main([str(nb), "--json"]) == 0
    ex = {e["id"]: e for e in json.loads(capsys.readouterr().out)["notebooks"][0]["exercises"]}
    assert ex["quantize"]["status"] == "error" and "SyntaxError" in ex["quantize"]["feedback"]
    assert ex["dequantize"]["passed"]
    assert ex["asymmetric_params"]["status"] == "not attempted"
    assert ex["symmetric_params"]["passed"], ex["symmetric_params"]


def test_cli_subprocess_table_and_exit_codes(notebooks, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "quantlab.grade", *a], capture_output=True,
                                    text=True, env=env, cwd=tmp_path, timeout=120)
    p = run(str(notebooks["full"]), str(notebooks["broken"]))
    assert p.returncode == 0, p.stderr
    for piece in ("notebook", "exercise", "passed", "points", "max", "feedback", "TOTAL", "quantize",
                  "error"):
        assert piece in p.stdout
    assert "2/2" in p.stderr  # tqdm bar for more than one notebook
    assert run("--bogus", str(notebooks["full"])).returncode == 2


def test_usage_errors_exit_2(notebooks, capsys):
    assert main([]) == 2
    assert main(["--bogus", str(notebooks["full"])]) == 2
    assert main([str(notebooks["full"]), "--timeout", "0"]) == 2
    assert main([str(notebooks["full"]), "--jobs", "0"]) == 2


LAB_PATHS = sorted(Path(__file__).resolve().parent.parent.joinpath("labs").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("lab", LAB_PATHS, ids=lambda p: p.name)
def test_real_lab_solved_scores_full_and_shipped_lab_scores_zero(lab, tmp_path, capsys):
    """The shipped labs grade as all "not attempted"; with every exercise cell solved, full marks."""
    nb = nbformat.read(lab, as_version=4)
    ex_cells = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    if not ex_cells:
        pytest.skip("lab without graded exercises")
    assert main([str(lab), "--json"]) == 0
    shipped = json.loads(capsys.readouterr().out)["notebooks"][0]
    assert shipped["score"] == 0 and {e["status"] for e in shipped["exercises"]} == {"not attempted"}
    for c in ex_cells:
        name = next(n.name for n in ast.parse(c.source).body if isinstance(n, ast.FunctionDef))
        c.source = SOLUTIONS[name]
    solved = tmp_path / lab.name
    nbformat.write(nb, solved)
    assert main([str(solved), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["notebooks"][0]
    assert out["score"] == out["max_score"] > 0, out

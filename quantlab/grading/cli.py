r"""Grade lab submissions: ``python -m quantlab.grade NOTEBOOK... [--json] [--csv FILE] [--partial] ...``.

Options: ``--timeout`` (wall clock per notebook), ``--exercise-timeout`` (per exercise), ``-j/--jobs``,
``--partial`` (each exercise's points in proportion to the cases passed; the default is all-or-nothing),
``--extra-cases FILE.py`` (instructor-private cases: a Python file defining
``EXTRA_CASES = {"quantize": [Case(...), ...]}`` with the same :class:`~quantlab.grading.Case` objects as
the shipped checks; learners never see them, and feedback names them "hidden case k" without their inputs).
See :mod:`quantlab.grading.batch` for what the grader runs and its limits.

Exit status: 0 whenever grading ran (whatever the scores), 2 for usage errors (a bad option, an extra-cases
file that cannot be loaded or names an unknown exercise).

>>> main(["labs/01_linear_quantization.ipynb", "--json"])   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys

from .batch import NOTEBOOK_TIMEOUT, grade_notebooks
from .exercise import REGISTRY, extra_cases
from .report import wrap
from .runner import DEFAULT_TIMEOUT

__all__ = ["main", "format_table", "write_csv", "load_extra_cases"]


def load_extra_cases(path: str) -> dict:
    """Read ``EXTRA_CASES`` from an instructor's Python file: {exercise id: [Case, ...]}.

    Raises ValueError naming the file and the fix when it cannot be loaded, lacks ``EXTRA_CASES``, or names
    an exercise that does not exist.
    """
    from .exercise import Case

    try:
        spec = importlib.util.spec_from_file_location("quantlab_extra_cases", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except Exception as e:
        raise ValueError(f"--extra-cases {path}: could not load it ({type(e).__name__}: {e})") from None
    cases = getattr(mod, "EXTRA_CASES", None)
    if not isinstance(cases, dict):
        raise ValueError(f"--extra-cases {path}: define EXTRA_CASES = {{'quantize': [Case(...), ...]}}")
    for k, v in cases.items():
        if k not in REGISTRY:
            raise ValueError(f"--extra-cases {path}: no exercise named {k!r}; known: {', '.join(REGISTRY)}")
        if not isinstance(v, (list, tuple)) or not all(isinstance(c, Case) for c in v):
            raise ValueError(f"--extra-cases {path}: EXTRA_CASES[{k!r}] must be a list of "
                             "quantlab.grading.Case objects")
    return cases


def _cell(text: str, width: int) -> list[str]:
    """A table cell's lines: wrapped at word boundaries, at most 6 lines (the last one ending in …)."""
    lines = wrap(text, width).splitlines() or [""]
    if len(lines) > 6:
        lines = lines[:6]
        lines[-1] = lines[-1].rsplit(" ", 1)[0] + " …"
    return lines


def format_table(results: list, feedback_width: int = 70) -> str:
    """Human-readable table: notebook, exercise, passed, points, max, feedback; a total per notebook.

    Feedback is wrapped onto continuation lines at word boundaries (never cut inside a word).
    """
    rows = [("notebook", "exercise", "passed", "points", "max", "feedback")]
    for nb in results:
        name = nb.path if len(nb.path) <= 40 else "…" + nb.path[-39:]
        if nb.error:
            rows.append((name, "-", "error", "0", "0", nb.error))
        for r in nb.exercises:
            fb = "" if r.passed else f"[{r.status}] {r.feedback}"
            rows.append((name, r.id, "yes" if r.passed else "no", f"{r.points:g}", f"{r.max_points:g}", fb))
        rows.append((name, "TOTAL", "", f"{nb.score:g}", f"{nb.max_score:g}", ""))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    pad = " " * (sum(widths) + 10)
    lines = []
    for j, r in enumerate(rows):
        fb = _cell(r[5], feedback_width)
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=False)) + "  " + fb[0])
        lines.extend(pad + more for more in fb[1:])
        if j == 0 or r[1] == "TOTAL":
            lines.append("-" * (sum(widths) + 10 + min(feedback_width, 20)))
    return "\n".join(line.rstrip() for line in lines)


def write_csv(results: list, path: str) -> None:
    """Gradebook: one row per notebook; columns notebook, <exercise ids...>, total, max_total, error."""
    ids = [k for k in REGISTRY if any(r.id == k for nb in results for r in nb.exercises)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["notebook", *ids, "total", "max_total", "error"])
        for nb in results:
            pts = {r.id: f"{r.points:g}" for r in nb.exercises}
            w.writerow([nb.path, *(pts.get(k, "") for k in ids), f"{nb.score:g}", f"{nb.max_score:g}",
                        nb.error or ""])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m quantlab.grade", description="Grade quantlab lab notebooks.")
    ap.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="submitted .ipynb files")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--csv", metavar="FILE", help="also write a gradebook CSV (one row per notebook)")
    ap.add_argument("--timeout", type=float, default=NOTEBOOK_TIMEOUT, metavar="SECONDS",
                    help=f"wall-clock limit per notebook (default {NOTEBOOK_TIMEOUT:g})")
    ap.add_argument("--exercise-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help=f"time limit per exercise (default {DEFAULT_TIMEOUT:g})")
    ap.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="notebooks graded in parallel (default: min(2, CPUs))")
    ap.add_argument("--partial", action="store_true",
                    help="points in proportion to the cases passed (default: all-or-nothing per exercise)")
    ap.add_argument("--extra-cases", metavar="FILE.py",
                    help="instructor-private cases: a Python file defining EXTRA_CASES = {id: [Case, ...]}")
    return ap


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (0 when grading ran, 2 on usage errors)."""
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.timeout <= 0 or args.exercise_timeout <= 0 or args.jobs < 1:
        ap.print_usage(sys.stderr)
        print("error: --timeout and --exercise-timeout must be > 0, --jobs >= 1", file=sys.stderr)
        return 2
    try:
        extra = load_extra_cases(args.extra_cases) if args.extra_cases else {}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with extra_cases(extra):
        results = grade_notebooks(args.notebooks, args.timeout, args.exercise_timeout, args.jobs,
                                  partial=args.partial)
    if args.json:
        print(json.dumps({"notebooks": [nb.to_dict() for nb in results]}, indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    if args.csv:
        write_csv(results, args.csv)
    return 0

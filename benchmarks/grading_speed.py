r"""Grading speed: seconds per notebook for ``python -m quantlab.grade``, against the naive approach.

Builds one fully solved submission — the real ``labs/01_linear_quantization.ipynb`` with every exercise
cell replaced by its reference solution when that lab exists, else a synthetic notebook (nbformat) with
one exercise cell per registered exercise — copies it N times into a temp dir, grades all copies in ONE
CLI run, and prints seconds per notebook. Side by side it times the naive approach's floor: a fresh
``python -c "import quantlab"`` per notebook (before any grading), and prints the ratio; and, in-process,
the cost of forbidding (patching aliases + the profile hook) per exercise, with and without, interleaved.

Usage: ``.venv/bin/python benchmarks/grading_speed.py [-n 50] [--naive-samples 10] [--jobs 2]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "labs" / "01_linear_quantization.ipynb"


def _solutions() -> dict:
    path = ROOT / "tests/fixtures/grading/solutions.py"
    spec = importlib.util.spec_from_file_location("grading_solutions", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SOLUTIONS


def build_submission(path: Path) -> str:
    """Write a fully solved submission to ``path``; returns where it came from ("lab" or "synthetic")."""
    sol = _solutions()
    if LAB.exists():
        with open(LAB, encoding="utf-8") as f:
            nb = nbformat.read(f, as_version=4)
        for c in nb.cells:
            if c.cell_type == "code" and "exercise" in c.metadata.get("tags", []):
                name = next((k for k in sol if f"def {k}(" in c.source), None)
                if name:
                    c.source = sol[name]
        source = "lab"
    else:
        nb = nbformat.v4.new_notebook()
        nb.cells.append(nbformat.v4.new_markdown_cell("# Synthetic submission (all exercises solved)"))
        nb.cells.append(nbformat.v4.new_code_cell("import numpy as np\nfrom quantlab.grading import check"))
        for src in sol.values():
            cell = nbformat.v4.new_code_cell(src)
            cell.metadata["tags"] = ["exercise"]
            nb.cells.append(cell)
            nb.cells.append(nbformat.v4.new_code_cell(f"check({src.split('def ')[1].split('(')[0]})"))
        source = "synthetic"
    nbformat.write(nb, str(path))
    return source


def forbid_overhead(repeats: int = 5) -> tuple[float, float]:
    """In-process ms per exercise for the reference solutions: (with forbidding, without), side by side."""
    from quantlab.grading import REGISTRY, run_exercise
    from quantlab.grading.forbid import prime

    fns = {}
    for k, src in _solutions().items():
        ns: dict = {}
        exec(src, ns)
        fns[k] = ns[k]
    prime([n for ex in REGISTRY.values() for n in ex.forbids])
    saved = {k: ex.forbids for k, ex in REGISTRY.items()}

    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            for k, f in fns.items():
                assert run_exercise(f, k).passed
        return (time.perf_counter() - t0) / (repeats * len(fns)) * 1000

    once()  # warm-up: expected outputs, imports
    with_f, without = [], []
    for _ in range(3):  # interleaved, so machine load hits both alike
        with_f.append(once())
        for ex in REGISTRY.values():
            ex.forbids = ()
        without.append(once())
        for k, ex in REGISTRY.items():
            ex.forbids = saved[k]
    return min(with_f), min(without)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="number of submissions (default 50)")
    ap.add_argument("--naive-samples", type=int, default=10,
                    help="fresh `python -c 'import quantlab'` runs timed for the naive cost (default 10)")
    ap.add_argument("--jobs", type=int, default=2, help="--jobs passed to the grader (default 2)")
    args = ap.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        source = build_submission(d / "submission_000.ipynb")
        for i in range(1, args.n):
            shutil.copy(d / "submission_000.ipynb", d / f"submission_{i:03d}.ipynb")
        paths = sorted(str(p) for p in d.glob("submission_*.ipynb"))

        t0 = time.perf_counter()
        p = subprocess.run([py, "-m", "quantlab.grade", *paths, "--json", "--jobs", str(args.jobs)],
                           capture_output=True, text=True, cwd=ROOT)
        total = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"grader failed ({p.returncode}): {p.stderr[-2000:]}")
        nbs = json.loads(p.stdout)["notebooks"]
        full = sum(nb["score"] == nb["max_score"] > 0 for nb in nbs)

        k = max(1, min(args.naive_samples, args.n))
        t0 = time.perf_counter()
        for _ in range(k):
            subprocess.run([py, "-c", "import quantlab"], check=True, cwd=ROOT)
        naive = (time.perf_counter() - t0) / k

    per_nb = total / args.n
    print(f"submission: {source} ({len(nbs[0]['exercises'])} exercises), {full}/{args.n} graded full marks")
    print(f"quantlab.grade, one run, {args.n} notebooks, --jobs {args.jobs}: {total:.2f} s total, "
          f"{per_nb:.3f} s per notebook (including one interpreter start)")
    print(f"naive, fresh `python -c 'import quantlab'` per notebook ({k} samples): {naive:.3f} s "
          "per notebook "
          "(import only, no grading)")
    print(f"ratio naive / quantlab.grade: {naive / per_nb:.1f}x")
    w, wo = forbid_overhead()
    print(f"run_exercise on a reference solution, in-process: {w:.2f} ms per exercise with forbidding, "
          f"{wo:.2f} ms without (+{w - wo:.2f} ms)")


if __name__ == "__main__":
    main()

r"""Grade lab submissions: ``python -m quantlab.grade NOTEBOOK... [--json] [--csv FILE] [--timeout SECONDS]``.

For each notebook (opened read-only with nbformat, never written): take the code cells tagged
``exercise``, run ONLY those cells and the registered checks in a child process, and collect one
:class:`~quantlab.grading.CheckResult` per exercise of the notebook's lab(s). The parent imports NumPy,
torch and quantlab once, computes every expected output, sets ``torch.set_num_threads(1)`` and then forks
one child per submission ('fork' context), so each submission is isolated but starts in milliseconds —
no Jupyter kernel, no fresh interpreter.

Limits: a wall-clock limit per notebook (``--timeout``, the child is killed; exercises already graded keep
their result, the others become "timeout"), a time limit per exercise inside the child
(``--exercise-timeout``), and learner output bounded (Python-level printing is captured and truncated;
file descriptors 1 and 2 of the child go to /dev/null). A child that exits (``os._exit``, a crash) fails
the exercise it was running; the remaining exercises are graded in a fresh child.

Exit status: 0 whenever grading ran (whatever the scores), 2 for usage errors.

>>> main(["labs/01_linear_quantization.ipynb", "--json"])   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import ast
import builtins
import csv
import json
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from .grading import REGISTRY, CheckResult, exercises_of_lab
from .grading.core import (
    DEFAULT_TIMEOUT,
    OUTPUT_LIMIT,
    BoundedWriter,
    GradingTimeout,
    run_exercise,
    time_limit,
)

__all__ = ["main", "grade_notebooks", "read_submission", "NotebookResult", "Submission"]

#: Default wall-clock limit (seconds) for one notebook.
NOTEBOOK_TIMEOUT = 60.0


@dataclass
class Submission:
    """A notebook's exercise cells (sources), the exercise ids each defines, and the ids to grade."""

    path: str
    cells: list = field(default_factory=list)
    cell_ids: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    error: str | None = None


@dataclass
class NotebookResult:
    """The grades of one notebook (``error`` set when it could not be read)."""

    path: str
    exercises: list = field(default_factory=list)
    error: str | None = None

    @property
    def score(self) -> float:
        """Points earned."""
        return sum(r.points for r in self.exercises)

    @property
    def max_score(self) -> float:
        """Points available."""
        return sum(r.max_points for r in self.exercises)

    def to_dict(self) -> dict:
        """{"path", "score", "max_score", "error", "exercises": [CheckResult.to_dict(), ...]}."""
        return {"path": self.path, "score": self.score, "max_score": self.max_score, "error": self.error,
                "exercises": [r.to_dict() for r in self.exercises]}


# --------------------------------------------------------------------------------------- reading


_MAGIC = re.compile(r"^(\s*)([%!].*)$", re.M)


def _strip_magics(src: str) -> str:
    """Comment out IPython magics and shell escapes (``%timeit``, ``!ls``): the grader runs plain Python."""
    return _MAGIC.sub(r"\1pass  # \2", src)


def _defined_functions(src: str) -> list[str]:
    try:
        tree = ast.parse(_strip_magics(src))
        return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        return re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", src, re.M)


def read_submission(path: str) -> Submission:
    """Read a notebook read-only and find its exercise cells and the exercise ids to grade.

    The ids are every registered exercise of each lab that the notebook touches — a lab is touched when an
    exercise cell defines one of its functions, or when the file name starts with the lab number
    (``01_...ipynb``) — so a deleted exercise cell still shows up as "not attempted".
    """
    import nbformat

    sub = Submission(str(path))
    try:
        with open(path, encoding="utf-8") as f:  # read-only: the grader never writes a submission
            nb = nbformat.read(f, as_version=4)
        cells = [c for c in nb.cells if c.get("cell_type") == "code"
                 and "exercise" in (c.get("metadata", {}).get("tags") or [])]
    except Exception as e:  # missing file, bad JSON, not a notebook
        sub.error = f"could not read the notebook: {type(e).__name__}: {e}"
        return sub
    sub.cells = [c.source if isinstance(c.source, str) else "".join(c.source) for c in cells]
    sub.cell_ids = [[n for n in _defined_functions(src) if n in REGISTRY] for src in sub.cells]
    labs = {REGISTRY[n].lab for ids in sub.cell_ids for n in ids}
    m = re.match(r"(\d\d)_", os.path.basename(str(path)))
    if m and exercises_of_lab(m.group(1)):
        labs.add(m.group(1))
    sub.ids = [k for k, ex in REGISTRY.items() if ex.lab in labs]
    if not sub.ids:
        sub.error = "no cells tagged 'exercise' define a registered exercise"
    return sub


# --------------------------------------------------------------------------------------- child


def _setup_namespace() -> dict:
    """What the labs' first (setup) cell provides, since only exercise cells are run: np, torch, ql, math."""
    import math

    import numpy as np
    import torch

    import quantlab as ql

    from .grading import check

    return {"__name__": "__main__", "__builtins__": builtins, "np": np, "torch": torch, "ql": ql,
            "math": math, "check": check}


def _child(conn, sub: Submission, ids: list, ex_timeout: float, output_limit: int) -> None:
    """Run in the forked child: execute the exercise cells, then check each pending exercise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sink = BoundedWriter(output_limit)
        sys.stdout = sys.stderr = sink
        ns = _setup_namespace()
        cell_error = {}
        for i, (src, defined) in enumerate(zip(sub.cells, sub.cell_ids, strict=False)):
            try:
                code = compile(_strip_magics(src), f"<exercise cell {i + 1}>", "exec")
                with time_limit(ex_timeout):
                    exec(code, ns)
            except GradingTimeout:
                msg = f"exercise cell {i + 1} did not finish within {ex_timeout:g} s"
            except BaseException as e:  # noqa: BLE001 - SyntaxError, SystemExit, anything
                msg = f"exercise cell {i + 1} raised {type(e).__name__}: {e}"
            else:
                continue
            for n in defined:
                cell_error[n] = msg
        sys.stdout = sys.stderr = BoundedWriter(0)
        for n in ids:
            conn.send(("start", n))
            fn = ns.get(n)
            pts = REGISTRY[n].points
            if not callable(fn):
                if n in cell_error:
                    res = CheckResult(n, "error", 0, pts, cell_error[n])
                else:
                    res = CheckResult(n, "not attempted", 0, pts,
                                      f"no function named {n} in the exercise cells")
            else:
                res = run_exercise(fn, n, ex_timeout, output_limit)
                if n in cell_error and res.status != "passed":
                    res.feedback += f" (note: {cell_error[n]})"
            conn.send(("result", res.to_full_dict()))
        conn.send(("done", None))
    finally:
        os._exit(0)  # skip atexit handlers and joining learner threads


# --------------------------------------------------------------------------------------- parent


@dataclass
class _Job:
    sub: Submission
    deadline: float
    pending: list
    results: dict = field(default_factory=dict)
    proc: object = None
    conn: object = None
    current: str | None = None
    done: bool = False


def _prepare() -> None:
    """Import heavy modules and compute every expected output once, before forking."""
    import torch

    torch.set_num_threads(1)
    for ex in REGISTRY.values():
        ex.prepared_cases()


def _start(ctx, job: _Job, ex_timeout: float, output_limit: int) -> None:
    r, w = ctx.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    job.proc = ctx.Process(target=_child, args=(w, job.sub, list(job.pending), ex_timeout, output_limit),
                           daemon=True)
    job.proc.start()
    w.close()
    job.conn, job.current, job.done = r, None, False


def _drain(job: _Job) -> bool:
    """Read the child's messages; True when the child has finished or died."""
    try:
        while job.conn.poll():
            kind, payload = job.conn.recv()
            if kind == "start":
                job.current = payload
            elif kind == "result":
                res = CheckResult.from_dict(payload)
                job.results[res.id] = res
                if res.id in job.pending:
                    job.pending.remove(res.id)
                job.current = None
            elif kind == "done":
                job.done = True
                return True
    except (EOFError, OSError):
        return True
    return not job.proc.is_alive() and not job.conn.poll()


def _stop(job: _Job) -> None:
    if job.proc.is_alive():
        job.proc.kill()
    job.proc.join(5)
    job.conn.close()


def grade_notebooks(paths, timeout: float = NOTEBOOK_TIMEOUT, exercise_timeout: float = DEFAULT_TIMEOUT,
                    jobs: int = 1, output_limit: int = OUTPUT_LIMIT, progress: bool | None = None) -> list:
    """Grade notebooks, one forked child per submission (at most ``jobs`` at once); NotebookResults in order.

    >>> [r.score for r in grade_notebooks(["sub.ipynb"])]   # doctest: +SKIP
    [17]
    """
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread in the parent: we fork
    _prepare()
    ctx = mp.get_context("fork")
    exercise_timeout = min(exercise_timeout, timeout)
    subs = [read_submission(p) for p in paths]
    out = {i: NotebookResult(s.path, error=s.error) for i, s in enumerate(subs)}
    bar = tqdm(total=len(subs), file=sys.stderr, unit="nb", disable=not (progress if progress is not None
                                                                         else len(subs) > 1))
    for s in subs:
        if s.error is not None:
            bar.update(1)
    queue = [(i, s) for i, s in enumerate(subs) if s.error is None]
    queue.reverse()
    running: dict = {}
    while queue or running:
        while queue and len(running) < max(1, jobs):
            i, s = queue.pop()
            job = _Job(s, time.monotonic() + timeout, list(s.ids))
            _start(ctx, job, exercise_timeout, output_limit)
            running[i] = job
        now = time.monotonic()
        nearest = min(j.deadline for j in running.values())
        wait([j.conn for j in running.values()] + [j.proc.sentinel for j in running.values()],
             timeout=max(0.0, nearest - now))
        for i, job in list(running.items()):
            finished = _drain(job)
            timed_out = not finished and time.monotonic() >= job.deadline
            if not (finished or timed_out):
                continue
            _stop(job)
            if timed_out:
                for n in job.pending:
                    job.results[n] = CheckResult(
                        n, "timeout", 0, REGISTRY[n].points,
                        f"the notebook exceeded its time limit of {timeout:g} s"
                        + (f" while checking {n} (an endless loop?)" if n == job.current else
                           f" before {n} was checked"))
                job.pending = []
            elif job.pending:  # the child died: os._exit, a crash, a signal
                code = job.proc.exitcode
                if job.current is not None:
                    n = job.current
                    job.results[n] = CheckResult(
                        n, "failed", 0, REGISTRY[n].points,
                        f"the grading process exited (exit code {code}) while checking {n}: does it call "
                        "os._exit, or crash the interpreter?")
                    job.pending.remove(n)
                    if job.pending and time.monotonic() < job.deadline:
                        _start(ctx, job, exercise_timeout, output_limit)
                        continue
                reason = (f"the exercise cells made the grading process exit (exit code {code}) before any "
                          "check ran" if job.current is None else "not checked: the grading process exited")
                for n in job.pending:
                    job.results[n] = CheckResult(n, "error", 0, REGISTRY[n].points, reason)
                job.pending = []
            out[i].exercises = [job.results[n] for n in job.sub.ids]
            del running[i]
            bar.update(1)
    bar.close()
    return [out[i] for i in range(len(subs))]


# --------------------------------------------------------------------------------------- output


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(results: list, feedback_width: int = 70) -> str:
    """Human-readable table: notebook, exercise, passed, points, max, feedback; a total per notebook."""
    rows = [("notebook", "exercise", "passed", "points", "max", "feedback")]
    for nb in results:
        name = _short(nb.path, 40)
        if nb.error:
            rows.append((name, "-", "error", "0", "0", _short(nb.error, feedback_width)))
        for r in nb.exercises:
            fb = "" if r.passed else f"[{r.status}] {r.feedback}"
            rows.append((name, r.id, "yes" if r.passed else "no", f"{r.points:g}", f"{r.max_points:g}",
                         _short(fb, feedback_width)))
        rows.append((name, "TOTAL", "", f"{nb.score:g}", f"{nb.max_score:g}", ""))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=False)) + "  " + r[5])
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


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (0 when grading ran, 2 on usage errors)."""
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
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.timeout <= 0 or args.exercise_timeout <= 0 or args.jobs < 1:
        ap.print_usage(sys.stderr)
        print("error: --timeout and --exercise-timeout must be > 0, --jobs >= 1", file=sys.stderr)
        return 2
    results = grade_notebooks(args.notebooks, args.timeout, args.exercise_timeout, args.jobs)
    if args.json:
        print(json.dumps({"notebooks": [nb.to_dict() for nb in results]}, indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    if args.csv:
        write_csv(results, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

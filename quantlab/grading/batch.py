r"""Batch grading: read submissions read-only, run their exercise cells in forked children, collect results.

For each notebook (opened read-only with nbformat, never written): take the code cells tagged
``exercise``, run ONLY those cells and the registered checks in a child process, and collect one
:class:`~quantlab.grading.CheckResult` per exercise of the notebook's lab(s). The parent imports NumPy,
torch and quantlab once, computes every expected output (instructor-private cases included), resolves
what each exercise forbids, sets ``torch.set_num_threads(1)`` and then forks one child per submission
('fork' context), so each submission is isolated but starts in milliseconds — no Jupyter kernel, no fresh
interpreter.

Limits: a wall-clock limit per notebook (``timeout``, the child is killed; exercises already graded keep
their result, the others become "timeout"), a time limit per exercise inside the child
(``exercise_timeout``), and learner output bounded (Python-level printing is captured and truncated;
file descriptors 1 and 2 of the child go to /dev/null). A child that exits (``os._exit``, a crash) fails
the exercise it was running; the remaining exercises are graded in a fresh child. Learner code runs with
the grader's user rights: run untrusted submissions as an unprivileged user or in a container.
"""

from __future__ import annotations

import ast
import builtins
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from .exercise import REGISTRY
from .forbid import prime
from .report import CheckResult
from .runner import DEFAULT_TIMEOUT, run_exercise
from .sandbox import OUTPUT_LIMIT, BoundedWriter, GradingTimeout, time_limit

__all__ = ["grade_notebooks", "read_submission", "NotebookResult", "Submission", "NOTEBOOK_TIMEOUT",
           "exercises_of_lab"]

#: Default wall-clock limit (seconds) for one notebook.
NOTEBOOK_TIMEOUT = 60.0


def exercises_of_lab(lab: str) -> list[str]:
    """Exercise ids of one lab ("01", "02", ...; a lab without exercises gives []), in registration order.

    >>> import quantlab.grading
    >>> exercises_of_lab("02")
    ['per_channel_minmax', 'per_channel_scale']
    """
    return [k for k, ex in REGISTRY.items() if ex.lab == lab]


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


@dataclass
class Settings:
    """How each exercise is run: its time limit, how much printing is kept, partial credit or not."""

    exercise_timeout: float = DEFAULT_TIMEOUT
    output_limit: int = OUTPUT_LIMIT
    partial: bool = False


def _setup_namespace() -> dict:
    """What the labs' first (setup) cell provides, since only exercise cells are run: np, torch, ql, math."""
    import math

    import numpy as np
    import torch

    import quantlab as ql

    from .runner import check

    return {"__name__": "__main__", "__builtins__": builtins, "np": np, "torch": torch, "ql": ql,
            "math": math, "check": check}


def _exec_cells(sub: Submission, ns: dict, seconds: float) -> dict:
    """Execute the exercise cells in ``ns``; {exercise id: why its cell failed} for cells that failed."""
    cell_error = {}
    for i, (src, defined) in enumerate(zip(sub.cells, sub.cell_ids, strict=False)):
        try:
            code = compile(_strip_magics(src), f"<exercise cell {i + 1}>", "exec")
            with time_limit(seconds):
                exec(code, ns)
        except GradingTimeout:
            msg = f"exercise cell {i + 1} did not finish within {seconds:g} s"
        except BaseException as e:  # noqa: BLE001 - SyntaxError, SystemExit, anything
            msg = f"exercise cell {i + 1} raised {type(e).__name__}: {e}"
        else:
            continue
        for n in defined:
            cell_error[n] = msg
    return cell_error


def _check_one(n: str, ns: dict, cell_error: dict, st: Settings) -> CheckResult:
    fn = ns.get(n)
    pts = REGISTRY[n].points
    if not callable(fn):
        if n in cell_error:
            return CheckResult(n, "error", 0, pts, cell_error[n])
        return CheckResult(n, "not attempted", 0, pts, f"no function named {n} in the exercise cells")
    res = run_exercise(fn, n, st.exercise_timeout, st.output_limit, st.partial)
    if n in cell_error and res.status != "passed":
        res.feedback += f" (note: {cell_error[n]})"
    return res


def _child(conn, sub: Submission, ids: list, st: Settings) -> None:
    """Run in the forked child: execute the exercise cells, then check each pending exercise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.stdout = sys.stderr = BoundedWriter(st.output_limit)
        ns = _setup_namespace()
        cell_error = _exec_cells(sub, ns, st.exercise_timeout)
        sys.stdout = sys.stderr = BoundedWriter(0)
        for n in ids:
            conn.send(("start", n))
            conn.send(("result", _check_one(n, ns, cell_error, st).to_full_dict()))
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
    """Import heavy modules, compute every expected output and resolve every forbidden name, before forking."""
    import torch

    torch.set_num_threads(1)
    for ex in REGISTRY.values():
        ex.prepared_cases()
    prime([n for ex in REGISTRY.values() for n in ex.forbids])


def _start(ctx, job: _Job, st: Settings) -> None:
    r, w = ctx.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    job.proc = ctx.Process(target=_child, args=(w, job.sub, list(job.pending), st), daemon=True)
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


def _timed_out(job: _Job, timeout: float) -> None:
    for n in job.pending:
        job.results[n] = CheckResult(
            n, "timeout", 0, REGISTRY[n].points, f"the notebook exceeded its time limit of {timeout:g} s"
            + (f" while checking {n} (an endless loop?)" if n == job.current else f" before {n} was checked"))
    job.pending = []


def _died(ctx, job: _Job, st: Settings) -> bool:
    """The child died (os._exit, a crash, a signal): fail its exercise; True when a fresh child took over."""
    code = job.proc.exitcode
    if job.current is not None:
        n = job.current
        job.results[n] = CheckResult(
            n, "failed", 0, REGISTRY[n].points, f"the grading process exited (exit code {code}) while checking "
            f"{n}: does it call os._exit, or crash the interpreter?")
        job.pending.remove(n)
        if job.pending and time.monotonic() < job.deadline:
            _start(ctx, job, st)
            return True
    reason = (f"the exercise cells made the grading process exit (exit code {code}) before any check ran"
              if job.current is None else "not checked: the grading process exited")
    for n in job.pending:
        job.results[n] = CheckResult(n, "error", 0, REGISTRY[n].points, reason)
    job.pending = []
    return False


def grade_notebooks(paths, timeout: float = NOTEBOOK_TIMEOUT, exercise_timeout: float = DEFAULT_TIMEOUT,
                    jobs: int = 1, output_limit: int = OUTPUT_LIMIT, progress: bool | None = None,
                    partial: bool = False) -> list:
    """Grade notebooks, one forked child per submission (at most ``jobs`` at once); NotebookResults in order.

    ``partial``: points in proportion to the cases passed (default all-or-nothing). Instructor-private
    cases are those added (e.g. with :func:`~quantlab.grading.exercise.extra_cases`) before the call.

    >>> [r.score for r in grade_notebooks(["sub.ipynb"])]   # doctest: +SKIP
    [17]
    """
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread in the parent: we fork
    _prepare()
    ctx = mp.get_context("fork")
    st = Settings(min(exercise_timeout, timeout), output_limit, partial)
    subs = [read_submission(p) for p in paths]
    out = {i: NotebookResult(s.path, error=s.error) for i, s in enumerate(subs)}
    show = progress if progress is not None else len(subs) > 1
    bar = tqdm(total=len(subs), file=sys.stderr, unit="nb", disable=not show)
    bar.update(sum(s.error is not None for s in subs))
    queue = [(i, s) for i, s in enumerate(subs) if s.error is None][::-1]
    running: dict = {}
    while queue or running:
        while queue and len(running) < max(1, jobs):
            i, s = queue.pop()
            running[i] = _Job(s, time.monotonic() + timeout, list(s.ids))
            _start(ctx, running[i], st)
        nearest = min(j.deadline for j in running.values())
        wait([j.conn for j in running.values()] + [j.proc.sentinel for j in running.values()],
             timeout=max(0.0, nearest - time.monotonic()))
        for i, job in list(running.items()):
            finished = _drain(job)
            timed_out = not finished and time.monotonic() >= job.deadline
            if not (finished or timed_out):
                continue
            _stop(job)
            if timed_out:
                _timed_out(job, timeout)
            elif job.pending and _died(ctx, job, st):
                continue
            out[i].exercises = [job.results[n] for n in job.sub.ids]
            del running[i]
            bar.update(1)
    bar.close()
    return [out[i] for i in range(len(subs))]

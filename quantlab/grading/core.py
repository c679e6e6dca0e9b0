r"""The exercise runner: cases, diagnoses, result types and ``check(fn)``.

An :class:`Exercise` is a function name (its id), points and a list of :class:`Case` s (inputs and the
expected output, computed from a reference). When a case fails, the :class:`Diagnosis` list is tried in
order — a *mutant* (a known wrong solution: does the learner's output equal it?) or a *predicate* on the
learner's output or exception — and the first match gives the hint. Learner code always runs on copies
of the inputs, under a time limit, with its printing captured and bounded; :func:`run_exercise` never
raises.
"""

from __future__ import annotations

import contextlib
import copy
import io
import signal
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = [
    "Case", "Diagnosis", "Exercise", "CaseResult", "CheckResult", "REGISTRY", "register", "get_exercise",
    "run_exercise", "check", "format_report", "to_array", "compare_array", "compare_scalar", "compare_tuple",
]

#: Default time limit (seconds) for all the cases of one exercise.
DEFAULT_TIMEOUT = 10.0
#: How many characters of the learner's printing are kept per exercise.
OUTPUT_LIMIT = 2000

STATUSES = ("passed", "failed", "not attempted", "error", "timeout")


class GradingTimeout(BaseException):
    """Raised by the alarm inside learner code (a BaseException so ``except Exception`` can't eat it)."""


# ---------------------------------------------------------------------------------------------------
# Converting and comparing outputs. A comparator returns None when ``got`` matches, else a reason.


def to_array(x) -> np.ndarray:
    """Learner output -> NumPy array (torch tensors, lists, scalars); raises TypeError when impossible."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    if x is None:
        raise TypeError("returned None — did you forget `return`?")
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and such
        raise TypeError(f"returned {type(x).__name__}, which is not an array ({e})") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"returned {type(x).__name__} with dtype {a.dtype}, expected numbers")
    return a


def _first_diff(got: np.ndarray, expected: np.ndarray, bad: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f" (first at index {idx})" if got.ndim else ""
    return (f"values differ at {int(bad.sum())} of {bad.size} position(s){where}: "
            f"expected {expected[idx]!r}, got {got[idx]!r}")


def compare_array(got, expected, *, integral: bool = False, floating: bool = False,
                  rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """Compare an array-like output with ``expected``: shape, finiteness, dtype kind, then values.

    integral: values must be whole numbers (any int or float dtype) and equal exactly.
    floating: the dtype must be floating point (values compared with rtol/atol).
    """
    try:
        a = to_array(got)
    except TypeError as e:
        return str(e)
    expected = np.asarray(expected)
    if a.shape != expected.shape:
        return f"returned shape {a.shape}, expected shape {expected.shape}"
    if a.dtype.kind == "b":
        return "returned booleans, expected numbers"
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return f"returned {int((~np.isfinite(a)).sum())} NaN/inf value(s)"
    if floating and a.dtype.kind != "f":
        return f"returned integer dtype {a.dtype}, expected real (floating-point) values"
    if integral:
        if a.dtype.kind == "f" and not (a == np.round(a)).all():
            return "returned non-integer values; q must be whole numbers"
        bad = a.astype(np.float64) != expected.astype(np.float64)
    else:
        bad = ~np.isclose(a.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)
    if bad.any():
        return _first_diff(a, expected, bad)
    return None


def compare_scalar(got, expected, *, integral: bool = False, rtol: float = 1e-5, atol: float = 1e-8):
    """Compare a single number (Python/NumPy scalar, 0-d or 1-element array or tensor)."""
    try:
        a = to_array(got)
    except TypeError as e:
        return str(e)
    if a.size != 1:
        return f"returned an array of shape {a.shape}, expected a single number"
    v = a.reshape(()).item()
    if isinstance(v, bool):
        return "returned a bool, expected a number"
    if not np.isfinite(v):
        return f"returned {v}, expected a finite number"
    if integral:
        if v != round(v):
            return f"returned {v!r}, expected a whole number"
        return None if int(round(v)) == int(expected) else f"expected {int(expected)}, got {v!r}"
    return None if np.isclose(v, expected, rtol=rtol, atol=atol) else f"expected {expected!r}, got {v!r}"


def compare_tuple(got, expected, comparators, names) -> str | None:
    """Compare a tuple output element-wise, e.g. ``(s, z)``: each element with its own comparator."""
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        return f"returned {type(got).__name__}, expected a tuple ({', '.join(names)})"
    for g, e, cmp, name in zip(got, expected, comparators, names, strict=False):
        reason = cmp(g, e)
        if reason is not None:
            return f"{name}: {reason}"
    return None


def _equal_inputs(a, b) -> bool:
    """True when an input is unchanged (same type, dtype, shape and values, NaN-aware)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal_inputs(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_inputs(a[k], b[k]) for k in a)
    try:
        x, y = to_array(a), to_array(b)
    except TypeError:
        return a == b
    same = bool(np.array_equal(x, y, equal_nan=x.dtype.kind == "f"))
    return x.dtype == y.dtype and x.shape == y.shape and same


def short_repr(x, limit: int = 160) -> str:
    """A one-line repr of an input or output, cut to ``limit`` characters."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        with np.printoptions(precision=4, threshold=12, edgeitems=3, linewidth=10**6):
            s = f"array({np.array2string(x, separator=', ')}, dtype={x.dtype})" if x.ndim else repr(x)
        if x.ndim > 1:
            s = f"{s} with shape {x.shape}"
    elif isinstance(x, tuple):
        s = "(" + ", ".join(short_repr(v, limit) for v in x) + ("," if len(x) == 1 else "") + ")"
    else:
        try:
            s = repr(x)
        except Exception:
            s = f"<{type(x).__name__}>"
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------
# Exercises


@dataclass
class Diagnosis:
    """A hint and when it applies to a failed case.

    mutant(*args) -> output of a known wrong solution; applies when the learner's output matches it.
    when(case, got) -> bool, a predicate on the learner's output (got is None after an exception).
    on_error(case, exc) -> bool, a predicate on the exception the learner's code raised.
    only: restrict to these case names (e.g. the round-half-up hint only on the ties case).
    """

    hint: str
    mutant: Callable | None = None
    when: Callable | None = None
    on_error: Callable | None = None
    only: tuple[str, ...] = ()


@dataclass
class Case:
    """One call of the learner's function: ``fn(*args)`` must equal ``expected`` under ``compare``.

    hint: fallback hint when this case fails and no diagnosis matched.
    compare: overrides the exercise's comparator for this case (e.g. "any s > 0" for constant input).
    """

    name: str
    args: tuple
    expected: Any = None
    hint: str = ""
    compare: Callable | None = None


@dataclass
class Exercise:
    """An exercise: id (= the function's name), lab, points, reference, cases, diagnoses, comparator.

    ``make_cases()`` builds the cases (inputs only); expected outputs come from ``reference`` and are
    computed once, before any learner code runs (see :meth:`prepared_cases`).
    """

    id: str
    lab: str
    points: float
    reference: Callable
    make_cases: Callable[[], list]
    compare: Callable
    diagnoses: list = field(default_factory=list)
    fallback_hint: str = ""
    #: Dotted names the learner's function may not call while graded: the library's (and torch's)
    #: implementations of this same exercise, e.g. ("quantlab.linear.quantize", "torch.quantize_per_tensor").
    forbids: tuple = ()
    _cases: list | None = field(default=None, repr=False)
    _mutants: dict = field(default_factory=dict, repr=False)

    def prepared_cases(self) -> list[Case]:
        """The cases with ``expected`` filled in from the reference (cached), and mutant outputs."""
        if self._cases is None:
            cases = self.make_cases()
            for c in cases:
                c.expected = self.reference(*copy.deepcopy(c.args))
                for i, d in enumerate(self.diagnoses):
                    if d.mutant is not None and (not d.only or c.name in d.only):
                        try:
                            self._mutants[(c.name, i)] = d.mutant(*copy.deepcopy(c.args))
                        except Exception:
                            self._mutants[(c.name, i)] = None
            self._cases = cases
        return self._cases

    def diagnose(self, case: Case, got, exc: BaseException | None) -> str:
        """The hint for a failed case: first matching diagnosis, else the case's, else the exercise's."""
        cmp = case.compare or self.compare
        for i, d in enumerate(self.diagnoses):
            if d.only and case.name not in d.only:
                continue
            try:
                if exc is not None:
                    if d.on_error is not None and d.on_error(case, exc):
                        return d.hint
                    continue
                if d.mutant is not None:
                    m = self._mutants.get((case.name, i))
                    if m is not None and cmp(got, m) is None:
                        return d.hint
                if d.when is not None and d.when(case, got):
                    return d.hint
            except Exception:
                continue
        return case.hint or self.fallback_hint


REGISTRY: dict[str, Exercise] = {}


def register(ex: Exercise) -> Exercise:
    """Add an exercise to the registry (ids are unique across all labs)."""
    if ex.id in REGISTRY:
        raise ValueError(f"exercise id {ex.id!r} is registered twice; ids must be unique across labs.")
    REGISTRY[ex.id] = ex
    return ex


def get_exercise(exercise_id: str) -> Exercise:
    """The registered exercise, or KeyError listing the known ids."""
    try:
        return REGISTRY[exercise_id]
    except KeyError:
        raise KeyError(f"no exercise named {exercise_id!r}; known: {', '.join(REGISTRY)}") from None


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class CaseResult:
    """The outcome of one case (for the report)."""

    name: str
    passed: bool
    reason: str = ""
    hint: str = ""
    inputs: str = ""
    expected: str = ""
    got: str = ""


@dataclass
class CheckResult:
    """Result of checking one exercise.

    status is one of "passed", "failed", "not attempted", "error", "timeout"; points are all-or-nothing
    (max_points when passed, else 0); feedback is a one-paragraph explanation (reason and hint).
    """

    id: str
    status: str
    points: float
    max_points: float
    feedback: str = ""
    cases: list = field(default_factory=list, repr=False)
    stdout: str = field(default="", repr=False)

    @property
    def passed(self) -> bool:
        """True when every case passed."""
        return self.status == "passed"

    def to_dict(self) -> dict:
        """JSON-ready dict: id, passed, status, points, max_points, feedback."""
        return {"id": self.id, "passed": self.passed, "status": self.status, "points": self.points,
                "max_points": self.max_points, "feedback": self.feedback}

    def to_full_dict(self) -> dict:
        """Everything, including per-case results and captured output (for passing between processes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CheckResult:
        """Inverse of :meth:`to_full_dict`."""
        d = dict(d)
        d["cases"] = [CaseResult(**c) for c in d.get("cases", [])]
        return cls(**d)

    def _repr_pretty_(self, p, cycle):  # one line under the printed report in a notebook
        p.text(f"CheckResult({self.id!r}: {self.status}, {self.points:g}/{self.max_points:g} points)")


# ---------------------------------------------------------------------------------------------------
# Running learner code


class BoundedWriter(io.TextIOBase):
    """A text sink that keeps the first ``limit`` characters and counts (but drops) the rest."""

    def __init__(self, limit: int = OUTPUT_LIMIT):
        self.limit, self.parts, self.kept, self.dropped = limit, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, s) -> int:
        s = str(s)
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(s[:room])
            self.kept += min(room, len(s))
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def getvalue(self) -> str:
        text = "".join(self.parts)
        return text + (f"\n... [{self.dropped} more characters of output dropped]" if self.dropped else "")


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise GradingTimeout after ``seconds`` (SIGALRM; a no-op outside the main thread or on Windows)."""
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _alarm(signum, frame):
        raise GradingTimeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) — a function must return its result, not exit"
    if isinstance(exc, KeyboardInterrupt):
        return "was interrupted (KeyboardInterrupt)"
    tb = traceback.extract_tb(exc.__traceback__)
    learner = [f for f in tb if "quantlab" not in f.filename.replace("\\", "/").split("/")[-3:-1]]
    where = f" (line {learner[-1].lineno})" if learner else ""
    return f"raised {type(exc).__name__}: {exc}{where}"


def run_exercise(fn: Callable, exercise_id: str | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 output_limit: int = OUTPUT_LIMIT) -> CheckResult:
    """Run every case of the exercise on ``fn`` and return a :class:`CheckResult` (never raises).

    Each case gets deep copies of its inputs (and fails if ``fn`` mutated them). All cases together run
    under ``timeout`` seconds (SIGALRM, main thread only). Learner printing is captured, kept up to
    ``output_limit`` characters.

    >>> run_exercise(lambda r, s, z, q_min, q_max: 0, "quantize").status
    'failed'
    """
    try:
        return _run(fn, exercise_id, timeout, output_limit)
    except BaseException as e:  # noqa: BLE001 - the grader must never raise into the notebook
        if isinstance(e, KeyboardInterrupt):
            raise
        name = exercise_id or getattr(fn, "__name__", "?")
        return CheckResult(name, "error", 0, REGISTRY[name].points if name in REGISTRY else 0,
                           f"internal grader error: {type(e).__name__}: {e}")


def _run(fn, exercise_id, timeout, output_limit) -> CheckResult:
    name = exercise_id or getattr(fn, "__name__", None)
    if name not in REGISTRY:
        known = ", ".join(REGISTRY)
        return CheckResult(str(name), "error", 0, 0,
                           f"check() found no exercise named {name!r}. Pass the function itself, e.g. "
                           f"check(quantize); known exercises: {known}.")
    ex = REGISTRY[name]
    if not callable(fn):
        return CheckResult(name, "error", 0, ex.points,
                           f"{name} is not a function; define it with `def {name}(...)`.")
    cases = ex.prepared_cases()
    out = BoundedWriter(output_limit)
    results: list[CaseResult] = []
    status, first_fail = "passed", None
    deadline = time.monotonic() + timeout if timeout else None
    for case in cases:
        args = copy.deepcopy(case.args)
        got, exc, reason = None, None, None
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            status, reason = "timeout", f"ran out of time ({timeout:g} s for all cases)"
        else:
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), time_limit(remaining):
                    got = fn(*args)
            except GradingTimeout:
                status, reason = "timeout", f"did not finish within {timeout:g} s (an endless loop?)"
            except NotImplementedError as e:
                if not results:  # the stub: nothing implemented yet
                    return CheckResult(name, "not attempted", 0, ex.points,
                                       f"{name} still raises NotImplementedError: write your code between "
                                       "# YOUR CODE HERE and # END YOUR CODE.", [], out.getvalue())
                exc = e
            except BaseException as e:  # noqa: BLE001 - SystemExit included
                if isinstance(e, KeyboardInterrupt):
                    raise
                exc = e
        if reason is None:
            if exc is not None:
                reason = _describe_exc(exc)
            elif changed := [i for i, (a, b) in enumerate(zip(args, case.args, strict=False))
                             if not _equal_inputs(a, b)]:
                reason = (f"modified its input (argument {changed[0] + 1}) in place; work on a new array "
                          "(e.g. r / s instead of r /= s)")
            else:
                try:
                    reason = (case.compare or ex.compare)(got, case.expected)
                except Exception as e:  # a comparator choking on exotic output
                    reason = f"returned something that could not be compared ({type(e).__name__}: {e})"
        ok = reason is None
        cr = CaseResult(case.name, ok)
        if not ok:
            cr.reason = reason
            cr.hint = "" if status == "timeout" else ex.diagnose(case, got, exc)
            cr.inputs = ", ".join(short_repr(a) for a in case.args)
            cr.expected = short_repr(case.expected)
            cr.got = short_repr(got) if exc is None and status != "timeout" else "-"
            if status == "passed":
                status = "failed"
            if first_fail is None:
                first_fail = cr
        results.append(cr)
        if status == "timeout":
            break
    n_ok = sum(r.passed for r in results)
    if status == "passed":
        feedback = f"all {len(cases)} cases passed"
    else:
        feedback = f"{n_ok}/{len(cases)} cases passed; case '{first_fail.name}': {first_fail.reason}"
        if first_fail.hint:
            feedback += f". Hint: {first_fail.hint}"
    return CheckResult(name, status, ex.points if status == "passed" else 0, ex.points, feedback, results,
                       out.getvalue())


# ---------------------------------------------------------------------------------------------------
# The notebook entry point


def format_report(res: CheckResult, n_cases: int | None = None) -> str:
    """The text report printed by :func:`check`."""
    lines = []
    icon = {"passed": "✔", "not attempted": "·", "timeout": "⏱"}.get(res.status, "✘")
    if res.cases:
        lines.append(f"{res.id}:")
        lines.extend(f"  {'✔' if c.passed else '✘'} {c.name}" for c in res.cases)
        if n_cases and len(res.cases) < n_cases:
            lines.append(f"  – {n_cases - len(res.cases)} more case(s) not run")
    fail = next((c for c in res.cases if not c.passed), None)
    if fail is not None:
        lines.append(f"First failing case: '{fail.name}'")
        lines.append(f"  inputs:   {fail.inputs}")
        lines.append(f"  expected: {fail.expected}")
        lines.append(f"  got:      {fail.got}")
        lines.append(f"  problem:  {fail.reason}")
        if fail.hint:
            lines.append(f"  hint:     {fail.hint}")
    elif res.status != "passed":
        lines.append(res.feedback)
    if res.stdout.strip():
        lines.append("  your printed output:")
        lines.extend("    " + ln for ln in res.stdout.strip().splitlines()[:20])
    lines.append(f"{icon} {res.id}: {res.status} — {res.points:g}/{res.max_points:g} points")
    return "\n".join(lines)


def check(fn: Callable, exercise_id: str | None = None,
          timeout: float | None = DEFAULT_TIMEOUT) -> CheckResult:
    """Check an exercise in a notebook: print a pass/fail report with a hint, return a CheckResult.

    The exercise is found by ``fn.__name__`` (or ``exercise_id``). Never raises; a stub that still raises
    NotImplementedError is reported "not attempted".

    >>> from quantlab.grading import check
    >>> result = check(quantize)          # doctest: +SKIP
    """
    res = run_exercise(fn, exercise_id, timeout)
    n = len(REGISTRY[res.id].prepared_cases()) if res.id in REGISTRY and res.cases else None
    try:
        print(format_report(res, n))
    except Exception:  # a learner who replaced sys.stdout with something odd
        pass
    return res

r"""The runner: every case of an exercise on a learner's function -> a :class:`CheckResult`; ``check(fn)``.

Each case gets deep copies of its inputs (and fails if ``fn`` mutated them); all cases together run under a
time limit; printing is captured and bounded; the functions the exercise forbids refuse while ``fn`` runs
(a forbidden call fails the exercise with that reason and stops it). The hint of a failed case comes from,
in order: a forbidden call, a NumPy/torch type mix-up, the exercise's diagnoses, the case's own hint, the
exercise's fallback. :func:`run_exercise` never raises.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

from .compare import equal_inputs
from .exercise import REGISTRY, Case, Exercise, quiet
from .forbid import Guard
from .hints import precision_hint, type_mixup_hint
from .report import CaseResult, CheckResult, format_report, short_repr
from .sandbox import OUTPUT_LIMIT, BoundedWriter, call_learner, describe_exc

__all__ = ["run_exercise", "check", "DEFAULT_TIMEOUT", "STATUSES"]

#: Default time limit (seconds) for all the cases of one exercise.
DEFAULT_TIMEOUT = 10.0

STATUSES = ("passed", "failed", "not attempted", "error", "timeout")


def run_exercise(fn: Callable, exercise_id: str | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 output_limit: int = OUTPUT_LIMIT, partial: bool = False) -> CheckResult:
    """Run every case of the exercise on ``fn`` and return a :class:`CheckResult` (never raises).

    All cases together run under ``timeout`` seconds (SIGALRM, main thread only). Learner printing is kept
    up to ``output_limit`` characters. Points are all-or-nothing, or with ``partial=True`` in proportion to
    the cases passed (0 after a forbidden call).

    >>> run_exercise(lambda r, s, z, q_min, q_max: 0, "quantize").status
    'failed'
    """
    try:
        return _run(fn, exercise_id, timeout, output_limit, partial)
    except BaseException as e:  # noqa: BLE001 - the grader must never raise into the notebook
        if isinstance(e, KeyboardInterrupt):
            raise
        name = exercise_id or getattr(fn, "__name__", "?")
        return CheckResult(name, "error", 0, REGISTRY[name].points if name in REGISTRY else 0,
                           f"internal grader error: {type(e).__name__}: {e}")


def _lookup(fn, exercise_id) -> tuple[str, Exercise | None, CheckResult | None]:
    name = exercise_id or getattr(fn, "__name__", None)
    if name not in REGISTRY:
        return str(name), None, CheckResult(
            str(name), "error", 0, 0, f"check() found no exercise named {name!r}. Pass the function itself, "
            f"e.g. check(quantize); known exercises: {', '.join(REGISTRY)}.")
    ex = REGISTRY[name]
    if not callable(fn):
        return name, ex, CheckResult(name, "error", 0, ex.points,
                                     f"{name} is not a function; define it with `def {name}(...)`.")
    return name, ex, None


def _judge(ex: Exercise, fn, case: Case, args: tuple, call) -> tuple[str | None, str]:
    """(reason, hint) for one finished call; reason None when the case passed."""
    if call.forbidden:
        return call.forbidden, ""
    reason = None
    if call.exc is not None:
        reason = describe_exc(call.exc)
    elif changed := [i for i, (a, b) in enumerate(zip(args, case.args, strict=False)) if not equal_inputs(a, b)]:
        return (f"modified its input (argument {changed[0] + 1}) in place; work on a new array "
                "(e.g. r / s instead of r /= s)"), ""
    else:
        try:
            with quiet():
                reason = (case.compare or ex.compare)(call.got, case.expected)
        except Exception as e:  # a comparator choking on exotic output
            reason = f"returned something that could not be compared ({type(e).__name__}: {e})"
    if reason is None:
        return None, ""
    with quiet():
        hint = (type_mixup_hint(fn, case.args, call.got, call.exc, case.hidden, reason)
                or ex.match(case, call.got, call.exc) or precision_hint(fn, case.args, call.got, case.expected)
                or case.hint or ex.fallback_hint)
    if case.hidden:  # its values, and a learner's error message that may quote them, stay private
        reason = f"raised {type(call.exc).__name__}" if call.exc is not None else "wrong result"
    return reason, hint


def _case_result(case: Case, reason: str | None, hint: str, got, show_got: bool) -> CaseResult:
    cr = CaseResult(case.name, reason is None, hidden=case.hidden)
    if reason is not None:
        cr.reason, cr.hint = reason, hint
        if not case.hidden:
            cr.inputs = ", ".join(short_repr(a) for a in case.args)
            cr.expected = short_repr(case.expected)
            cr.got = short_repr(got) if show_got else "-"
    return cr


def _run(fn, exercise_id, timeout, output_limit, partial) -> CheckResult:
    name, ex, early = _lookup(fn, exercise_id)
    if early is not None:
        return early
    cases = ex.prepared_cases()  # expected outputs and mutants: computed before any learner code runs
    guard = Guard(name, ex.forbids, fn) if ex.forbids else None
    out = BoundedWriter(output_limit)
    results: list[CaseResult] = []
    status, forbidden = "passed", False
    deadline = time.monotonic() + timeout if timeout else None
    for case in cases:
        args = copy.deepcopy(case.args)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            status = "timeout"
            results.append(CaseResult(case.name, False, f"ran out of time ({timeout:g} s for all cases)",
                                      hidden=case.hidden))
            break
        call = call_learner(fn, args, out, remaining, guard)
        if call.timed_out:
            status = "timeout"
            results.append(_case_result(case, f"did not finish within {timeout:g} s (an endless loop?)", "",
                                        None, False))
            break
        if isinstance(call.exc, NotImplementedError) and not results and not call.forbidden:
            return CheckResult(name, "not attempted", 0, ex.points,
                               f"{name} still raises NotImplementedError: write your code between "
                               "# YOUR CODE HERE and # END YOUR CODE.", [], out.getvalue(), 0, len(cases))
        reason, hint = _judge(ex, fn, case, args, call)
        results.append(_case_result(case, reason, hint, call.got, call.exc is None))
        if reason is not None and status == "passed":
            status = "failed"
        if call.forbidden:
            forbidden = True
            break
    return _result(name, ex, status, results, len(cases), out.getvalue(), partial and not forbidden)


def _result(name, ex, status, results, n_cases, stdout, partial) -> CheckResult:
    n_ok = sum(r.passed for r in results)
    if status == "passed":
        points, feedback = ex.points, f"all {n_cases} cases passed"
    else:
        first = next(r for r in results if not r.passed)
        points = round(ex.points * n_ok / n_cases, 2) if partial else 0
        if first.hidden:
            feedback = f"{n_ok}/{n_cases} cases passed; {first.name} failed ({first.reason})"
        else:
            feedback = f"{n_ok}/{n_cases} cases passed; case '{first.name}': {first.reason}"
        if first.hint:
            feedback += f". Hint: {first.hint}"
    return CheckResult(name, status, points, ex.points, feedback, results, stdout, n_ok, n_cases)


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

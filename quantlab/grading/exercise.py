r"""The exercise model: cases, diagnoses (hints), what an exercise forbids, and the registry.

An :class:`Exercise` is a function name (its id), points and a list of :class:`Case` s (inputs; the
expected output comes from the exercise's reference, computed once before any learner code runs). When
a case fails, the :class:`Diagnosis` list is tried in order — a *mutant* (a known wrong solution: does the
learner's output equal it?) or a *predicate* on the learner's output or exception — and the first match
gives the hint. ``forbids`` lists the dotted names of the library's and torch's implementations of the
same exercise, which the learner's function may not call while graded (see :mod:`.forbid`).
Instructor-private cases are added with :func:`extra_cases`; they are *hidden* in the feedback.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

__all__ = ["Case", "Diagnosis", "Exercise", "REGISTRY", "register", "get_exercise", "extra_cases", "quiet"]


@contextlib.contextmanager
def quiet():
    """No warnings and no NumPy floating-point messages: the grader's own computations (references, known
    wrong solutions, hint predicates) must not print into the learner's notebook.

    >>> with quiet():
    ...     print(np.float64(1.0) / 0.0)
    inf
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


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
    hidden: an instructor-private case: feedback names it "hidden case k" and shows no inputs or values.
    expected: leave None to take it from the exercise's reference (the usual way).
    """

    name: str
    args: tuple
    expected: Any = None
    hint: str = ""
    compare: Callable | None = None
    hidden: bool = False


@dataclass
class Exercise:
    """An exercise: id (= the function's name), lab, points, reference, cases, diagnoses, comparator.

    ``make_cases()`` builds the cases (inputs only); expected outputs come from ``reference`` and are
    computed once, before any learner code runs (see :meth:`prepared_cases`). ``forbids``: dotted names
    the learner's function may not call, e.g. ``("quantlab.linear.quantize", "torch.quantize_per_tensor")``.
    """

    id: str
    lab: str
    points: float
    reference: Callable
    make_cases: Callable[[], list]
    compare: Callable
    diagnoses: list = field(default_factory=list)
    fallback_hint: str = ""
    forbids: tuple = ()
    _cases: list | None = field(default=None, repr=False)
    _extra: list = field(default_factory=list, repr=False)
    _mutants: dict = field(default_factory=dict, repr=False)

    def _prepare(self, c: Case) -> Case:
        with quiet():  # a known wrong solution dividing by zero on the edge case warns: not the learner's business
            if c.expected is None:
                c.expected = self.reference(*copy.deepcopy(c.args))
            for i, d in enumerate(self.diagnoses):
                if d.mutant is not None and (not d.only or c.name in d.only):
                    try:
                        self._mutants[(c.name, i)] = d.mutant(*copy.deepcopy(c.args))
                    except Exception:
                        self._mutants[(c.name, i)] = None
        return c

    def prepared_cases(self) -> list[Case]:
        """The shipped cases, then any hidden ones, with ``expected`` filled in (cached) and mutant outputs."""
        if self._cases is None:
            self._cases = [self._prepare(c) for c in self.make_cases()]
        return self._cases + self._extra

    def add_hidden_cases(self, cases) -> None:
        """Append instructor-private cases (renamed "hidden case k"; expected from the reference if None)."""
        self.prepared_cases()
        for c in cases:
            if not isinstance(c, Case):
                raise TypeError(f"extra cases for {self.id!r} must be Case objects; got {type(c).__name__}.")
            k = len(self._extra) + 1
            self._extra.append(self._prepare(replace(c, name=f"hidden case {k}", hidden=True)))

    def clear_hidden_cases(self) -> None:
        """Remove the cases added by :meth:`add_hidden_cases`."""
        for c in self._extra:
            for key in [k for k in self._mutants if k[0] == c.name]:
                del self._mutants[key]
        self._extra = []

    def match(self, case: Case, got, exc: BaseException | None) -> str | None:
        """The hint of the first diagnosis that applies to a failed case, or None."""
        with quiet():
            return self._match(case, got, exc)

    def _match(self, case: Case, got, exc: BaseException | None) -> str | None:
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
        return None

    def diagnose(self, case: Case, got, exc: BaseException | None) -> str:
        """The hint for a failed case: first matching diagnosis, else the case's, else the exercise's."""
        return self.match(case, got, exc) or case.hint or self.fallback_hint


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


@contextlib.contextmanager
def extra_cases(mapping: dict):
    """Add instructor-private cases ``{exercise id: [Case, ...]}`` for the duration of the block.

    Raises KeyError for an unknown exercise id and TypeError for anything but a list of Case objects.
    """
    for k, cases in mapping.items():
        get_exercise(k)
        if not isinstance(cases, (list, tuple)):
            raise TypeError(f"EXTRA_CASES[{k!r}] must be a list of Case objects; got {type(cases).__name__}.")
    try:
        for k, cases in mapping.items():
            REGISTRY[k].add_hidden_cases(cases)
        yield
    finally:
        for k in mapping:
            REGISTRY[k].clear_hidden_cases()

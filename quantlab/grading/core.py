r"""A stable facade: the names exercise modules (``checks_<topic>.py``) import.

The grading machinery lives in one module per concern: :mod:`.compare` (outputs vs expected),
:mod:`.exercise` (cases, hints, what an exercise forbids, the registry), :mod:`.sandbox` and :mod:`.forbid`
(time limit, output capture, forbidden calls), :mod:`.runner` (``run_exercise``, ``check``), :mod:`.report`
(results and the printed report) and :mod:`.cli` (``python -m quantlab.grade``). Exercise modules keep
writing ``from .core import Case, Diagnosis, Exercise, compare_array, register, to_array``.
"""

from .compare import compare_array, compare_scalar, compare_tuple, equal_inputs, to_array
from .exercise import REGISTRY, Case, Diagnosis, Exercise, extra_cases, get_exercise, register
from .forbid import ForbiddenCall, Guard
from .hints import type_mixup_hint
from .report import CaseResult, CheckResult, format_report, plain, short_repr, wrap
from .runner import DEFAULT_TIMEOUT, STATUSES, check, run_exercise
from .sandbox import OUTPUT_LIMIT, BoundedWriter, GradingTimeout, describe_exc, time_limit

_equal_inputs = equal_inputs  # the old private name

__all__ = [
    "Case", "Diagnosis", "Exercise", "CaseResult", "CheckResult", "REGISTRY", "register", "get_exercise",
    "run_exercise", "check", "format_report", "to_array", "compare_array", "compare_scalar", "compare_tuple",
    "short_repr", "plain", "wrap", "extra_cases", "ForbiddenCall", "Guard", "type_mixup_hint",
    "DEFAULT_TIMEOUT", "STATUSES", "OUTPUT_LIMIT", "BoundedWriter", "GradingTimeout", "describe_exc",
    "time_limit", "equal_inputs",
]

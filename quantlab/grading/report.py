r"""What a learner reads: result types, values printed without NumPy type noise, the ``check()`` report.

Values are shown as a learner would write them: ``3``, not ``np.int64(3)``; ``0.013``, not
``np.float32(0.013)``; an array as its dtype, its shape when it is not 1-D and at most six of its values
to 4 significant digits (``float32 array of shape (4, 3, 2, 2) [0.1257, -0.1321, 0.6404, ..., 1.96]``).
Long lines are wrapped at word boundaries (never inside a word), so a hint reads the same in a notebook,
a terminal and a CSV.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["CaseResult", "CheckResult", "plain", "short_repr", "wrap", "format_report", "REPORT_WIDTH"]

#: Width (characters) the report's lines are wrapped to.
REPORT_WIDTH = 96
#: Arrays longer than this show their first and last three values only.
SHOW_ALL = 8


# ---------------------------------------------------------------------------------------------------
# Values


def plain(v, digits: int = 7) -> str:
    """One number as a learner writes it: ``3``, ``0.013``, ``2.0``, ``True`` (no ``np.int64(...)``).

    Floats keep ``digits`` significant digits (7: float32's precision).

    >>> plain(np.int64(3)), plain(np.float32(0.013)), plain(2.0), plain(np.float64(1e-10)), plain(np.bool_(1))
    ('3', '0.013', '2.0', '1e-10', 'True')
    """
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return str(float(v))
        s = f"{float(v):.{digits}g}"
        return s + ".0" if s.lstrip("-").isdigit() else s
    return repr(v)


def _values(flat: np.ndarray) -> str:
    items = flat.tolist()
    if len(items) > SHOW_ALL:
        items = [*items[:3], ..., *items[-3:]]
    return "[" + ", ".join("..." if v is ... else plain(v, 4) for v in items) + "]"


def _array(a: np.ndarray, kind: str) -> str:
    if a.ndim == 0:
        return plain(a.item()) if a.dtype.kind in "biuf" else repr(a.item())
    if a.dtype.kind not in "biuf":
        return f"{a.dtype} {kind} of shape {a.shape}"
    shape = "" if a.ndim == 1 else f" of shape {a.shape}"
    return f"{a.dtype} {kind}{shape} {_values(a.reshape(-1))}"


def short_repr(x, limit: int = 160) -> str:
    """A one-line, type-noise-free description of an input or output, cut to ``limit`` characters.

    >>> short_repr(np.arange(12, dtype=np.int32))
    'int32 array [0, 1, 2, ..., 9, 10, 11]'
    >>> short_repr((np.float32(0.5), np.int64(3)))
    '(0.5, 3)'
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        try:
            s = _array(x.detach().cpu().numpy(), "tensor")
        except Exception:  # quantized or exotic tensors
            s = f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    elif isinstance(x, np.ndarray):
        s = _array(x, "array")
    elif isinstance(x, (bool, int, float, np.generic)) and not isinstance(x, (str, bytes)):
        s = plain(x) if isinstance(x, (bool, int, float, np.number, np.bool_)) else repr(x)
    elif isinstance(x, (tuple, list)):
        inner = ", ".join(short_repr(v, limit) for v in x)
        s = f"({inner}{',' if len(x) == 1 else ''})" if isinstance(x, tuple) else f"[{inner}]"
    else:
        try:
            s = repr(x)
        except Exception:
            s = f"<{type(x).__name__}>"
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3].rsplit(" ", 1)[0] + " ..."


def wrap(text: str, width: int = REPORT_WIDTH, indent: str = "", first: str = "") -> str:
    """Wrap ``text`` at word boundaries (a word longer than the line stays whole, never split).

    >>> print(wrap("use np.round(r / s + z) then clip", 16, indent="  "))
    use np.round(r /
      s + z) then
      clip
    """
    return textwrap.fill(" ".join(str(text).split()), width, initial_indent=first, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class CaseResult:
    """The outcome of one case (for the report). A hidden case keeps its inputs and outputs out of it."""

    name: str
    passed: bool
    reason: str = ""
    hint: str = ""
    inputs: str = ""
    expected: str = ""
    got: str = ""
    hidden: bool = False


@dataclass
class CheckResult:
    """Result of checking one exercise.

    status is one of "passed", "failed", "not attempted", "error", "timeout". points are all-or-nothing
    (max_points when passed, else 0) unless the exercise was run with ``partial=True``: then
    max_points * n_passed / n_cases (0 after a forbidden call). feedback: one paragraph, reason and hint.
    """

    id: str
    status: str
    points: float
    max_points: float
    feedback: str = ""
    cases: list = field(default_factory=list, repr=False)
    stdout: str = field(default="", repr=False)
    n_passed: int = 0
    n_cases: int = 0

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
# The report printed by check()


def _field(label: str, text: str) -> str:
    head = f"  {label + ':':<10}"
    return wrap(text, first=head, indent=" " * len(head))


def format_report(res: CheckResult, n_cases: int | None = None) -> str:
    """The text report printed by :func:`~quantlab.grading.check`: one mark per case, the first failure.

    A hidden (instructor-private) case shows only its number, the problem and the hint.
    """
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
        if not fail.hidden:
            lines += [_field("inputs", fail.inputs), _field("expected", fail.expected), _field("got", fail.got)]
        lines.append(_field("problem", fail.reason))
        if fail.hint:
            lines.append(_field("hint", fail.hint))
    elif res.status != "passed":
        lines.append(wrap(res.feedback))
    if res.stdout.strip():
        lines.append("  your printed output:")
        lines.extend("    " + ln for ln in res.stdout.strip().splitlines()[:20])
    lines.append(f"{icon} {res.id}: {res.status} — {res.points:g}/{res.max_points:g} points")
    return "\n".join(lines)

r"""Integer-engine check: requant_multiplier (lab 04, the integer pipeline).

Reference written here from CONTRIBUTING.md: for 0 < M < 1, M ≈ M0 * 2^-n with integers
2^30 <= M0 < 2^31, n >= 0 and M0 = round(M * 2^n) for the largest such n.
"""

from __future__ import annotations

import math

from .core import Case, Diagnosis, Exercise, compare_scalar, compare_tuple, register


def requant_multiplier_reference(M: float) -> tuple[int, int]:
    r"""(M0, n) with M ≈ M0 * 2^-n, 2^30 <= M0 < 2^31, M0 = round(M * 2^n) (half to even).

    With M = m * 2^e (math.frexp, 0.5 <= m < 1): n = 31 - e, M0 = round(m * 2^31); if that rounds up
    to 2^31, one bit less: n = 30 - e, M0 = 2^30.

    >>> requant_multiplier_reference(0.5)
    (1073741824, 31)
    """
    m, e = math.frexp(float(M))
    n = 31 - e
    M0 = round(m * 2**31)
    if M0 == 2**31:
        n, M0 = n - 1, 2**30
    return int(M0), int(n)


def _cases():
    return [
        Case("M = 0.5", (0.5,)),
        Case("M = 0.0123", (0.0123,)),
        Case("M = 0.7071", (0.7071,)),
        Case("M = 3.1e-5 (small)", (3.1e-5,)),
        Case("M = 1 - 2^-40 (rounds up to 2^31)", (1 - 2**-40,),
             hint="if round(M * 2^n) reaches 2^31, use one bit less: n - 1 and M0 = 2^30."),
    ]


_cmp_int = lambda got, exp: compare_scalar(got, exp, integral=True)  # noqa: E731


def _cmp(got, expected):
    return compare_tuple(got, expected, (_cmp_int, _cmp_int), ("M0", "n"))


def _ints(got):
    return int(float(got[0])), int(float(got[1]))


def _mutant_trunc(M):
    m, e = math.frexp(float(M))
    return int(m * 2**31), 31 - e


register(Exercise(
    id="requant_multiplier", lab="04", points=2, reference=requant_multiplier_reference, make_cases=_cases,
    compare=_cmp,
    diagnoses=[
        Diagnosis("M0 overflowed: it must stay below 2^31 (it is an int32 multiplier). When round(M * 2^n) "
                  "reaches 2^31, take n - 1 and M0 = 2^30.", when=lambda c, got: _ints(got)[0] >= 2**31),
        Diagnosis("n has the wrong sign: M ≈ M0 * 2^-n with n >= 0 (a right shift by n).",
                  when=lambda c, got: _ints(got)[1] < 0 or _ints(got)[1] == -c.expected[1] != 0),
        Diagnosis("M0 is not normalised: pick the largest n with 2^30 <= round(M * 2^n) < 2^31 so M0 keeps "
                  "31 significant bits.", when=lambda c, got: _ints(got)[0] < 2**30),
        Diagnosis("you truncated (int(...) or floor) instead of rounding: M0 = round(M * 2^n).",
                  mutant=_mutant_trunc),
    ],
    fallback_hint="n = the largest shift with 2^30 <= round(M * 2^n) < 2^31, M0 = round(M * 2^n).",
    forbids=("quantlab.engine.requant_multiplier",),  # the library's own (lab 04's setup imports it)
))

r"""Converting and comparing a learner's output with the expected one.

A comparator ``cmp(got, expected)`` returns None when ``got`` matches, else a one-line reason a learner
can act on ("returned shape (3,), expected shape (7,)", "values differ at 2 of 7 positions ..."). Numbers in
reasons are printed plainly (``3``, not ``np.int64(3)``).
"""

from __future__ import annotations

import numpy as np

from .report import plain

__all__ = ["to_array", "compare_array", "compare_scalar", "compare_tuple", "equal_inputs"]


def _exact_ints(x) -> np.ndarray | None:
    """A (nested) list of Python ints as an exact int64/uint64 array, or None when it is not one.

    NumPy turns ``[2**63, 5]`` into float64 (int64 and uint64 promote to float), which rounds 64-bit words.
    """
    obj = np.empty(0, dtype=object)
    try:
        obj = np.asarray(x, dtype=object)
    except Exception:
        return None
    vals = list(obj.flat)
    if obj.size == 0 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                for v in vals):
        return None
    lo, hi = int(min(vals)), int(max(vals))
    if -2**63 <= lo and hi < 2**63:
        return obj.astype(np.int64)
    if 0 <= lo and hi < 2**64:
        return obj.astype(np.uint64)
    return None


def to_array(x) -> np.ndarray:
    """Learner output -> NumPy array (torch tensors, lists, scalars); raises TypeError when impossible.

    A list of Python ints stays exact, also for 64-bit words above 2^63 (NumPy alone would give float64).

    >>> to_array([1, 2]).tolist()
    [1, 2]
    >>> to_array([2**64 - 1, 5]).dtype
    dtype('uint64')
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        try:
            x = x.detach().cpu().numpy()
        except Exception as e:  # quantized, sparse or otherwise exotic tensors
            raise TypeError(f"returned a torch tensor of dtype {x.dtype} that has no NumPy equivalent "
                            f"({e})") from None
    if x is None:
        raise TypeError("returned None — did you forget `return`?")
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and such
        raise TypeError(f"returned {type(x).__name__}, which is not an array ({e})") from None
    if isinstance(x, (list, tuple)) and a.dtype.kind in "fO":
        exact = _exact_ints(x)
        a = exact if exact is not None else a
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"returned {type(x).__name__} with dtype {a.dtype}, expected numbers")
    return a


def _first_diff(got: np.ndarray, expected: np.ndarray, bad: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f" (first at index {idx})" if got.ndim else ""
    return (f"values differ at {int(bad.sum())} of {bad.size} position(s){where}: "
            f"expected {plain(expected[idx])}, got {plain(got[idx])}")


def compare_array(got, expected, *, integral: bool = False, floating: bool = False,
                  rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """Compare an array-like output with ``expected``: shape, finiteness, dtype kind, then values.

    integral: values must be whole numbers (any int or float dtype) and equal exactly.
    floating: the dtype must be floating point (values compared with rtol/atol).

    >>> compare_array(np.array([1.0, 2.5]), np.array([1.0, 2.0]))
    'values differ at 1 of 2 position(s) (first at index (1,)): expected 2.0, got 2.5'
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
    """Compare a single number (Python/NumPy scalar, 0-d or 1-element array or tensor).

    >>> compare_scalar(np.int64(4), 3, integral=True)
    'expected 3, got 4'
    """
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
        return f"returned {plain(v)}, expected a finite number"
    if integral:
        if v != round(v):
            return f"returned {plain(v)}, expected a whole number"
        return None if int(round(v)) == int(expected) else f"expected {int(expected)}, got {plain(v)}"
    return None if np.isclose(v, expected, rtol=rtol, atol=atol) else f"expected {plain(expected)}, got {plain(v)}"


def compare_tuple(got, expected, comparators, names) -> str | None:
    """Compare a tuple output element-wise, e.g. ``(s, z)``: each element with its own comparator."""
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        return f"returned {type(got).__name__}, expected a tuple ({', '.join(names)})"
    for g, e, cmp, name in zip(got, expected, comparators, names, strict=False):
        reason = cmp(g, e)
        if reason is not None:
            return f"{name}: {reason}"
    return None


def equal_inputs(a, b) -> bool:
    """True when an input is unchanged (same type, dtype, shape and values, NaN-aware)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(equal_inputs(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_inputs(a[k], b[k]) for k in a)
    try:
        x, y = to_array(a), to_array(b)
    except TypeError:
        return a == b
    same = bool(np.array_equal(x, y, equal_nan=x.dtype.kind == "f"))
    return x.dtype == y.dtype and x.shape == y.shape and same

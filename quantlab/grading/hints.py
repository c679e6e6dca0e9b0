r"""Hints every exercise shares: NumPy/torch type mix-ups.

A learner who converts *some* inputs to tensors (``s * (torch.as_tensor(q) - z)`` with ``s`` a NumPy
array) gets ``TypeError: unsupported operand type(s) for *: 'numpy.ndarray' and 'Tensor'`` — the formula
is right, the types are not. :func:`type_mixup_hint` recognises such errors (and a returned tensor that
cannot be compared or lost precision) and says which inputs arrived as NumPy arrays, by parameter name,
and how to convert them consistently.
"""

from __future__ import annotations

import inspect

import numpy as np

__all__ = ["is_type_mixup", "type_mixup_hint", "precision_hint", "describe_inputs"]

_MIXUP_ATTR = ("'Tensor' object has no attribute", "'numpy.ndarray' object has no attribute")


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def is_type_mixup(exc: BaseException | None) -> bool:
    """True for the errors NumPy and torch raise when they meet each other's types.

    >>> is_type_mixup(TypeError("unsupported operand type(s) for *: 'numpy.ndarray' and 'Tensor'"))
    True
    >>> is_type_mixup(TypeError("unsupported operand type(s) for +: 'int' and 'str'"))
    False
    """
    if isinstance(exc, AttributeError):
        return any(m in str(exc) for m in _MIXUP_ATTR)
    if not isinstance(exc, (TypeError, RuntimeError, ValueError)):
        return False
    msg = str(exc)
    return "Tensor" in msg and ("numpy" in msg or "ndarray" in msg or "must be Tensor, not" in msg)


def _names(fn, n: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"argument {i + 1}" for i in range(n)]


_GROUPS = {"array": ("a NumPy array", "NumPy arrays"), "npnum": ("a NumPy number", "NumPy numbers"),
           "tensor": ("a torch tensor", "torch tensors"), "num": ("a Python number", "Python numbers"),
           "other": ("another object", "other objects")}


def _kind(x, detail: bool) -> tuple[str, str]:
    """(group, description) of one input: a NumPy array, a NumPy number, a Python number, a tensor."""
    if isinstance(x, np.ndarray):
        return "array", f"{x.dtype}, shape {x.shape}" if detail else ""
    if isinstance(x, np.generic):
        return "npnum", str(x.dtype) if detail else ""
    if _is_tensor(x):
        return "tensor", str(x.dtype).replace("torch.", "") if detail else ""
    if isinstance(x, (bool, int, float)):
        return "num", type(x).__name__ if detail else ""
    return "other", type(x).__name__


def describe_inputs(fn, args: tuple, detail: bool = True) -> str:
    """Which parameter arrived as what, e.g. for ``dequantize(q, s, z)`` on the per-channel case:

    'q (int32, shape (3, 4)) and s (float32, shape (3, 1)) as NumPy arrays; z as a Python number'.
    ``detail=False`` (a hidden case) leaves out dtypes and shapes.

    >>> describe_inputs(lambda r, s: 0, (np.zeros(3, np.float32), 0.5))
    'r (float32, shape (3,)) as a NumPy array; s (float) as a Python number'
    """
    groups: dict[str, list[str]] = {}
    for name, x in zip(_names(fn, len(args)), args, strict=False):
        group, desc = _kind(x, detail)
        groups.setdefault(group, []).append(f"{name} ({desc})" if desc else name)
    parts = []
    for group, names in groups.items():
        joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"{joined} as {_GROUPS[group][len(names) > 1]}")
    return "; ".join(parts)


def _has_tensor(got) -> bool:
    if isinstance(got, (tuple, list)):
        return any(_has_tensor(g) for g in got)
    return _is_tensor(got)


def _convert(fn, args) -> str:
    names = [n for n, a in zip(_names(fn, len(args)), args, strict=False) if isinstance(a, np.ndarray)]
    example = names[0] if names else "x"
    return (f"Either stay in NumPy, or convert every array input the same way before mixing them "
            f"({example} = torch.as_tensor({example}), and the same for the others; torch.as_tensor keeps the "
            "dtype, dtype=torch.float32 would lose float64 precision), then return a NumPy array "
            "(result.numpy()) or a tensor of real numbers.")


def type_mixup_hint(fn, args: tuple, got, exc: BaseException | None, hidden: bool = False,
                    reason: str = "") -> str | None:
    """The type hint for a failed case, or None when the failure is not about NumPy vs torch types.

    It applies when ``exc`` is a NumPy/torch type error, or when ``got`` holds a torch tensor that could not
    be compared (``reason``) — a tensor returned where the cases pass arrays.
    """
    inputs = describe_inputs(fn, args, detail=not hidden)
    if exc is not None and is_type_mixup(exc):
        return (f"your code mixes NumPy arrays and torch tensors ({type(exc).__name__}); the checks pass "
                f"{inputs}. {_convert(fn, args)}")
    arrays = any(isinstance(a, (np.ndarray, np.generic)) for a in args)
    if exc is None and arrays and _has_tensor(got) and ("could not be compared" in reason or "torch" in reason):
        return (f"you returned a torch tensor the checks cannot read as numbers; the checks pass {inputs}. "
                f"{_convert(fn, args)}")
    return None


def precision_hint(fn, args: tuple, got, expected) -> str | None:
    """A low-precision tensor returned from float64 array inputs, close to but not within tolerance (or None)."""
    if not _is_tensor(got) or str(got.dtype) not in ("torch.float32", "torch.float16", "torch.bfloat16"):
        return None
    f64 = [n for n, a in zip(_names(fn, len(args)), args, strict=False)
           if isinstance(a, np.ndarray) and a.dtype == np.float64]
    try:
        close = np.allclose(got.detach().cpu().double().numpy(), np.asarray(expected, np.float64), rtol=1e-2)
    except Exception:
        return None
    if not (f64 and close):
        return None
    arrived = f"{f64[0]} arrived as a float64 NumPy array" if len(f64) == 1 else \
        f"{', '.join(f64)} arrived as float64 NumPy arrays"
    return (f"you returned a {str(got.dtype).replace('torch.', '')} tensor, but {arrived}: converting with "
            "dtype=torch.float32 (or .float()) loses precision — torch.as_tensor(x) keeps float64.")

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

__all__ = ["is_type_mixup", "type_mixup_hint", "describe_inputs"]

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


def _kind(x, detail: bool) -> tuple[str, str]:
    """(group, description) of one input: a NumPy array, a NumPy number, a Python number, a tensor."""
    if isinstance(x, np.ndarray):
        return "NumPy arrays", f"{x.dtype}, shape {x.shape}" if detail else ""
    if isinstance(x, np.generic):
        return "NumPy numbers", str(x.dtype) if detail else ""
    if _is_tensor(x):
        return "torch tensors", str(x.dtype).replace("torch.", "") if detail else ""
    if isinstance(x, (bool, int, float)):
        return "Python numbers", type(x).__name__ if detail else ""
    return "other objects", type(x).__name__


def describe_inputs(fn, args: tuple, detail: bool = True) -> str:
    """'r (float32, shape (7,)) and s (float32, shape (3, 1)) arrive as NumPy arrays; z as a Python number'.

    ``detail=False`` (a hidden case) leaves out dtypes and shapes.
    """
    groups: dict[str, list[str]] = {}
    for name, x in zip(_names(fn, len(args)), args, strict=False):
        group, desc = _kind(x, detail)
        groups.setdefault(group, []).append(f"{name} ({desc})" if desc else name)
    parts = []
    for group, names in groups.items():
        joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"{joined} as {group}")
    return "the checks pass " + "; ".join(parts)


def _has_tensor(got) -> bool:
    if isinstance(got, (tuple, list)):
        return any(_has_tensor(g) for g in got)
    return _is_tensor(got)


def type_mixup_hint(fn, args: tuple, got, exc: BaseException | None, hidden: bool = False,
                    reason: str = "") -> str | None:
    """The type hint for a failed case, or None when the failure is not about NumPy vs torch types.

    It applies when ``exc`` is a NumPy/torch type error, or when ``got`` holds a torch tensor that could not
    be compared (``reason``) — a tensor returned where the cases pass arrays.
    """
    arrays = [a for a in args if isinstance(a, (np.ndarray, np.generic))]
    convert = ("Either stay in NumPy, or convert every array input the same way before mixing them — "
               "e.g. s = torch.as_tensor(s) for each of them (torch.as_tensor keeps the dtype; "
               "dtype=torch.float32 would lose float64 precision) — and return a NumPy array "
               "(result.numpy()) or a tensor of real numbers.")
    inputs = describe_inputs(fn, args, detail=not hidden)
    if exc is not None and is_type_mixup(exc):
        return f"your code mixes NumPy arrays and torch tensors ({type(exc).__name__}): {inputs}. {convert}"
    if exc is None and _has_tensor(got) and arrays and ("could not be compared" in reason or "torch" in reason):
        return f"you returned a torch tensor that the checks cannot read as numbers; {inputs}. {convert}"
    return None

"""Argument checks shared by every module: each error names the argument and says how to fix it."""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = [
    "as_float_tensor", "check_bits", "check_qrange", "check_scale", "check_zero_point", "from_tensor",
    "check_model", "model_device", "check_same_device", "check_axis",
]


def as_float_tensor(r, name: str = "r", allow_empty: bool = False) -> torch.Tensor:
    """Return ``r`` as a finite floating-point torch tensor, or raise an error naming ``name``.

    Accepts torch tensors, NumPy arrays and Python floats/lists. Integer or boolean input is refused
    (a quantizer's input is real-valued): convert with ``r.float()`` / ``r.astype(np.float32)``.
    """
    if isinstance(r, torch.Tensor):
        t = r
    elif isinstance(r, np.ndarray):
        if r.dtype.kind not in "f":
            raise TypeError(
                f"{name} must be a floating-point array; got dtype {r.dtype}. "
                f"Convert it first, e.g. {name}.astype(np.float32)."
            )
        t = torch.from_numpy(np.ascontiguousarray(r))
    elif isinstance(r, (numbers.Real, list, tuple)) and not isinstance(r, bool):
        t = torch.as_tensor(r, dtype=torch.float32)
    else:
        raise TypeError(f"{name} must be a torch.Tensor, numpy array or number; got {type(r).__name__}.")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor; got dtype {t.dtype}. "
            f"Convert it first, e.g. {name}.float()."
        )
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); quantization needs at least one value.")
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN/inf value(s); quantization parameters would be undefined. "
            f"Find where they come from, or drop them with {name}[torch.isfinite({name})]."
        )
    return t


def from_tensor(out: torch.Tensor, like):
    """Return ``out`` as a NumPy array when ``like`` was NumPy (so NumPy users get NumPy back)."""
    if isinstance(like, np.ndarray):
        return out.detach().cpu().numpy()
    return out


def check_bits(bits, name: str = "bits", low: int = 1, high: int = 16) -> int:
    """Check a bit-width is an integer in [low, high]."""
    if isinstance(bits, bool) or not isinstance(bits, (numbers.Integral,)):
        if isinstance(bits, float) and bits.is_integer():
            bits = int(bits)
        else:
            raise TypeError(f"{name} must be an integer number of bits; got {bits!r}.")
    bits = int(bits)
    if not low <= bits <= high:
        raise ValueError(f"{name}={bits} is out of range: quantlab supports {low} to {high} bits.")
    return bits


def check_qrange(q_min, q_max) -> tuple[int, int]:
    """Check q_min < q_max are integers (e.g. from :func:`quantlab.linear.qrange`)."""
    for nm, v in (("q_min", q_min), ("q_max", q_max)):
        is_int = isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())
        if isinstance(v, bool) or not is_int:
            raise TypeError(
                f"{nm} must be an integer; got {v!r}. Use quantlab.qrange(bits) to get (q_min, q_max)."
            )
    q_min, q_max = int(q_min), int(q_max)
    if q_min >= q_max:
        raise ValueError(
            f"q_min={q_min} must be smaller than q_max={q_max}; they are the ends of the integer grid, "
            "e.g. qrange(8) = (-128, 127)."
        )
    return q_min, q_max


def check_scale(s, name: str = "s") -> torch.Tensor:
    """Check the scale s is finite and > 0 everywhere; return it as a float32 tensor."""
    t = torch.as_tensor(s, dtype=torch.float32) if not isinstance(s, torch.Tensor) else s.float()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty.")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(
            f"{name} must be finite and > 0 (it is the step between levels); got min {float(t.min()):g}. "
            "Compute it with quantlab.scale_zero_point(...)."
        )
    return t


def check_zero_point(z, q_min: int, q_max: int, name: str = "z") -> torch.Tensor:
    """Check z is integer-valued and inside [q_min, q_max]; return it as an int64 tensor."""
    t = torch.as_tensor(z) if not isinstance(z, torch.Tensor) else z
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == torch.round(t)).all()):
            raise ValueError(f"{name} must be an integer (the integer that represents r = 0); got {t}.")
    t = t.to(torch.int64)
    if bool((t < q_min).any()) or bool((t > q_max).any()):
        raise ValueError(f"{name} must lie in [q_min, q_max] = [{q_min}, {q_max}]; got {t.min()}..{t.max()}.")
    return t


# ---------------------------------------------------------------------------------------------------
# Models and devices: the one device rule (see CONTRIBUTING.md, "Devices")
#   Work where the data is: results come back on the device of the model / inputs. A CPU-only step
#   (NumPy histograms, ...) moves what it needs itself and moves results back. A model and its inputs on
#   different devices, a model split across devices, or a model without data (``meta``) is a clear error.
# ---------------------------------------------------------------------------------------------------


def check_model(model, name: str = "model"):
    """Check ``model`` is a ``torch.nn.Module`` (not None, not a state_dict); return it."""
    if not isinstance(model, torch.nn.Module):
        hint = (" It looks like a state_dict: build the model and call model.load_state_dict(...), or use "
                "quantlab.models.load_trained().") if isinstance(model, dict) else (
                " Use e.g. quantlab.models.load_trained().")
        raise TypeError(f"{name} must be a torch.nn.Module; got {type(model).__name__}.{hint}")
    return model


def model_device(model, name: str = "model") -> torch.device:
    """The one device a model's parameters and buffers live on (CPU for a model without any).

    Raises TypeError if ``model`` is not an nn.Module; ValueError, naming the layers, if its weights are
    on the ``meta`` device (no data) or split across devices.

    >>> model_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    """
    check_model(model, name)
    where: dict[torch.device, list[str]] = {}
    for full, t in list(model.named_parameters()) + list(model.named_buffers()):
        where.setdefault(t.device, []).append(full.rsplit(".", 1)[0] or full)
    if not where:
        return torch.device("cpu")
    meta = [d for d in where if d.type == "meta"]
    if meta:
        layers = sorted(set(where[meta[0]]))
        raise ValueError(
            f"{name} has no data: the weights of {_few(layers)} are on the 'meta' device. Load real weights, "
            "e.g. model.to_empty(device='cpu') then model.load_state_dict(state), or "
            "quantlab.models.load_trained()."
        )
    if len(where) > 1:
        parts = "; ".join(f"{d}: {_few(sorted(set(v)))}" for d, v in where.items())
        raise ValueError(
            f"{name} is split across devices ({parts}). Move it to one device first, e.g. "
            f"{name}.to('cuda') or {name}.to('cpu')."
        )
    return next(iter(where))


def check_same_device(model, x, name: str = "x", model_name: str = "model") -> torch.device:
    """Check the tensor ``x`` is on the model's device; return that device.

    Raises ValueError naming both devices and the fix (torch itself would say "Input type
    (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be the same").

    >>> check_same_device(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    device(type='cpu')
    """
    dev = model_device(model, model_name)
    if isinstance(x, torch.Tensor) and x.device != dev:
        raise ValueError(
            f"{name} is on {x.device} but {model_name} is on {dev}. Move one of them: "
            f"{name} = {name}.to('{dev}')  or  {model_name}.to('{x.device}')."
        )
    return dev


def _few(names, k: int = 4) -> str:
    names = [repr(n) for n in names]
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_axis(axis, ndim: int, name: str = "axis") -> int:
    """Check ``axis`` is an int in [-ndim, ndim); return it as a non-negative index.

    >>> check_axis(-1, 4)
    3
    """
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {axis!r}.")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"{name}={axis} is out of range for a tensor with {ndim} dimension(s); use "
                         f"0..{ndim - 1} (axis 0 = output channels of a weight, 1 = channels of an activation).")
    return int(axis) % ndim

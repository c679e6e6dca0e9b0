"""Argument checks shared by every module: each error names the argument and says how to fix it."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = [
    "as_float_tensor", "check_bits", "check_qrange", "check_scale", "check_zero_point", "from_tensor",
    "check_model", "model_device", "check_same_device", "check_axis",
    "check_int", "check_int_tensor", "check_positive_int", "check_positive_float", "check_images",
    "check_tensor_device", "check_broadcast",
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
    _no_meta(t, name)
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


def _no_meta(t: torch.Tensor, name: str) -> None:
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device: it has a shape but no data. Create it with real "
                         f"values, e.g. on 'cpu' or 'cuda'.")


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
    """Check the scale s is finite and > 0 everywhere; return it as a float32 tensor.

    >>> check_scale(0.5)
    tensor(0.5000)
    """
    if s is None or isinstance(s, (bool, str, bytes)):
        raise TypeError(f"{name} must be a positive number or a float tensor; got {s!r}.")
    t = torch.as_tensor(s, dtype=torch.float32) if not isinstance(s, torch.Tensor) else s.float()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty.")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(
            f"{name} must be finite and > 0 (it is the step between levels); got min {float(t.min()):g}. "
            "Compute it with quantlab.scale_zero_point(...)."
        )
    return t


def check_zero_point(z, q_min: int | None, q_max: int | None, name: str = "z") -> torch.Tensor:
    """Check z is integer-valued and inside [q_min, q_max] (bounds None: not checked); return int64.

    >>> check_zero_point(3.0, 0, 255)
    tensor(3)
    """
    if z is None or isinstance(z, (str, bytes)):
        raise TypeError(f"{name} must be an integer or an integer tensor; got {z!r}.")
    t = torch.as_tensor(z) if not isinstance(z, torch.Tensor) else z
    if t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer, not a boolean.")
    if t.is_floating_point() or t.is_complex():
        if not bool(torch.isfinite(t).all()) or not bool((t == torch.round(t)).all()):
            raise ValueError(f"{name} must be an integer (the integer that represents r = 0); got {t}. "
                             f"A fractional z shifts every value by a fraction of s: round it, e.g. round({name}).")
    t = t.to(torch.int64)
    if q_min is None or q_max is None:
        return t
    if bool((t < q_min).any()) or bool((t > q_max).any()):
        raise ValueError(f"{name} must lie in [q_min, q_max] = [{q_min}, {q_max}]; got {t.min()}..{t.max()}.")
    return t


def check_broadcast(p: torch.Tensor, r: torch.Tensor, name: str = "s", r_name: str = "r") -> torch.Tensor:
    """Check the parameter ``p`` (s or z) broadcasts against ``r`` without changing r's shape; return p on
    r's device (parameters are small: they follow the data).

    >>> check_broadcast(torch.ones(3, 1), torch.zeros(3, 4)).shape
    torch.Size([3, 1])
    """
    ok = p.ndim <= r.ndim and all(a in (1, b) for a, b in zip(reversed(p.shape), reversed(r.shape)))
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(p.shape)}, which does not broadcast against {r_name} of shape "
            f"{tuple(r.shape)}. A per-channel {name} for axis k has size C along k and 1 elsewhere, e.g. "
            f"shape (C, 1, 1, 1) for axis 0 of a conv weight: use quantlab.choose_qparams(r, bits, "
            "PerChannel(k)), or check the axis."
        )
    return p.to(r.device)


def check_int(v, name: str) -> int:
    """Check ``v`` is one integer (an int, an integer-valued float or a 0-d integer tensor); return int.

    >>> check_int(3.0, "z_x")
    3
    """
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a single integer; got a tensor of shape {tuple(v.shape)}.")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be an integer; got {v!r}.")
    if isinstance(v, numbers.Integral):
        return int(v)
    if not math.isfinite(v) or not float(v).is_integer():
        raise ValueError(f"{name} must be an integer; got {v!r}. Round it first, e.g. round({name}).")
    return int(v)


def check_int_tensor(q, name: str = "q", allow_empty: bool = False) -> torch.Tensor:
    """Check ``q`` holds integers (an integer dtype, or floats that are all whole numbers); return int64.

    NaN/inf or fractional values are a ValueError naming ``name`` (an integer grid has neither).

    >>> check_int_tensor(torch.tensor([1.0, -2.0]), "q_x")
    tensor([ 1, -2])
    """
    if isinstance(q, np.ndarray):
        q = torch.from_numpy(np.ascontiguousarray(q))
    elif not isinstance(q, torch.Tensor):
        if q is None or isinstance(q, (str, bytes, bool)) or not isinstance(q, (numbers.Real, list, tuple)):
            raise TypeError(f"{name} must be an integer tensor; got {type(q).__name__}.")
        q = torch.as_tensor(q)
    _no_meta(q, name)
    if q.dtype == torch.bool or q.is_complex():
        raise TypeError(f"{name} must hold integers; got dtype {q.dtype}.")
    if q.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(q.shape)}).")
    if q.is_floating_point():
        if not bool(torch.isfinite(q).all()):
            raise ValueError(f"{name} contains {int((~torch.isfinite(q)).sum())} NaN/inf value(s); integers "
                             "on a grid are always finite. Find where they come from.")
        if not bool((q == torch.round(q)).all()):
            raise ValueError(f"{name} must hold integers (values on the grid); it has fractional values. "
                             f"Quantize first (quantlab.quantize), or round: {name}.round().")
    return q.to(torch.int64)


def check_positive_int(v, name: str) -> int:
    """Check ``v`` is an integer >= 1 (a count: epochs, batch size, images); return it.

    >>> check_positive_int(64, "batch_size")
    64
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {v!r}.")
    if v < 1:
        raise ValueError(f"{name} must be >= 1; got {v}.")
    return int(v)


def check_positive_float(v, name: str) -> float:
    """Check ``v`` is a finite real number > 0 (a learning rate, a scale); return it as float.

    >>> check_positive_float(3e-3, "lr")
    0.003
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a positive number; got {v!r}.")
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0; got {v!r}.")
    return float(v)


def check_images(x, name: str = "x", shape: tuple | None = None) -> torch.Tensor:
    """Check a batch of float images (N, C, H, W) (or any (N, ...) when ``shape`` is None): a float
    tensor, not empty, finite, of per-image shape ``shape`` when given. Returns it unchanged.

    Raw uint8 pixels are a TypeError that says to divide by 255 (the lab's x = pixel / 255).

    >>> check_images(torch.zeros(2, 1, 28, 28), shape=(1, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a float torch.Tensor of images; got {type(x).__name__}. "
                        "Use quantlab.data.load_mnist(...) or torch.as_tensor(...).")
    _no_meta(x, name)
    if not x.is_floating_point():
        fix = f"{name}.float() / 255" if x.dtype == torch.uint8 else f"{name}.float()"
        raise TypeError(f"{name} must be float images (x = pixel / 255); got dtype {x.dtype} on {x.device}. "
                        f"Convert it first: {name} = {fix}.")
    if shape is not None and (x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape)):
        expected = "(N, " + ", ".join(map(str, shape)) + ")"
        raise ValueError(f"{name} must have shape {expected}; got {tuple(x.shape)}. "
                         f"For one image of shape {tuple(shape)} pass {name}.unsqueeze(0).")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one image.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains {int((~torch.isfinite(x)).sum())} NaN/inf value(s); "
                         "clean the data first.")
    return x


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
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor on {model_name}'s device ({dev}); got "
                        f"{type(x).__name__}. Convert it: {name} = torch.as_tensor({name}).to('{dev}').")
    if x.device != dev:
        raise ValueError(
            f"{name} is on {x.device} but {model_name} is on {dev}. Move one of them: "
            f"{name} = {name}.to('{dev}')  or  {model_name}.to('{x.device}')."
        )
    return dev


def check_tensor_device(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> torch.device:
    """Check two tensors are on one device; return it (ValueError naming both devices and the fix).

    >>> check_tensor_device(torch.zeros(1), torch.ones(1), "r", "r_hat")
    device(type='cpu')
    """
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}. Move one of them: "
                         f"{name_b} = {name_b}.to({name_a}.device).")
    return a.device


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

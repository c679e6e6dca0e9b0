r"""Error and size metrics: how much a quantized r_hat differs from r, and how much smaller it is."""

from __future__ import annotations

import math

import torch

from ._checks import as_float_tensor, check_bits, check_model, check_tensor_device

__all__ = ["mse", "sqnr_db", "compression_ratio", "tensor_size_bytes", "model_size_bytes"]


def _pair(r, r_hat):
    a, b = as_float_tensor(r, "r"), as_float_tensor(r_hat, "r_hat")
    check_tensor_device(a, b, "r", "r_hat")
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        raise ValueError(f"r and r_hat must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    return a, b


def mse(r, r_hat) -> float:
    r"""Mean squared error  MSE = mean((r - r_hat)^2).

    >>> mse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    0.125
    """
    a, b = _pair(r, r_hat)
    return float(((a - b) ** 2).mean())


def sqnr_db(r, r_hat) -> float:
    r"""Signal-to-quantization-noise ratio  SQNR = 10 log10( sum r^2 / sum (r - r_hat)^2 )  in dB.

    Each extra bit adds about 6.02 dB for uniform data. Returns ``math.inf`` when r_hat == r exactly
    (no noise). Raises ValueError when r is all zeros (no signal: the ratio is undefined).

    >>> round(sqnr_db(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.1])), 2)
    20.0
    """
    a, b = _pair(r, r_hat)
    signal = float((a**2).sum())
    if signal == 0.0:
        raise ValueError("r is all zeros: SQNR (signal / noise) is undefined; use mse(r, r_hat) instead.")
    noise = float(((a - b) ** 2).sum())
    return math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise)


def compression_ratio(bits: int, fp_bits: int = 32) -> float:
    r"""Ideal compression of values stored in ``bits`` instead of FP32:  32 / bits  (4x at 8, 32x at 1).

    >>> compression_ratio(8), compression_ratio(1)
    (4.0, 32.0)
    """
    return check_bits(fp_bits, "fp_bits", 1, 64) / check_bits(bits)


def tensor_size_bytes(n_values: int, bits: int, n_qparams: int = 0) -> float:
    r"""Bytes to store n values at ``bits`` each (packed) plus n_qparams pairs (s: 4 bytes FP32, z: 4 bytes).

    >>> tensor_size_bytes(1000, 8, n_qparams=1)
    1008.0
    """
    return n_values * check_bits(bits, low=1, high=32) / 8 + 8 * n_qparams


def model_size_bytes(model: torch.nn.Module, bits: int | None = None, per_channel: bool = False) -> float:
    r"""Size of a model's parameters: FP32 when bits is None, else weights (ndim >= 2) at ``bits`` with one
    (s, z) per tensor or per output channel; biases and BatchNorm stay FP32 (as in PyTorch's int8 models).

    >>> round(model_size_bytes(torch.nn.Linear(100, 10)) / model_size_bytes(torch.nn.Linear(100, 10), 8), 2)
    3.85
    """
    check_model(model)
    if bits is not None:
        check_bits(bits, low=1, high=32)
    total = 0.0
    for p in model.parameters():
        if bits is None or p.ndim < 2:
            total += p.numel() * 4
        else:
            total += tensor_size_bytes(p.numel(), bits, p.shape[0] if per_channel else 1)
    for b in model.buffers():
        if b.is_floating_point():
            total += b.numel() * 4
    return total


def per_channel_sqnr(w, w_hat, axis: int = 0) -> torch.Tensor:
    r"""SQNR of each channel c along ``axis``, in dB:  10 log10( sum w_c^2 / sum (w_c - w_hat_c)^2 ).

    Shapes: w, w_hat tensors of one shape with ndim >= 1; returns float32 of shape (w.shape[axis],), on
    w's device. A channel quantized without error gets +inf; an all-zero channel with an error gets -inf.
    Raises TypeError/ValueError for non-tensors, NaN/inf, mismatched shapes or an axis out of range.

    >>> per_channel_sqnr(torch.ones(2, 3), torch.ones(2, 3) * 0.9).round()
    tensor([20., 20.])
    >>> per_channel_sqnr(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]]))
    tensor([inf])
    """
    a, b = _pair(w, w_hat)
    if a.ndim == 0:
        raise ValueError("w must have at least one axis (the channels); got a scalar.")
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis must lie in [{-a.ndim}, {a.ndim - 1}] for w of shape {tuple(a.shape)}; got {axis}.")
    a, b = a.movedim(axis, 0).reshape(a.shape[axis], -1), b.movedim(axis, 0).reshape(a.shape[axis], -1)
    signal, noise = a.pow(2).sum(1), (a - b).pow(2).sum(1)
    with torch.no_grad():
        ratio = torch.where(noise == 0, torch.full_like(noise, float("inf")), signal / noise.clamp_min(1e-300))
    return (10 * torch.log10(ratio)).float()


__all__ += ["per_channel_sqnr"]

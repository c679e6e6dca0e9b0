r"""Logarithmic (power-of-two) quantization: levels 0 and ±s·2^-k, so a weight times x is a shift of x.

With b bits, one bit is the sign and the other b - 1 bits hold a magnitude code m in 0..K,
K = 2^(b-1) - 1; m = 0 is the exact zero and m >= 1 is the level s·2^(m-K). The integer code is
q = sign(r)·m in [-K, K] (2^b - 1 codes, like the narrow symmetric linear grid) and

    r_hat = sign(q) · s · 2^(|q| - K)            (q = 0 -> r_hat = 0)

so the grid is {0, ±s·2^(1-K), ..., ±s/2, ±s}: the exponent range is set by the bits (K exponents) and
the scale s = max|r| of the quantization unit (per tensor, per channel, per group — any granularity value
of :mod:`quantlab.granularity`). Levels are dense near zero and sparse near s: where bell-shaped weights are.

Two rounding rules, which differ (the lab shows where):

* ``rounding="linear"``: the nearest level by |r - r_hat| (thresholds at arithmetic midpoints, 1.5·2^j·s;
  the zero threshold is s·2^-K, half the smallest level). Ties go to the smaller magnitude.
* ``rounding="log"``: the nearest level in log2 space, m = clip(round(log2(|r|/s)) + K, 0, K)
  (thresholds at geometric midpoints, √2·2^j·s; zero when |r| < s·2^(1/2-K), i.e. zero acts as the
  exponent -K). |r|/s in (√2, 1.5)·2^j rounds *up* in the log domain and *down* in the linear domain.
"""

from __future__ import annotations

import torch

from .._checks import as_float_tensor, check_bits, from_tensor
from ..granularity import Granularity, PerTensor, range_of
from ..linear import EPS

_PER_TENSOR = PerTensor()  # the default granularity (one immutable value)

__all__ = ["pow2_levels", "pow2_scale", "pow2_quantize", "pow2_dequantize", "fake_pow2", "pow2_size_bytes",
           "ROUNDINGS"]

ROUNDINGS = ("linear", "log")


def _n_exp(bits) -> int:
    """K = 2^(b-1) - 1 exponents for b bits (b in 2..8: 1 bit is the sign, and m = 0 is the zero)."""
    bits = check_bits(bits, "bits", low=2, high=8)
    return 2 ** (bits - 1) - 1


def pow2_levels(bits: int) -> torch.Tensor:
    r"""The grid for s = 1, ascending: {0, ±2^(1-K), ..., ±1/2, ±1}, K = 2^(b-1) - 1; 2^b - 1 float64 values.

    Raises ValueError for bits outside 2..8 (1 bit leaves only the sign: no magnitude code; 8 bits already
    reach 2^-126, the edge of float32's normal range).

    >>> pow2_levels(3).tolist()
    [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    """
    K = _n_exp(bits)
    pos = 2.0 ** torch.arange(1 - K, 1, dtype=torch.float64)
    return torch.cat([-pos.flip(0), torch.zeros(1, dtype=torch.float64), pos])


def pow2_scale(r, granularity: Granularity = _PER_TENSOR) -> torch.Tensor:
    r"""s = max|r| per quantization unit (from :func:`quantlab.granularity.range_of`), floored at EPS.

    Shapes: broadcasts against r, like QParams.s. An all-zero unit gets s = EPS (its codes are all 0).

    >>> pow2_scale(torch.tensor([[0.5, -2.0], [0.1, 0.2]]), __import__("quantlab").PerChannel(0)).flatten()
    tensor([2.0000, 0.2000])
    """
    lo, hi = range_of(r, granularity)
    return torch.clamp(torch.maximum(-lo, hi), min=EPS).to(torch.float32)


def _check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}; got {rounding!r}.")
    return rounding


def pow2_quantize(r, bits: int = 4, granularity: Granularity = _PER_TENSOR, rounding: str = "linear", s=None):
    r"""Codes q = sign(r)·m, m in 0..K, of the nearest power-of-two level; returns (q int32, s float32).

    m = 0 is zero, m >= 1 the level s·2^(m-K); |r| > s clips to m = K. ``rounding`` picks the space in which
    "nearest" is measured (module docstring): "linear" = argmin |r - r_hat| (ties to the smaller magnitude),
    "log" = round(log2(|r|/s)) + K (half to even), clipped to [0, K]; log2(0) = -inf gives m = 0, never NaN.

    Shapes: r any float shape (torch or NumPy); s from :func:`pow2_scale` (r, granularity) unless given
    (a number or a tensor broadcasting against r). q has r's shape, on r's device.
    Raises ValueError for bits outside 2..8, NaN/inf or empty r, s <= 0, an unknown rounding.

    >>> q, s = pow2_quantize(torch.tensor([1.0, -0.3, 0.6, 0.01]), 3)
    >>> q.tolist(), float(s)                 # levels 0, ±1/4, ±1/2, ±1 (K = 3)
    ([3, -1, 2, 0], 1.0)
    """
    t = as_float_tensor(r, "r")
    K = _n_exp(bits)
    _check_rounding(rounding)
    if s is None:
        s = pow2_scale(t, granularity)
    else:
        s = torch.as_tensor(s, dtype=torch.float32, device=t.device)
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise ValueError("s must be finite and > 0 (the largest level); compute it with pow2_scale(r).")
    s = s.to(t.device)
    mag, s64 = t.abs().double(), s.double()
    a = torch.clamp(mag / s64, max=1.0)
    if rounding == "log":
        m = torch.clamp(torch.round(torch.log2(a)) + K, 0, K)  # log2(0) = -inf -> clamped to m = 0
    else:
        exp = torch.frexp(a).exponent  # a = mant·2^exp, mant in [0.5, 1): floor(log2 a) = exp - 1
        m_lo = torch.clamp(exp - 1 + K, 0, K)
        m_hi = torch.clamp(m_lo + 1, max=K)
        lvl_lo = torch.where(m_lo > 0, s64 * torch.exp2((m_lo - K).double()), torch.zeros_like(a))
        lvl_hi = s64 * torch.exp2((m_hi - K).double())
        m = torch.where(mag - lvl_lo <= lvl_hi - mag, m_lo, m_hi)  # in r's units, ties to the smaller one
    q = (torch.sign(t) * m).to(torch.int32)
    return from_tensor(q, r), from_tensor(s, r)


def pow2_dequantize(q, s, bits: int):
    r"""r_hat = sign(q)·s·2^(|q| - K), K = 2^(b-1) - 1 (q = 0 -> 0). Inverse of :func:`pow2_quantize`.

    Shapes: q integer codes in [-K, K], s broadcasting against q; float32 out on q's device.
    Raises ValueError for codes outside [-K, K] or bits outside 2..8.

    >>> pow2_dequantize(torch.tensor([3, -1, 2, 0]), 1.0, 3).tolist()
    [1.0, -0.25, 0.5, 0.0]
    """
    K = _n_exp(bits)
    qt = torch.as_tensor(q)
    if qt.is_floating_point() or bool((qt.abs() > K).any()):
        raise ValueError(f"q must be integer codes in [-{K}, {K}] for bits={bits}; use pow2_quantize(r, bits).")
    st = torch.as_tensor(s, dtype=torch.float32, device=qt.device)
    m = qt.abs().to(torch.float32)
    r_hat = torch.sign(qt).to(torch.float32) * st * torch.exp2(m - K) * (m > 0)
    return from_tensor(r_hat, q)


def fake_pow2(r, bits: int = 4, granularity: Granularity = _PER_TENSOR, rounding: str = "linear"):
    r"""r_hat = pow2_dequantize(pow2_quantize(r)) — same shape and device as r.

    >>> fake_pow2(torch.tensor([2.0, -0.7, 0.3]), 3).tolist()   # s = 2: levels 0, ±0.5, ±1, ±2
    [2.0, -0.5, 0.5]
    """
    q, s = pow2_quantize(r, bits, granularity, rounding)
    return pow2_dequantize(q, s, bits)


def pow2_size_bytes(n_values: int, bits: int, n_scales: int = 1) -> float:
    r"""Stored bytes: n codes of b bits (packed) + one FP32 s per unit (no zero point).

    >>> pow2_size_bytes(1000, 4, 1)
    504.0
    """
    return n_values * check_bits(bits, low=2, high=8) / 8 + 4 * n_scales

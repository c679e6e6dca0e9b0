r"""The simple baselines: the range from min/max, from percentiles, or minimising the expected squared error.

Every function takes raw x (a tensor on any device, copied to the CPU where NumPy is needed, or an
array), a (hist, bin_edges) histogram of x, or an observer, and returns (r_min, r_max) as floats.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .._checks import as_float_tensor, check_bits
from ..linear import fake_quantize, qrange
from ..observers import HistogramObserver, _RangeObserver
from .histograms import abs_histogram, source_histogram, to_numpy

__all__ = ["minmax_range", "percentile_range", "mse_range"]


def minmax_range(source) -> tuple[float, float]:
    r"""r_min = min(x), r_max = max(x) over all calibration data (raw x, an observer, or (hist, bin_edges)).

    Raises ValueError for empty data, NaN/inf, a histogram with bad counts/edges; TypeError for integer x.

    >>> minmax_range(torch.tensor([-1.0, 2.0, 0.5]))
    (-1.0, 2.0)
    """
    if isinstance(source, _RangeObserver) and not isinstance(source, HistogramObserver):
        lo, hi = source.range()
        return float(lo.min()), float(hi.max())
    if isinstance(source, (HistogramObserver, tuple)):
        h, e = source_histogram(source, 2048)
        nz = np.flatnonzero(h)
        return float(e[nz[0]]), float(e[nz[-1] + 1])
    t = as_float_tensor(source, "x")
    return float(t.min()), float(t.max())


def _hist_quantile(h: np.ndarray, e: np.ndarray, frac: float) -> float:
    """Inverse CDF of a histogram (values uniform inside each bin)."""
    cdf = np.concatenate(([0.0], np.cumsum(h))) / h.sum()
    k = int(np.clip(np.searchsorted(cdf, frac, side="left"), 1, h.size))
    lo, hi = cdf[k - 1], cdf[k]
    t = 0.0 if hi <= lo else (frac - lo) / (hi - lo)
    return float(e[k - 1] + np.clip(t, 0.0, 1.0) * (e[k] - e[k - 1]))


def check_pct(pct) -> float:
    if isinstance(pct, bool) or not isinstance(pct, numbers.Real) or not 50.0 < float(pct) <= 100.0:
        raise ValueError(f"pct must be a number in (50, 100], e.g. 99.99; got {pct!r}.")
    return float(pct)


def percentile_range(source, pct: float = 99.99, symmetric: bool = False) -> tuple[float, float]:
    r"""Clip the tails: r_max = pct-th percentile of x, r_min = (100 - pct)-th percentile.

    symmetric: T = pct-th percentile of |x|, range [-T, T] (or [0, T] for non-negative data).
    ``source`` is raw x (exact quantiles; tensors on any device are copied to the CPU) or a histogram of
    x, given as (hist, bin_edges) or a HistogramObserver (inverse CDF, uniform within bins).
    Raises ValueError for pct outside (50, 100], empty data, NaN/inf.

    >>> [round(v, 6) for v in percentile_range(torch.arange(1001.0), 99.0)]
    [10.0, 990.0]
    """
    f = check_pct(pct) / 100.0
    if isinstance(source, (HistogramObserver, tuple)):
        h, e = source_histogram(source, 2048)
        if symmetric:
            ha, ea = abs_histogram(h, e)
            t = _hist_quantile(ha, ea, f)
            return (-t if e[0] < 0 else 0.0), t
        return _hist_quantile(h, e, 1.0 - f), _hist_quantile(h, e, f)
    a = to_numpy(source)
    if symmetric:
        t = float(np.quantile(np.abs(a), f))
        return (-t if a.min() < 0 else 0.0), t
    lo, hi = np.quantile(a, [1.0 - f, f])
    return float(lo), float(hi)


def _expected_mse(c: np.ndarray, w: np.ndarray, r_min, r_max, q_min, q_max, symmetric) -> np.ndarray:
    """sum_j w_j (c_j - fake_quantize(c_j))^2 for each candidate range (rows); s, z from scale_zero_point,
    r_hat from quantlab.linear.fake_quantize (float64 on the bin centres)."""
    from ..linear import scale_zero_point

    s, z = scale_zero_point(torch.as_tensor(r_min), torch.as_tensor(r_max), q_min, q_max, symmetric)
    c_t = torch.from_numpy(c)[None, :].expand(len(s), -1)  # one row of bin centres per candidate
    r_hat = fake_quantize(c_t, s.double()[:, None], z[:, None], q_min, q_max).numpy()
    return ((c[None, :] - r_hat) ** 2 * w[None, :]).sum(1)


def mse_range(source, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
              n_candidates: int = 200) -> tuple[float, float]:
    r"""The clip range minimising the expected error  E[(r - r_hat)^2] = sum_j P_f(j) (c_j - r_hat(c_j))^2,

    with c_j the bin centres of P_f and r_hat = s (clip(round(c/s + z), q_min, q_max) - z)
    (:func:`quantlab.fake_quantize`), s and z from :func:`quantlab.scale_zero_point`. Candidates:
    symmetric T = max|x| k/K (k = 1..K, K = n_candidates); asymmetric (r_min, r_max) = (alpha min(x),
    beta max(x)) on a k x k grid (k = sqrt(5 K)), then a k x k grid one step around the best. Narrow
    ranges cut rounding error, wide ranges cut clipping error; the MSE balances the two.

    ``source``: raw x, (hist, bin_edges) of x, or a HistogramObserver. Returns (r_min, r_max).
    Raises ValueError for bits outside [1, 16], n_candidates < 1, and the data/histogram errors.

    >>> lo, hi = mse_range(torch.randn(10_000), bits=4, symmetric=True)
    >>> 1.5 < hi < 3.5
    True
    """
    bits = check_bits(bits)
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, numbers.Integral) or n_candidates < 1:
        raise ValueError(f"n_candidates must be a positive int (200 is the default); got {n_candidates!r}.")
    signed = symmetric if signed is None else bool(signed)
    q_min, q_max = qrange(bits, signed=signed)
    h, e = source_histogram(source, 2048)
    keep = h > 0  # empty bins add no error
    c = 0.5 * (e[:-1] + e[1:])[keep]
    w = h[keep] / h.sum()
    lo, hi = min(float(e[0]), 0.0), max(float(e[-1]), 0.0)
    if lo == hi:  # all zeros: nothing to search
        return 0.0, 0.0
    if symmetric:
        top = max(-lo, hi) if signed else hi
        t = top * np.arange(1, n_candidates + 1) / n_candidates
        neg = -t if signed else np.zeros_like(t)
        err = _expected_mse(c, w, neg, t, q_min, q_max, True)
        k = int(np.flatnonzero(err == err.min())[-1])
        return float(neg[k]), float(t[k])
    return _mse_grid(c, w, lo, hi, q_min, q_max, n_candidates)


def _mse_grid(c, w, lo, hi, q_min, q_max, n_candidates) -> tuple[float, float]:
    """Asymmetric MSE search: coarse k x k grid of (alpha, beta), then k x k one step around the best."""
    def search(alphas, betas):  # every (alpha, beta) pair at once; ties go to the widest range
        al, be = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))
        err = _expected_mse(c, w, lo * al, hi * be, q_min, q_max, False)
        j = int(np.flatnonzero(err == err.min())[-1])
        return al[j], be[j]

    k = max(4, int(np.sqrt(n_candidates * 5)))
    frac = np.arange(1, k + 1) / k
    a0, b0 = search(frac if lo < 0 else np.ones(1), frac if hi > 0 else np.ones(1))
    fine = np.linspace(-1.0 / k, 1.0 / k, k + 1)
    a1, b1 = search(np.clip(a0 + fine, 1e-6, 1.0) if lo < 0 else np.ones(1),
                    np.clip(b0 + fine, 1e-6, 1.0) if hi > 0 else np.ones(1))
    return float(lo * a1), float(hi * b1)

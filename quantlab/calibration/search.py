r"""The divergence searches: the clip threshold T (symmetric) or range [r_min, r_max] minimising D(P || Q_q).

Default merge rule: "fractional", NVIDIA's TensorRT entropy calibrator (modelopt ``HistogramCalibrator``,
method "entropy", ``_compute_amax_entropy``; the same code as pytorch-quantization): candidates from
bin 128 on, chunk boundaries linspace(0, i, n_levels + 1), KL as scipy.stats.entropy (+inf where the
folded mass lands on an empty bin), the last argmin. "integer" is lab 05's rule (ONNX Runtime).
The zero spike is flattened by the callers (:func:`quantlab.calibration.calibrate`) with
:func:`flatten_zero_bin`, which is NVIDIA's ``bins[0] = bins[1]`` on a histogram of |x|.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .._checks import check_bits
from .divergences import check_levels, check_merge, check_metric
from .histograms import check_hist_edges, zero_bin
from .vectorised import best, curve, direct, first_length

__all__ = ["ThresholdSearch", "RangeSearch", "divergence_curve", "kl_threshold", "kl_range", "n_levels_for"]


def n_levels_for(bits, signed: bool = True) -> int:
    """Levels per side searched: 2^(bits-1) for a signed grid (one side of [q_min, q_max]), 2^bits unsigned.

    >>> n_levels_for(8, signed=True), n_levels_for(8, signed=False)
    (128, 256)
    """
    bits = check_bits(bits)
    n = 2 ** (bits - 1) if signed else 2**bits
    if n < 2:
        raise ValueError(f"bits={bits} signed leaves one level per side; a threshold search needs bits >= 2.")
    return n


def _check_start_bin(start_bin, n_bins: int):
    if start_bin is None:
        return None
    if isinstance(start_bin, bool) or not isinstance(start_bin, numbers.Integral) or not 1 <= start_bin <= n_bins:
        raise ValueError(f"start_bin must be an int in [1, len(hist)] = [1, {n_bins}] (NVIDIA uses 128); "
                         f"got {start_bin!r}.")
    return int(start_bin)


def divergence_curve(hist, bin_edges, n_levels: int, metric: str = "kl", start: int = 0, ends=None,
                     merge: str = "fractional", start_bin: int | None = None):
    r"""D(P || Q_q) for candidate clip ranges [bin_edges[start], bin_edges[b]], b in ``ends`` (all at once).

    P = hist[start:b], mass left of ``start`` folded into its first bin, mass from b on into its last;
    Q_q = quantize_histogram(hist[start:b], n_levels, merge). ``ends`` defaults to every b >= start +
    first length (n_levels for "integer", ``start_bin`` = 128 for "fractional", NVIDIA's default).
    This is the very curve :func:`kl_threshold` (start = 0) and :func:`kl_range` minimise (pass the
    histogram they search: after :func:`flatten_zero_bin`). Returns (r_maxs, D) float64 arrays of len(ends);
    with merge="fractional", D is +inf where the folded mass lands on an empty bin (as in the reference).

    Raises ValueError for ends outside [start + n_levels ("integer") or start + 1, len(hist)], bad
    start/metric/merge/n_levels,
    and the histogram errors.

    >>> import torch; from quantlab.calibration import histogram
    >>> h, e = histogram(torch.randn(10_000), absolute=True)
    >>> r_max, d = divergence_curve(h, e, 128, "js", ends=np.arange(128, 2049, 64))
    >>> r_max.shape == d.shape == (31,)
    True
    """
    h, e = check_hist_edges(hist, bin_edges)
    metric, merge = check_metric(metric), check_merge(merge)
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= start < h.size:
        raise ValueError(f"start must be a bin index in [0, {h.size - 1}]; got {start!r}.")
    n = check_levels(n_levels, h.size - int(start), merge)
    first = int(start) + first_length(n, merge, h.size - int(start), _check_start_bin(start_bin, h.size))
    ends = np.arange(first, h.size + 1) if ends is None else np.asarray(ends, dtype=np.int64).reshape(-1)
    lowest = int(start) + (n if merge == "integer" else 1)  # any candidate the merge rule can build
    if ends.size == 0 or (ends < lowest).any() or (ends > h.size).any():
        raise ValueError(f"ends must lie in [start + {'n_levels' if merge == 'integer' else '1'}, len(hist)] = "
                         f"[{lowest}, {h.size}].")
    return e[ends], curve(h, int(start), ends, n, metric, merge, left=float(h[:start].sum()))


class ThresholdSearch(NamedTuple):
    """Result of :func:`kl_threshold`: the best T, its candidate index, and the whole curve D(T)."""

    threshold: float
    index: int
    thresholds: np.ndarray
    divergences: np.ndarray


def kl_threshold(hist, bin_edges, bits: int = 8, signed: bool = True, metric: str = "kl",
                 merge: str = "fractional", start_bin: int | None = None) -> ThresholdSearch:
    r"""Symmetric calibration (TensorRT's entropy search): the clip threshold T minimising D(P || Q_q).

    ``hist`` is P_f of |x| (e.g. 2048 bins over [0, max|x|]; see :func:`histogram` (x, absolute=True)),
    normally after :func:`flatten_zero_bin`. n_levels = 2^(b-1) for a signed grid, 2^b unsigned.
    For each candidate i (from 128 with merge="fractional", the reference's start_bin; from n_levels with
    "integer") up to N bins:
        P   = hist[:i] with all the mass beyond (hist[i:]) folded into bin i-1   (what clipping at T does);
        Q_q = quantize_histogram(hist[:i], n_levels, merge)  (the kept bins only, as in TensorRT);
        D_i = kl_divergence(P, Q_q) (or symmetric_kl / js), both normalised to sum 1;
    T = bin_edges[i*] (right edge of the last bin kept), i* = the last argmin of D_i. All candidates are
    evaluated together (no loop per candidate); near-ties are re-checked exactly.
    Then r_min, r_max = -T, T (signed) or 0, T (unsigned). A histogram of constant |x| (all edges equal,
    e.g. all-zero data) returns T = that value.

    Shapes: hist (N,), bin_edges (N+1,) with bin_edges[0] >= 0. Returns ThresholdSearch(threshold,
    index, thresholds (C,), divergences (C,)), C = number of candidates.
    Raises ValueError for N < n_levels, edges that do not start at >= 0, bits out of [2, 16] (signed) /
    [1, 16], an unknown metric or merge rule, start_bin outside [1, N], and the histogram errors.

    >>> import torch; from quantlab.calibration import histogram
    >>> x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    >>> 3.0 < kl_threshold(*histogram(x, absolute=True), bits=8).threshold < 5.0
    True
    """
    h, e = check_hist_edges(hist, bin_edges)
    if e[0] < 0:
        raise ValueError("kl_threshold needs a histogram of |x| (edges from 0): use abs_histogram() or "
                         "histogram(x, absolute=True).")
    metric, merge = check_metric(metric), check_merge(merge)
    n = n_levels_for(bits, signed)
    if h.size < n:
        raise ValueError(f"hist has {h.size} bins but needs >= n_levels = {n}; use more bins (2048 is usual).")
    start_bin = _check_start_bin(start_bin, h.size)
    if e[-1] == e[0]:  # constant |x|: nothing to clip
        return ThresholdSearch(float(e[-1]), h.size, e[[h.size]], np.zeros(1))
    ends = np.arange(first_length(n, merge, h.size, start_bin), h.size + 1)
    d = curve(h, 0, ends, n, metric, merge)
    k = best(d, lambda j: direct(h, 0, int(ends[j]), n, metric, merge))
    return ThresholdSearch(float(e[ends[k]]), int(ends[k]), e[ends], d)


class RangeSearch(NamedTuple):
    """Result of :func:`kl_range`: the best (r_min, r_max) and the divergence over the coarse grid."""

    r_min: float
    r_max: float
    r_mins: np.ndarray
    r_maxs: np.ndarray
    divergences: np.ma.MaskedArray


def kl_range(hist, bin_edges, bits: int = 8, metric: str = "kl", n_candidates: int = 48,
             merge: str = "fractional", start_bin: int | None = None) -> RangeSearch:
    r"""Asymmetric calibration: the clip range [r_min, r_max] (bins [a, b) of P_f of x) minimising D(P||Q_q).

    For each candidate pair (a, b) with r_min = bin_edges[a] <= 0 <= r_max = bin_edges[b] and b - a >= the
    first length (n_levels = 2^bits for "integer", start_bin = 128 for "fractional"):
        P = hist[a:b], mass left of a folded into its first bin, mass right of b into its last;
        Q_q = quantize_histogram(hist[a:b], 2^bits, merge);  D = kl_divergence(P, Q_q) (or symmetric_kl / js).
    Coarse-to-fine: ``n_candidates`` values of a and of b, then every bin around the best pair; ties go
    to the widest range. Post-ReLU data (r_min >= 0): only a = 0, a one-sided search; data that never
    goes above 0 is searched mirrored; constant data (all edges equal, e.g. all zeros) returns
    [min(c, 0), max(c, 0)] (then s = EPS for all zeros).

    Shapes: hist (N,), bin_edges (N+1,). Returns RangeSearch(r_min, r_max, r_mins (A,), r_maxs (B,),
    divergences (A, B) masked where a pair is not a valid candidate).
    Raises ValueError for N < 2^bits, bad bits/metric/merge/n_candidates, histogram errors.

    >>> import torch; from quantlab.calibration import histogram
    >>> res = kl_range(*histogram(torch.randn(100_000) + 1), bits=8)
    >>> res.r_min < 0 < res.r_max
    True
    """
    h, e = check_hist_edges(hist, bin_edges)
    metric, merge = check_metric(metric), check_merge(merge)
    n = n_levels_for(bits, signed=False)
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, numbers.Integral) or n_candidates < 2:
        raise ValueError(f"n_candidates must be an int >= 2 (48 is the default); got {n_candidates!r}.")
    if h.size < n:
        raise ValueError(f"hist has {h.size} bins but needs >= 2^bits = {n}; use more bins (2048 is usual).")
    start_bin = _check_start_bin(start_bin, h.size)
    if e[-1] == e[0]:
        c = float(e[0])
        return RangeSearch(min(c, 0.0), max(c, 0.0), e[:1], e[-1:], np.ma.masked_invalid(np.zeros((1, 1))))
    if e[-1] <= 0:  # never above 0: search the mirror image (a histogram of -x), then mirror back
        res = kl_range(h[::-1].copy(), -e[::-1], bits, metric, n_candidates, merge, start_bin)
        return RangeSearch(-res.r_max, -res.r_min, -res.r_maxs[::-1], -res.r_mins[::-1],
                           res.divergences.T[::-1, ::-1])
    return _range_search(h, e, n, metric, int(n_candidates), merge, first_length(n, merge, h.size, start_bin))


def _range_search(h, e, n, metric, n_candidates, merge, width) -> RangeSearch:
    """kl_range's coarse-to-fine grid search over (a, b); 0 lies in [e[0], e[-1]) here."""
    N = h.size
    z0 = zero_bin(e) if e[0] <= 0 else 0  # bin holding r = 0 (0 for post-ReLU data)
    a_max = min(z0, N - width)
    cum = np.concatenate(([0.0], np.cumsum(h)))

    def grid(lo, hi, k):
        return np.unique(np.round(np.linspace(lo, hi, max(2, k))).astype(np.int64))

    def evaluate(a_vals, b_vals):
        d = np.full((a_vals.size, b_vals.size), np.nan)
        for r, a in enumerate(a_vals):  # one vectorised call per start a (all its ends at once)
            ok = b_vals >= max(a + width, z0 + 1)
            if ok.any():
                d[r, ok] = curve(h, int(a), b_vals[ok], n, metric, merge, left=cum[a])
        return d

    a_c, b_c = grid(0, a_max, n_candidates), grid(max(width, z0 + 1), N, n_candidates)
    d_c = evaluate(a_c, b_c)
    r, c = np.unravel_index(np.nanargmin(np.where(np.isnan(d_c), np.inf, d_c)), d_c.shape)
    step_a = int(np.diff(a_c).max()) if a_c.size > 1 else 0
    step_b = int(np.diff(b_c).max()) if b_c.size > 1 else 0
    a_f = np.arange(max(0, a_c[r] - step_a), min(a_max, a_c[r] + step_a) + 1)
    b_f = np.arange(max(width, z0 + 1, b_c[c] - step_b), min(N, b_c[c] + step_b) + 1)
    d_f = np.where(np.isnan(d := evaluate(a_f, b_f)), np.inf, d)
    flat = np.flatnonzero(d_f == d_f.min())
    top = max(flat, key=lambda f: (b_f[f % b_f.size] - a_f[f // b_f.size], -f))  # ties: widest range
    a_best, b_best = a_f[top // b_f.size], b_f[top % b_f.size]
    return RangeSearch(float(e[a_best]), float(e[b_best]), e[a_c], e[b_c], np.ma.masked_invalid(d_c))

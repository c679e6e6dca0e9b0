r"""Calibration for post-training quantization (section 9.3.1): pick [r_min, r_max] from P_f, then s and z.

The text's procedure, in our notation:

1. P_f = histogram of the FP32 activations seen on the calibration data.
2. For each candidate (q_min, q_max) range -- here a clip range [r_min, r_max] on P_f's bins -- quantize:
   P = the bins inside the range, with the mass outside folded into the end bins (clipping), and
   Q_q = :func:`quantize_histogram` (bins inside the range, n_levels) (merge into n_levels chunks, spread
   back; built without the folded mass, as TensorRT does, so clipping shows up as a difference).
3. Measure the difference D(P || Q_q): :func:`kl_divergence`, :func:`symmetric_kl` or :func:`js_divergence`.
4. Keep the range with the smallest D and compute s, z from it (:func:`quantlab.scale_zero_point`).

:func:`kl_threshold` is the symmetric search (TensorRT style, histogram of |x|, candidates [0, T]);
:func:`kl_range` the asymmetric one (histogram of x, candidates [r_min, r_max]). Both evaluate every
candidate at once with NumPy (no Python loop per candidate). Baselines: :func:`minmax_range`,
:func:`percentile_range`, :func:`mse_range`. One entry point: :func:`calibrate`.

Conventions (CONTRIBUTING.md): P and Q are normalised to sum 1; natural log; an empty q_i where
p_i > 0 is smoothed to 1e-10, so no divergence is ever inf or NaN.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import NamedTuple

import numpy as np
import torch

from ._checks import as_float_tensor, check_bits
from .granularity import QParams, qparams_from_range
from .observers import HistogramObserver, _RangeObserver, rebin

__all__ = [
    "METRICS", "METHODS", "SMOOTH",
    "kl_divergence", "symmetric_kl", "js_divergence", "divergence", "quantize_histogram",
    "histogram", "abs_histogram", "divergence_curve", "kl_threshold", "kl_range",
    "ThresholdSearch", "RangeSearch",
    "minmax_range", "percentile_range", "mse_range", "flatten_zero_bin", "calibrate_range", "calibrate",
    "calibrate_model", "fake_quantize_activations", "collect_activations",
]

METRICS = ("kl", "symmetric_kl", "js")
METHODS = ("minmax", "percentile", "mse") + METRICS
#: Where p_i > 0 but q_i = 0, q_i is replaced by SMOOTH inside the log (keeps KL finite).
SMOOTH = 1e-10


# ----------------------------------------------------------------------------------------------------
# Divergences between two histograms


def _as_hist(p, name: str) -> np.ndarray:
    """A histogram as float64 NumPy: finite, non-negative, non-empty, with some mass in every row."""
    if isinstance(p, torch.Tensor):
        p = p.detach().cpu().numpy()
    a = np.asarray(p)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an array of counts or probabilities; got dtype {a.dtype}.")
    a = a.astype(np.float64)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); a histogram needs at least one bin.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf; a histogram holds finite counts. Check how it was built.")
    if (a < 0).any():
        raise ValueError(f"{name} has negative counts (min {a.min():g}); a histogram's counts must be >= 0.")
    if (a.sum(axis=-1) <= 0).any():
        raise ValueError(f"{name} has no mass (all counts are 0); it cannot be normalised to sum 1.")
    return a


def _pair(p, q) -> tuple[np.ndarray, np.ndarray]:
    p, q = _as_hist(p, "p"), _as_hist(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape; got {p.shape} and {q.shape}.")
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


def _kl_terms(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-bin p_i log(p_i / max(q_i, 1e-10)), 0 where p_i = 0 (p, q already normalised)."""
    pos = p > 0
    safe_p = np.where(pos, p, 1.0)
    return np.where(pos, p * np.log(safe_p / np.maximum(q, SMOOTH)), 0.0)


def _terms(p: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Per-bin contribution to D(P, Q) for metric in METRICS; D = the sum over bins."""
    if metric == "kl":
        return _kl_terms(p, q)
    if metric == "symmetric_kl":
        return _kl_terms(p, q) + _kl_terms(q, p)
    if metric == "js":
        m = 0.5 * (p + q)
        return 0.5 * _kl_terms(p, m) + 0.5 * _kl_terms(q, m)
    raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")


def _reduce(d: np.ndarray):
    return float(d) if d.ndim == 0 else d


def kl_divergence(p, q):
    r"""Kullback-Leibler divergence  KL(P || Q) = sum_{i: p_i > 0} p_i log(p_i / max(q_i, 1e-10)).

    P and Q are first normalised to sum 1 (so raw counts are fine); natural log. KL(P||P) = 0, KL >= 0,
    not symmetric. Bins with p_i = 0 contribute 0; an empty q_i where p_i > 0 is smoothed to 1e-10.

    Shapes: p, q (n,) -> float; or (..., n) -> array (..., ) (one divergence per row).
    Raises ValueError for different shapes, empty, NaN/inf, negative counts or an all-zero histogram.

    >>> round(kl_divergence([1, 1], [1, 3]), 6)   # 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75)
    0.143841
    """
    p, q = _pair(p, q)
    return _reduce(_kl_terms(p, q).sum(-1))


def symmetric_kl(p, q):
    r"""Symmetric KL divergence  KL(P || Q) + KL(Q || P)  (same normalisation and 1e-10 smoothing both ways).

    Shapes, raises: as :func:`kl_divergence`.

    >>> symmetric_kl([1, 1], [1, 3]) == symmetric_kl([1, 3], [1, 1])
    True
    """
    p, q = _pair(p, q)
    return _reduce((_kl_terms(p, q) + _kl_terms(q, p)).sum(-1))


def js_divergence(p, q):
    r"""Jensen-Shannon divergence  JS = 1/2 KL(P || M) + 1/2 KL(Q || M),  M = (P + Q)/2.

    Always finite (M > 0 wherever P or Q is), symmetric, 0 <= JS <= log 2 (disjoint supports).
    Shapes, raises: as :func:`kl_divergence`.

    >>> round(js_divergence([1, 0], [0, 1]), 6)    # log 2
    0.693147
    """
    p, q = _pair(p, q)
    return _reduce(_terms(p, q, "js").sum(-1))


def divergence(p, q, metric: str = "kl"):
    """D(P, Q) by name: ``metric`` in ("kl", "symmetric_kl", "js"). See the three functions.

    >>> divergence([1, 1], [1, 3], "js") > 0
    True
    """
    fn = {"kl": kl_divergence, "symmetric_kl": symmetric_kl, "js": js_divergence}.get(metric)
    if fn is None:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")
    return fn(p, q)


def _check_levels(n_levels, i: int | None = None) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, numbers.Integral) or n_levels < 1:
        raise ValueError(f"n_levels must be a positive int (128 at 8 bits signed); got {n_levels!r}.")
    if i is not None and i < n_levels:
        raise ValueError(f"P has {i} bins but n_levels={n_levels}; merge-and-expand needs >= n_levels bins.")
    return int(n_levels)


def quantize_histogram(p, n_levels: int) -> np.ndarray:
    r"""Q_q from P by merge-and-expand: what P looks like when only n_levels values survive.

    P has i bins; chunk width w = i // n_levels; chunk k = bins [k w, (k+1) w) for k < n_levels - 1, the
    last chunk also takes the remainder [(n_levels-1) w, i). Each chunk's total mass is spread evenly over
    the bins of the chunk where p > 0; bins where p == 0 stay 0. So Q_q has P's total mass and support.

    Shapes: p (i,) counts or probabilities, i >= n_levels -> (i,) float64.
    Raises ValueError for i < n_levels, n_levels < 1, and the histogram errors of :func:`kl_divergence`.

    >>> quantize_histogram([2, 0, 1, 3], 2)    # chunks [2, 0] -> [2, 0]; [1, 3] -> [2, 2]
    array([2., 0., 2., 2.])
    """
    p = _as_hist(p, "p")
    if p.ndim != 1:
        raise ValueError(f"p must be 1-D (one histogram); got shape {p.shape}.")
    n = _check_levels(n_levels, p.size)
    w = p.size // n
    k = np.minimum(np.arange(p.size) // w, n - 1)
    nz = p > 0
    mass = np.bincount(k, weights=p, minlength=n)
    count = np.bincount(k, weights=nz, minlength=n)
    return np.where(nz, mass[k] / np.maximum(count[k], 1), 0.0)


# ----------------------------------------------------------------------------------------------------
# Histograms P_f


def histogram(x, bins: int = 2048, absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    r"""P_f: counts of x (or |x| when ``absolute``) on ``bins`` equal bins over [min, max] ([0, max|x|]).

    Shapes: x any float shape -> hist (bins,) float64, bin_edges (bins+1,) float64.
    Constant data (min == max) puts all the mass in one bin (the last one when ``absolute``, so a
    threshold search keeps the whole value). Raises ValueError for empty x, NaN/inf, bins < 1.

    >>> hist, edges = histogram(torch.randn(10_000), bins=2048, absolute=True)
    >>> float(hist.sum()), float(edges[0])
    (10000.0, 0.0)
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r} (2048 is the usual choice).")
    a = as_float_tensor(x, "x").detach().reshape(-1).double().numpy()
    if absolute:
        a = np.abs(a)
        lo, hi = 0.0, float(a.max())
    else:
        lo, hi = float(a.min()), float(a.max())
    edges = np.linspace(lo, hi, bins + 1)
    if hi > lo:
        return np.histogram(a, bins=bins, range=(lo, hi))[0].astype(np.float64), edges
    hist = np.zeros(bins)
    hist[-1 if absolute else 0] = a.size
    return hist, edges


def abs_histogram(hist, bin_edges, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Fold a histogram of x into a histogram of |x| on ``bins`` bins over [0, max|x|] (mass conserved).

    The negative half is mirrored and both halves are re-binned (:func:`quantlab.observers.rebin`); when
    the edges already start at 0 (post-ReLU data) and ``bins`` is unchanged the histogram is returned as is.

    Shapes: hist (n,), bin_edges (n+1,) -> ((bins or n,), (bins+1,)).

    >>> h, e = abs_histogram(*histogram(torch.randn(1000)))
    >>> float(e[0]), float(h.sum())
    (0.0, 1000.0)
    """
    hist, edges = _check_hist_edges(hist, bin_edges)
    bins = hist.size if bins is None else int(bins)
    if edges[0] == 0.0 and bins == hist.size:
        return hist.copy(), edges.copy()
    top = max(abs(edges[0]), abs(edges[-1]))
    new_edges = np.linspace(0.0, top, bins + 1)
    out = np.zeros(bins)
    width = np.diff(edges)
    straddle = (edges[:-1] < 0) & (edges[1:] > 0)  # the bin holding 0 is split in proportion
    frac_pos = np.where(straddle, edges[1:] / np.where(straddle, width, 1.0), 1.0)
    pos = edges[1:] > 0
    if pos.any():
        e = np.concatenate(([max(edges[:-1][pos][0], 0.0)], edges[1:][pos]))
        out += _rebin_into(hist[pos] * frac_pos[pos], e, new_edges)
    neg = edges[:-1] < 0
    if neg.any():  # mirrored: |x| of bin [e_k, e_k+1) is [-e_k+1, -e_k)
        e = np.concatenate(([max(-edges[1:][neg][-1], 0.0)], -edges[:-1][neg][::-1]))
        mass = hist[neg] * np.where(straddle[neg], 1.0 - frac_pos[neg], 1.0)
        out += _rebin_into(mass[::-1], e, new_edges)
    return out, new_edges


def _rebin_into(hist, edges, new_edges):
    if hist.size == 0 or hist.sum() == 0:
        return np.zeros(len(new_edges) - 1)
    return rebin(hist, edges, new_edges)


def _check_hist_edges(hist, bin_edges) -> tuple[np.ndarray, np.ndarray]:
    h = _as_hist(hist, "hist")
    if h.ndim != 1:
        raise ValueError(f"hist must be 1-D; got shape {h.shape}.")
    e = np.asarray(bin_edges.detach().cpu().numpy() if isinstance(bin_edges, torch.Tensor) else bin_edges,
                   dtype=np.float64)
    if e.shape != (h.size + 1,):
        raise ValueError(f"bin_edges must have len(hist) + 1 = {h.size + 1} entries; got shape {e.shape}.")
    if not np.isfinite(e).all() or (np.diff(e) < 0).any():
        raise ValueError("bin_edges must be finite and non-decreasing (as returned by np.histogram).")
    return h, e


def _source_histogram(source, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(hist, edges) of x from raw data, a HistogramObserver, or a (hist, bin_edges) pair."""
    if isinstance(source, HistogramObserver):
        return source.histogram()
    if isinstance(source, tuple) and len(source) == 2:
        return _check_hist_edges(*source)
    return histogram(source, bins)


# ----------------------------------------------------------------------------------------------------
# The vectorised search: every candidate end b of P = bins [a, b) at once


def _ragged(starts: np.ndarray, lengths: np.ndarray):
    """Flatten segments [start, start+length): (bin index of each element, offset of each segment)."""
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    idx = np.arange(int(lengths.sum())) - np.repeat(offsets - starts, lengths)
    return idx, offsets


def _expand(hv: np.ndarray, offs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Merge-and-expand inside each segment (= one chunk): its mass spread over its non-empty bins."""
    nz = hv > 0
    mass = np.add.reduceat(hv, offs)
    count = np.maximum(np.add.reduceat(nz.astype(np.float64), offs), 1.0)
    return np.where(nz, np.repeat(mass / count, lengths), 0.0)


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x log(x / y) where x > 0 (y > 0 there), else 0."""
    pos = x > 0
    return np.where(pos, x * np.log(np.where(pos, x, 1.0) / np.where(pos, y, 1.0)), 0.0)


def _chunks(a: int, ends: np.ndarray, n: int, widths: np.ndarray, first: int, count: int):
    """Ragged layout of chunks first..first+count-1 of every candidate [a, b):
    chunk k = [a + k w, a + (k+1) w), the last chunk (k = n-1) runs to b.
    Returns (bin index per element, segment offsets, segment lengths)."""
    k = np.arange(first, first + count)
    starts = (a + k[None, :] * widths[:, None]).ravel()
    stops = np.where(k[None, :] == n - 1, ends[:, None], a + (k[None, :] + 1) * widths[:, None]).ravel()
    lengths = stops - starts
    idx, offs = _ragged(starts, lengths)
    return idx, offs, lengths


def _search_from(h: np.ndarray, a: int, ends: np.ndarray, n: int, metric: str, left: float = 0.0):
    r"""D(P_b || Q_b) for every candidate end b in ``ends`` at once (see :func:`kl_threshold`):
    P_b = h[a:b] with the mass left of a (``left``) folded into bin a and the mass from b on into bin b-1,
    normalised by the total; Q_b = quantize_histogram(h[a:b], n), normalised by S_b = sum h[a:b].

    KL and symmetric KL: candidates with the same chunk width w = (b - a) // n share their first n-1
    chunks, so those sums are computed once per width; because Q_b = Q~ / S_b there,
        sum p log(p / q) = sum p log(p / Q~) + log(S_b) sum p,
        sum q log(q / p) = (sum Q~ log(Q~ / p) - log(S_b) sum Q~) / S_b,
    and only the last chunk [a + (n-1) w, b) is evaluated bin by bin per candidate.
    JS does not split this way: every bin of every candidate is evaluated (one flat array).
    Assumes every non-empty q_i is >= 1e-10 (so the smoothing only acts where q_i = 0).
    """
    total = h.sum()
    p = h / total
    p[a] += left / total
    hc = np.concatenate(([0.0], np.cumsum(h)))
    in_range = hc[ends] - hc[a]
    S = np.where(in_range > 0, in_range, 1.0)  # an empty Q stays all-zero (q = 0 -> smoothed)
    tail = (hc[-1] - hc[ends]) / total
    widths = (ends - a) // n
    m = ends.size
    if metric == "js":
        return _js_sparse(h, p, a, ends, n, widths, S, tail)
    out = np.zeros(m)
    if n > 1:
        uw, first_of, which = np.unique(widths, return_index=True, return_inverse=True)
        idx, offs, lengths = _chunks(a, ends[first_of], n, uw, 0, n - 1)
        pv, qt = p[idx], _expand(h[idx], offs, lengths)
        both = qt > 0
        wid = np.repeat(np.repeat(np.arange(uw.size), n - 1), lengths)

        def per_width(v):
            return np.bincount(wid, weights=v, minlength=uw.size)[which]

        logS = np.log(S)
        out += per_width(_xlogy(pv * both, qt)) + per_width(pv * both) * logS
        out += per_width(_xlogy(pv * ~both, np.full_like(pv, SMOOTH)))
        if metric == "symmetric_kl":
            out += (per_width(_xlogy(qt, pv)) - per_width(qt) * logS) / S
    idx, offs, lengths = _chunks(a, ends, n, widths, n - 1, 1)
    pv = p[idx]
    pv[offs + lengths - 1] += tail
    qv = _expand(h[idx], offs, lengths) / np.repeat(S, lengths)
    return out + np.add.reduceat(_terms(pv, qv, metric), offs)


def _js_sparse(h, p, a, ends, n, widths, S, tail) -> np.ndarray:
    """JS for every candidate, visiting only the non-empty bins (empty bins add nothing to any term).
    Elements are (candidate, non-empty bin in [a, b)) pairs, plus P's last bin when only the fold fills it."""
    m = ends.size
    nzb = np.flatnonzero(h)
    lo = np.searchsorted(nzb, a)
    counts = np.searchsorted(nzb, ends) - lo
    cand = np.repeat(np.arange(m), counts)
    j = nzb[lo + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)]
    key = cand * n + np.minimum((j - a) // widths[cand], n - 1)
    mass = np.bincount(key, weights=h[j], minlength=m * n)
    cnt = np.bincount(key, minlength=m * n)
    pv = p[j] + np.where(j == ends[cand] - 1, tail[cand], 0.0)
    qv = mass[key] / np.maximum(cnt[key], 1) / S[cand]
    out = np.bincount(cand, weights=_terms(pv, qv, "js"), minlength=m)
    # P's first / last bin filled only by folded mass (q = 0 there): JS term = 1/2 p log 2
    extra = np.where(h[ends - 1] == 0, tail, 0.0)
    if h[a] == 0:
        extra = extra + p[a]
    return out + 0.5 * np.log(2.0) * extra


def _direct(h: np.ndarray, a: int, b: int, n: int, metric: str) -> float:
    """The same D for one candidate, straight from the definitions (used to settle near-ties)."""
    P = h[a:b].copy()
    P[0] += h[:a].sum()
    P[-1] += h[b:].sum()
    Q = quantize_histogram(h[a:b], n) if h[a:b].sum() > 0 else np.zeros(b - a)
    return float(_terms(P / P.sum(), Q / max(Q.sum(), 1e-300), metric).sum())


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")
    return metric


def _n_levels(bits, signed: bool, half: bool) -> int:
    bits = check_bits(bits)
    n = 2 ** (bits - 1) if (signed and half) else 2**bits
    if n < 2:
        raise ValueError(f"bits={bits} signed leaves one level per side; a threshold search needs bits >= 2.")
    return n


def divergence_curve(hist, bin_edges, n_levels: int, metric: str = "kl", start: int = 0, ends=None):
    r"""D(P || Q_q) for candidate clip ranges [bin_edges[start], bin_edges[b]], b in ``ends`` (all at once).

    P = hist[start:b], mass left of ``start`` folded into its first bin, mass from b on into its last;
    Q_q = quantize_histogram(hist[start:b], n_levels). ``ends`` defaults to every b >= start + n_levels.
    This is the curve :func:`kl_threshold` (start = 0) and :func:`kl_range` minimise; pass a subset of
    ends for a quick plot. Returns (r_maxs, D) as float64 arrays of len(ends).

    >>> h, e = histogram(torch.randn(10_000), absolute=True)
    >>> r_max, d = divergence_curve(h, e, 128, "js", ends=np.arange(128, 2049, 64))
    """
    h, e = _check_hist_edges(hist, bin_edges)
    metric = _check_metric(metric)
    n = _check_levels(n_levels, h.size - start)
    if ends is None:
        ends = np.arange(start + n, h.size + 1)
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size == 0 or (ends < start + n).any() or (ends > h.size).any():
        raise ValueError(f"ends must lie in [start + n_levels, len(hist)] = [{start + n}, {h.size}].")
    return e[ends], _search_from(h, int(start), ends, n, metric, left=float(h[:start].sum()))


class ThresholdSearch(NamedTuple):
    """Result of :func:`kl_threshold`: the best T, its candidate index, and the whole curve D(T)."""

    threshold: float
    index: int
    thresholds: np.ndarray
    divergences: np.ndarray


def kl_threshold(hist, bin_edges, bits: int = 8, signed: bool = True, metric: str = "kl") -> ThresholdSearch:
    r"""Symmetric calibration (TensorRT's entropy search): the clip threshold T minimising D(P || Q_q).

    ``hist`` is P_f of |x| (e.g. 2048 bins over [0, max|x|]; see :func:`histogram` (x, absolute=True)).
    n_levels = 2^(b-1) for a signed grid (one side of [q_min, q_max]), 2^b when unsigned (post-ReLU).
    For each candidate i = n_levels .. N (N = number of bins):
        P   = hist[:i] with all the mass beyond (hist[i:]) folded into bin i-1   (what clipping at T does);
        Q_q = quantize_histogram(hist[:i], n_levels)   (the kept bins on n_levels levels, *without* the
              folded mass, as in TensorRT: at i = n_levels, Q_q(P) would equal P and always win);
        D_i = kl_divergence(P, Q_q) (or symmetric_kl / js), both normalised to sum 1;
    T = bin_edges[i*] (right edge of the last bin kept), i* = argmin D_i (exact ties: the largest T).
    All candidates are evaluated together (no loop per candidate); near-ties are re-checked exactly.
    Then r_min, r_max = -T, T (signed) or 0, T (unsigned).

    Shapes: hist (N,), bin_edges (N+1,) with bin_edges[0] >= 0. Returns ThresholdSearch(threshold,
    index, thresholds (N-n_levels+1,), divergences (same shape)).
    Raises ValueError for N < n_levels, edges that do not start at >= 0, bad bits/metric, histogram errors.

    >>> x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    >>> 3.0 < kl_threshold(*histogram(x, absolute=True), bits=8).threshold < 5.0
    True
    """
    h, e = _check_hist_edges(hist, bin_edges)
    if e[0] < 0:
        raise ValueError("kl_threshold needs a histogram of |x| (edges from 0): use abs_histogram()")
    metric = _check_metric(metric)
    n = _n_levels(bits, signed, half=True)
    if h.size < n:
        raise ValueError(f"hist has {h.size} bins but needs >= n_levels = {n}; use more bins (2048 is usual)")
    ends = np.arange(n, h.size + 1)
    d = _search_from(h, 0, ends, n, metric)
    k = _best(d, lambda j: _direct(h, 0, int(ends[j]), n, metric))
    return ThresholdSearch(float(e[ends[k]]), int(ends[k]), e[ends], d)


def _best(d: np.ndarray, exact) -> int:
    """argmin with ties to the last candidate; candidates within 1e-9 of the minimum are re-evaluated
    with ``exact`` (the straightforward definition) so float summation order cannot flip the winner."""
    m = d.min()
    near = np.flatnonzero(d <= m + 1e-12 + 1e-9 * abs(m))
    if 1 < near.size <= 64:
        vals = np.array([exact(int(j)) for j in near])
        return int(near[np.flatnonzero(vals == vals.min())[-1]])
    return int(near[-1])


class RangeSearch(NamedTuple):
    """Result of :func:`kl_range`: the best (r_min, r_max) and the divergence over the coarse grid."""

    r_min: float
    r_max: float
    r_mins: np.ndarray
    r_maxs: np.ndarray
    divergences: np.ma.MaskedArray


def kl_range(hist, bin_edges, bits: int = 8, metric: str = "kl", n_candidates: int = 48) -> RangeSearch:
    r"""Asymmetric calibration: the clip range [r_min, r_max] (bins [a, b) of P_f of x) minimising D(P||Q_q).

    For each candidate pair (a, b) with r_min = bin_edges[a] <= 0 <= r_max = bin_edges[b] and
    b - a >= n_levels = 2^b (the whole unsigned grid q_min..q_max):
        P = hist[a:b], mass left of a folded into its first bin, mass right of b into its last;
        Q_q = quantize_histogram(hist[a:b], n_levels);  D = kl_divergence(P, Q_q) (or symmetric_kl / js).
    Coarse-to-fine: ``n_candidates`` values of a and of b, then every bin around the best pair.
    For post-ReLU data (r_min >= 0) only a = 0 is possible: the search is one-sided.

    Shapes: hist (N,), bin_edges (N+1,). Returns RangeSearch(r_min, r_max, r_mins (A,), r_maxs (B,),
    divergences (A, B) masked where a pair is not a valid candidate).
    Raises ValueError for N < 2^bits, bad bits/metric, histogram errors.

    >>> res = kl_range(*histogram(torch.randn(100_000) + 1), bits=8)
    >>> res.r_min < 0 < res.r_max
    True
    """
    h, e = _check_hist_edges(hist, bin_edges)
    metric = _check_metric(metric)
    n = _n_levels(bits, signed=False, half=False)
    N = h.size
    if N < n:
        raise ValueError(f"hist has {N} bins but needs >= 2^bits = {n}; use more bins (2048 is usual).")
    z0 = int(np.clip(np.searchsorted(e, 0.0, side="right") - 1, 0, N))  # bin holding r = 0
    a_max = min(z0, N - n)
    cum = np.concatenate(([0.0], np.cumsum(h)))

    def grid(lo, hi, k):
        return np.unique(np.round(np.linspace(lo, hi, max(2, k))).astype(np.int64))

    def evaluate(a_vals, b_vals):
        d = np.full((a_vals.size, b_vals.size), np.inf)
        for r, a in enumerate(a_vals):  # one vectorised call per start a (all its ends at once)
            ok = b_vals >= max(a + n, z0 + 1)
            if ok.any():
                d[r, ok] = _search_from(h, int(a), b_vals[ok], n, metric, left=cum[a])
        return d

    a_c, b_c = grid(0, a_max, n_candidates), grid(max(n, z0 + 1), N, n_candidates)
    d_c = evaluate(a_c, b_c)
    r, c = np.unravel_index(np.argmin(d_c), d_c.shape)
    step_a = int(np.diff(a_c).max()) if a_c.size > 1 else 0
    step_b = int(np.diff(b_c).max()) if b_c.size > 1 else 0
    a_f = np.arange(max(0, a_c[r] - step_a), min(a_max, a_c[r] + step_a) + 1)
    b_f = np.arange(max(n, z0 + 1, b_c[c] - step_b), min(N, b_c[c] + step_b) + 1)
    d_f = evaluate(a_f, b_f)
    flat = np.flatnonzero(d_f == d_f.min())
    best = max(flat, key=lambda f: (b_f[f % b_f.size] - a_f[f // b_f.size], -f))  # ties: widest range
    a_best, b_best = a_f[best // b_f.size], b_f[best % b_f.size]
    return RangeSearch(float(e[a_best]), float(e[b_best]), e[a_c], e[b_c], np.ma.masked_invalid(d_c))


# ----------------------------------------------------------------------------------------------------
# Baselines: min/max, percentile, MSE


def minmax_range(source) -> tuple[float, float]:
    r"""r_min = min(x), r_max = max(x) over all calibration data (raw x, an observer, or (hist, bin_edges)).

    >>> minmax_range(torch.tensor([-1.0, 2.0, 0.5]))
    (-1.0, 2.0)
    """
    if isinstance(source, _RangeObserver) and not isinstance(source, HistogramObserver):
        lo, hi = source.range()
        return float(lo.min()), float(hi.max())
    if isinstance(source, (HistogramObserver, tuple)):
        h, e = _source_histogram(source, 2048)
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


def percentile_range(source, pct: float = 99.99, symmetric: bool = False) -> tuple[float, float]:
    r"""Clip the tails: r_max = pct-th percentile of x, r_min = (100 - pct)-th percentile.

    symmetric: T = pct-th percentile of |x|, range [-T, T] (or [0, T] for non-negative data).
    ``source`` is raw x (exact quantiles) or a histogram of x, given as (hist, bin_edges) or a
    HistogramObserver (inverse CDF, uniform within bins).
    Raises ValueError for pct outside (50, 100], empty data, NaN/inf.

    >>> [round(v, 6) for v in percentile_range(torch.arange(1001.0), 99.0)]
    [10.0, 990.0]
    """
    pct = float(pct)
    if not 50.0 < pct <= 100.0:
        raise ValueError(f"pct must be in (50, 100], e.g. 99.99; got {pct!r}.")
    f = pct / 100.0
    if isinstance(source, (HistogramObserver, tuple)):
        h, e = _source_histogram(source, 2048)
        if symmetric:
            ha, ea = abs_histogram(h, e)
            t = _hist_quantile(ha, ea, f)
            return (-t if e[0] < 0 else 0.0), t
        return _hist_quantile(h, e, 1.0 - f), _hist_quantile(h, e, f)
    a = as_float_tensor(source, "x").detach().reshape(-1).double().numpy()
    if symmetric:
        t = float(np.quantile(np.abs(a), f))
        return (-t if a.min() < 0 else 0.0), t
    lo, hi = np.quantile(a, [1.0 - f, f])
    return float(lo), float(hi)


def _expected_mse(c: np.ndarray, w: np.ndarray, r_min, r_max, q_min, q_max, symmetric) -> np.ndarray:
    """sum_j w_j (c_j - fake_quantize(c_j))^2 for each candidate range (rows); s, z from scale_zero_point."""
    from .linear import scale_zero_point

    s, z = scale_zero_point(torch.as_tensor(r_min), torch.as_tensor(r_max), q_min, q_max, symmetric)
    s, z = s.double().numpy()[:, None], z.double().numpy()[:, None]
    r_hat = s * (np.clip(np.round(c[None, :] / s + z), q_min, q_max) - z)
    return ((c[None, :] - r_hat) ** 2 * w[None, :]).sum(1)


def mse_range(source, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
              n_candidates: int = 200) -> tuple[float, float]:
    r"""The clip range minimising the expected error  E[(r - r_hat)^2] = sum_j P_f(j) (c_j - r_hat(c_j))^2,

    with c_j the bin centres of P_f and r_hat = s (clip(round(c/s + z), q_min, q_max) - z), s and z from
    :func:`quantlab.scale_zero_point`. Candidates: symmetric T = max|x| k/K (k = 1..K, K = n_candidates);
    asymmetric (r_min, r_max) = (alpha min(x), beta max(x)) on a k x k grid (k = sqrt(5 K)), then a k x k
    grid one step around the best. Narrow ranges cut rounding error, wide ranges cut clipping error;
    the MSE balances the two.

    ``source``: raw x, (hist, bin_edges) of x, or a HistogramObserver. Returns (r_min, r_max).

    >>> lo, hi = mse_range(torch.randn(10_000), bits=4, symmetric=True)
    >>> 1.5 < hi < 3.5
    True
    """
    bits = check_bits(bits)
    signed = symmetric if signed is None else bool(signed)
    from .linear import qrange

    q_min, q_max = qrange(bits, signed=signed)
    h, e = _source_histogram(source, 2048)
    keep = h > 0  # empty bins add no error
    c = 0.5 * (e[:-1] + e[1:])[keep]
    w = h[keep] / h.sum()
    lo, hi = min(float(e[0]), 0.0), max(float(e[-1]), 0.0)
    if symmetric:
        top = max(-lo, hi) if signed else hi
        t = top * np.arange(1, n_candidates + 1) / n_candidates
        neg = -t if signed else np.zeros_like(t)
        err = _expected_mse(c, w, neg, t, q_min, q_max, True)
        k = int(np.flatnonzero(err == err.min())[-1])
        return float(neg[k]), float(t[k])
    def search(alphas, betas):  # every (alpha, beta) pair at once; ties go to the widest range
        al, be = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))
        err = _expected_mse(c, w, lo * al, hi * be, q_min, q_max, False)
        j = int(np.flatnonzero(err == err.min())[-1])
        return al[j], be[j]

    k = max(4, int(np.sqrt(n_candidates * 5)))  # coarse k x k grid, then k x k one step around the best
    frac = np.arange(1, k + 1) / k
    a0, b0 = search(frac if lo < 0 else np.ones(1), frac)
    fine = np.linspace(-1.0 / k, 1.0 / k, k + 1)
    a1, b1 = search(np.clip(a0 + fine, 1e-6, 1.0) if lo < 0 else np.ones(1), np.clip(b0 + fine, 1e-6, 1.0))
    return float(lo * a1), float(hi * b1)


# ----------------------------------------------------------------------------------------------------
# One entry point


def calibrate_range(source, method: str = "kl", bits: int = 8, symmetric: bool = False,
                    signed: bool | None = None, pct: float = 99.99, bins: int = 2048) -> tuple[float, float]:
    r"""(r_min, r_max) chosen by ``method`` in METHODS from calibration data; see :func:`calibrate`.

    >>> calibrate_range(torch.randn(10_000), "percentile", pct=99.0, symmetric=True)[1] > 2
    True
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    bits = check_bits(bits)
    signed = symmetric if signed is None else bool(signed)
    if method == "minmax":
        lo, hi = minmax_range(source)
        if symmetric:
            t = max(-lo, hi)
            return (-t if signed else min(lo, 0.0)), t
        return lo, hi
    if isinstance(source, _RangeObserver) and not isinstance(source, HistogramObserver):
        raise TypeError(
            f"method={method!r} needs a histogram; pass raw x, (hist, bin_edges) or a HistogramObserver "
            f"(a {type(source).__name__} only keeps min/max)."
        )
    if method == "percentile":
        return percentile_range(source, pct, symmetric)
    if method == "mse":
        return mse_range(source, bits, symmetric, signed)
    if symmetric:
        if isinstance(source, (HistogramObserver, tuple)):
            ha, ea = abs_histogram(*_source_histogram(source, bins), bins=bins)
        else:
            ha, ea = histogram(source, bins, absolute=True)
        t = kl_threshold(flatten_zero_bin(ha, ea), ea, bits, signed, method).threshold
        return (-t if signed else 0.0), t
    h, e = _source_histogram(source, bins)
    res = kl_range(flatten_zero_bin(h, e), e, bits=bits, metric=method)
    return res.r_min, res.r_max


def flatten_zero_bin(hist, bin_edges) -> np.ndarray:
    r"""Replace the count of the bin holding r = 0 by the mean of its neighbours (a copy is returned).

    After a ReLU (or zero padding) a large share of the activations is exactly 0: a spike in one bin.
    Any grid with r = 0 on it (z = 0 or an integer z) represents those zeros exactly, so they should not
    steer the clip; left in, merge-and-expand smears the spike over its chunk and the divergence search
    prefers absurdly small thresholds (chunks of one bin) at 6 and 4 bits. NVIDIA's pytorch-quantization
    does the same before its entropy search (``bins[0] = bins[1]``). Histograms with all their mass in
    that one bin are returned unchanged.

    >>> flatten_zero_bin(np.array([90.0, 4, 2, 1]), np.linspace(0, 4, 5))
    array([4., 4., 2., 1.])
    """
    h, e = _check_hist_edges(hist, bin_edges)
    z0 = int(np.clip(np.searchsorted(e, 0.0, side="right") - 1, 0, h.size - 1))
    neighbours = [h[k] for k in (z0 - 1, z0 + 1) if 0 <= k < h.size]
    out = h.copy()
    if neighbours and h.sum() > h[z0]:
        out[z0] = float(np.mean(neighbours))
    return out


def calibrate(source, method: str = "kl", bits: int = 8, symmetric: bool = False, signed: bool | None = None,
              pct: float = 99.99, bins: int = 2048, narrow: bool = False) -> QParams:
    r"""Calibrate one tensor's quantization: (s, z, q_min, q_max) = calibrate(data, method, bits).

    1. [r_min, r_max] by ``method``:
       "minmax" (all data), "percentile" (pct-th percentile, tails clipped), "mse" (min E[(r - r_hat)^2]),
       "kl" / "symmetric_kl" / "js" (min D(P || Q_q): :func:`kl_threshold` when symmetric, else
       :func:`kl_range`; the bin holding the exact zeros is first flattened, :func:`flatten_zero_bin`).
    2. [q_min, q_max] = qrange(bits, signed) (signed defaults to ``symmetric``: z = 0 needs a grid around 0;
       use symmetric=True, signed=False for post-ReLU data), then s, z = scale_zero_point(r_min, r_max, ...).

    ``source``: raw x (tensor/array), a HistogramObserver, a (hist, bin_edges) histogram of x, or (for
    "minmax" only) any min/max observer. Returns QParams(s, z, q_min, q_max), s float32, z int64.
    Raises ValueError for an unknown method, bad bits, empty data, NaN/inf, negative counts;
    TypeError for a min/max observer with a histogram method.

    >>> s, z, q_min, q_max = calibrate(torch.relu(torch.randn(10_000)), "kl", bits=8)
    >>> int(z), (q_min, q_max)
    (0, (0, 255))
    """
    r_min, r_max = calibrate_range(source, method, bits, symmetric, signed, pct, bins)
    return qparams_from_range(r_min, r_max, bits, symmetric, signed, narrow)


# ----------------------------------------------------------------------------------------------------
# The trained CNN: calibrate each ReLU's output, fake-quantize it with forward hooks


def collect_activations(model: torch.nn.Module, x: torch.Tensor, layer_type=torch.nn.ReLU) -> dict:
    """Run x through the model once; return {layer name: its output} for every ``layer_type`` module.

    >>> acts = collect_activations(load_trained(), calibration_batch(64))  # doctest: +SKIP
    """
    acts, handles = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, layer_type):
            hook = lambda m, i, o, name=name: acts.__setitem__(name, o.detach())
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hd in handles:
            hd.remove()
    return acts


def calibrate_model(acts: dict, method: str = "kl", bits: int = 8, **kw) -> dict:
    """{layer name: QParams} for every activation in ``acts`` (from :func:`collect_activations`).

    Post-ReLU data is non-negative, so the default here is symmetric=True, signed=False: unsigned grid,
    z = 0, range [0, T].

    >>> qp = calibrate_model(collect_activations(model, x_cal), "kl", bits=8)  # doctest: +SKIP
    """
    kw = {"symmetric": True, "signed": False, **kw}
    return {name: calibrate(a, method, bits, **kw) for name, a in acts.items()}


@contextlib.contextmanager
def fake_quantize_activations(model: torch.nn.Module, qparams: dict):
    """Inside the ``with`` block, each named module's output becomes fake_quantize(out, s, z, q_min, q_max).

    >>> with fake_quantize_activations(model, calibrate_model(acts, "kl", 4)):  # doctest: +SKIP
    ...     acc = evaluate(model, x_test, y_test)
    """
    from .linear import fake_quantize

    modules = dict(model.named_modules())
    missing = set(qparams) - set(modules)
    if missing:
        raise ValueError(f"qparams names modules the model does not have: {sorted(missing)}.")

    def hook_for(p):
        if p.s.numel() == 1:  # per tensor: PyTorch's fused kernel (same rounding, half to even), no checks
            s, z = float(p.s), int(p.z)
            return lambda m, i, o: torch.fake_quantize_per_tensor_affine(o, s, z, p.q_min, p.q_max)
        return lambda m, i, o: fake_quantize(o, p.s, p.z, p.q_min, p.q_max)

    handles = [modules[name].register_forward_hook(hook_for(p)) for name, p in qparams.items()]
    try:
        yield model
    finally:
        for hd in handles:
            hd.remove()

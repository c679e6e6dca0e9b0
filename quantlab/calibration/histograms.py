r"""Histograms P_f of calibration data: of x, of |x|, folded, with the zero spike flattened.

Everything here is NumPy float64 (the searches run on the CPU): tensors on any device are moved with
``.detach().cpu()`` first. The argument checks shared by the whole package live here too.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import as_float_tensor
from ..observers import HistogramObserver, rebin

__all__ = ["histogram", "abs_histogram", "flatten_zero_bin"]


def to_numpy(x, name: str = "x") -> np.ndarray:
    """x (tensor on any device, array, list) as a finite, non-empty float64 NumPy vector (copied to the CPU)."""
    return as_float_tensor(x, name).detach().cpu().reshape(-1).double().numpy()


def as_hist(p, name: str) -> np.ndarray:
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


def check_hist_edges(hist, bin_edges) -> tuple[np.ndarray, np.ndarray]:
    """(hist, bin_edges) checked: hist 1-D counts, edges len(hist) + 1 finite non-decreasing values."""
    h = as_hist(hist, "hist")
    if h.ndim != 1:
        raise ValueError(f"hist must be 1-D; got shape {h.shape}.")
    if bin_edges is None:
        raise TypeError("bin_edges is None; pass the edges returned with the histogram (np.histogram's second value).")
    e = bin_edges.detach().cpu().numpy() if isinstance(bin_edges, torch.Tensor) else bin_edges
    try:
        e = np.asarray(e, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"bin_edges must be an array of numbers; got {type(bin_edges).__name__}.") from err
    if e.shape != (h.size + 1,):
        raise ValueError(f"bin_edges must have len(hist) + 1 = {h.size + 1} entries; got shape {e.shape}.")
    if not np.isfinite(e).all() or (np.diff(e) < 0).any():
        raise ValueError("bin_edges must be finite and non-decreasing (as returned by np.histogram).")
    return h, e


def check_bins(bins, name: str = "bins") -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"{name} must be a positive int; got {bins!r} (2048 is the usual choice).")
    return int(bins)


def zero_bin(e: np.ndarray) -> int:
    """Index of the bin holding r = 0 (clipped to the histogram: bin 0 or the last bin if 0 is outside)."""
    return int(np.clip(np.searchsorted(e, 0.0, side="right") - 1, 0, e.size - 2))


def source_histogram(source, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(hist, edges) of x from raw data, a HistogramObserver, or a (hist, bin_edges) pair."""
    if isinstance(source, HistogramObserver):
        return source.histogram()
    if isinstance(source, tuple) and len(source) == 2:
        return check_hist_edges(*source)
    return histogram(source, bins)


def histogram(x, bins: int = 2048, absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    r"""P_f: counts of x (or |x| when ``absolute``) on ``bins`` equal bins over [min, max] ([0, max|x|]).

    Shapes: x any float shape, on any device (copied to the CPU: NumPy does the counting) ->
    hist (bins,) float64, bin_edges (bins+1,) float64.
    Constant data (min == max) puts all the mass in one bin (the last one when ``absolute``, so a
    threshold search keeps the whole value). Raises ValueError for empty x, NaN/inf, bins < 1;
    TypeError for integer x.

    >>> hist, edges = histogram(torch.randn(10_000), bins=2048, absolute=True)
    >>> float(hist.sum()), float(edges[0])
    (10000.0, 0.0)
    """
    bins = check_bins(bins)
    a = to_numpy(x)
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
    Raises ValueError for mismatched shapes, negative counts, NaN/inf, bins < 1.

    >>> h, e = abs_histogram(*histogram(torch.randn(1000)))
    >>> float(e[0]), float(h.sum())
    (0.0, 1000.0)
    """
    hist, edges = check_hist_edges(hist, bin_edges)
    bins = hist.size if bins is None else check_bins(bins)
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
    if not (pos.any() or neg.any()):  # every edge is 0: all values are exactly 0
        out[-1] = hist.sum()
    return out, new_edges


def _rebin_into(hist, edges, new_edges):
    if hist.size == 0 or hist.sum() == 0:
        return np.zeros(len(new_edges) - 1)
    return rebin(hist, edges, new_edges)


def flatten_zero_bin(hist, bin_edges) -> np.ndarray:
    r"""Replace the count of the bin holding r = 0 by the mean of its neighbours (a copy is returned).

    After a ReLU (or zero padding) a large share of the activations is exactly 0: a spike in one bin.
    Any grid with r = 0 on it (z = 0 or an integer z) represents those zeros exactly, so they should not
    steer the clip; left in, merge-and-expand smears the spike over its chunk and the divergence search
    prefers absurdly small thresholds. For a histogram of |x| (edges from 0) this is exactly NVIDIA's
    ``bins[0] = bins[1]`` (modelopt / pytorch-quantization ``_compute_amax_entropy``). Histograms with
    all their mass in that one bin are returned unchanged.

    Shapes: hist (n,), bin_edges (n+1,) -> (n,) float64. Raises as :func:`abs_histogram`.

    >>> flatten_zero_bin(np.array([90.0, 4, 2, 1]), np.linspace(0, 4, 5))
    array([4., 4., 2., 1.])
    """
    h, e = check_hist_edges(hist, bin_edges)
    if not e[0] <= 0.0 <= e[-1]:  # no bin holds r = 0 (e.g. strictly positive data): nothing to flatten
        return h.copy()
    z0 = zero_bin(e)
    neighbours = [h[k] for k in (z0 - 1, z0 + 1) if 0 <= k < h.size]
    out = h.copy()
    if neighbours and h.sum() > h[z0]:
        out[z0] = float(np.mean(neighbours))
    return out

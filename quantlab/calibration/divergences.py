r"""Divergences D(P, Q) between two histograms, and merge-and-expand (Q_q from P), under two merge rules.

Conventions (CONTRIBUTING.md): P and Q are normalised to sum 1; natural log; an empty q_i where p_i > 0
is smoothed to 1e-10, so :func:`kl_divergence` is never inf or NaN.

Merge rules (how the i bins of P are cut into n_levels chunks; see CONTRIBUTING.md for sources):

- ``"fractional"`` (NVIDIA modelopt / pytorch-quantization, TensorRT's entropy calibration):
  chunk boundaries ``np.linspace(0, i, n_levels + 1)``: bin j goes to chunk floor(j n_levels / i).
- ``"integer"`` (ONNX Runtime's entropy calibrator; lab 05's exercise): width w = i // n_levels, chunk k =
  [k w, (k+1) w), the last chunk also takes the remainder [(n_levels-1) w, i).
"""

from __future__ import annotations

import numbers

import numpy as np

from .histograms import as_hist

__all__ = ["METRICS", "MERGE_RULES", "SMOOTH", "kl_divergence", "symmetric_kl", "js_divergence", "divergence",
           "quantize_histogram"]

METRICS = ("kl", "symmetric_kl", "js")
MERGE_RULES = ("fractional", "integer")
#: Where p_i > 0 but q_i = 0, q_i is replaced by SMOOTH inside the log (keeps KL finite).
SMOOTH = 1e-10


def check_metric(metric) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")
    return metric


def check_merge(merge) -> str:
    if merge not in MERGE_RULES:
        raise ValueError(f"merge must be one of {MERGE_RULES} ('fractional' = NVIDIA's TensorRT entropy "
                         f"calibrator, 'integer' = lab 05's exercise); got {merge!r}.")
    return merge


def check_levels(n_levels, i: int | None = None, merge: str = "integer") -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, numbers.Integral) or n_levels < 1:
        raise ValueError(f"n_levels must be a positive int (128 at 8 bits signed); got {n_levels!r}.")
    if i is not None and i < n_levels and merge == "integer":
        raise ValueError(f"P has {i} bins but n_levels={n_levels}; the integer merge rule needs >= n_levels "
                         "bins (use more bins, fewer levels, or merge='fractional').")
    return int(n_levels)


def _pair(p, q) -> tuple[np.ndarray, np.ndarray]:
    p, q = as_hist(p, "p"), as_hist(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape; got {p.shape} and {q.shape}.")
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


def kl_terms(p: np.ndarray, q: np.ndarray, smooth: bool = True) -> np.ndarray:
    """Per-bin p_i log(p_i / max(q_i, 1e-10)), 0 where p_i = 0 (p, q already normalised).
    smooth=False: +inf where p_i > 0 = q_i (scipy.stats.entropy, as NVIDIA's calibrator computes KL)."""
    pos = p > 0
    safe_p = np.where(pos, p, 1.0)
    q_eff = np.maximum(q, SMOOTH) if smooth else np.where(pos & (q > 0), q, 1.0)
    out = np.where(pos, p * np.log(safe_p / q_eff), 0.0)
    return out if smooth else np.where(pos & (q <= 0), np.inf, out)


def terms(p: np.ndarray, q: np.ndarray, metric: str, smooth: bool = True) -> np.ndarray:
    """Per-bin contribution to D(P, Q) for metric in METRICS; D = the sum over bins."""
    if metric == "kl":
        return kl_terms(p, q, smooth)
    if metric == "symmetric_kl":
        return kl_terms(p, q, smooth) + kl_terms(q, p, smooth)
    m = 0.5 * (p + q)  # "js": M > 0 wherever p or q is, so no smoothing is ever needed
    return 0.5 * kl_terms(p, m) + 0.5 * kl_terms(q, m)


def _reduce(d: np.ndarray):
    return float(d) if d.ndim == 0 else d


def kl_divergence(p, q):
    r"""Kullback-Leibler divergence  KL(P || Q) = sum_{i: p_i > 0} p_i log(p_i / max(q_i, 1e-10)).

    P and Q are first normalised to sum 1 (so raw counts are fine); natural log. KL(P||P) = 0, KL >= 0,
    not symmetric. Bins with p_i = 0 contribute 0; an empty q_i where p_i > 0 is smoothed to 1e-10.

    Shapes: p, q (n,) -> float; or (..., n) -> array (..., ) (one divergence per row); tensors on any
    device are copied to the CPU.
    Raises ValueError for different shapes, empty, NaN/inf, negative counts or an all-zero histogram.

    >>> round(kl_divergence([1, 1], [1, 3]), 6)   # 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75)
    0.143841
    """
    p, q = _pair(p, q)
    return _reduce(kl_terms(p, q).sum(-1))


def symmetric_kl(p, q):
    r"""Symmetric KL divergence  KL(P || Q) + KL(Q || P)  (same normalisation and 1e-10 smoothing both ways).

    Shapes, raises: as :func:`kl_divergence`.

    >>> symmetric_kl([1, 1], [1, 3]) == symmetric_kl([1, 3], [1, 1])
    True
    """
    p, q = _pair(p, q)
    return _reduce(terms(p, q, "symmetric_kl").sum(-1))


def js_divergence(p, q):
    r"""Jensen-Shannon divergence  JS = 1/2 KL(P || M) + 1/2 KL(Q || M),  M = (P + Q)/2.

    Always finite (M > 0 wherever P or Q is), symmetric, 0 <= JS <= log 2 (disjoint supports).
    Shapes, raises: as :func:`kl_divergence`.

    >>> round(js_divergence([1, 0], [0, 1]), 6)    # log 2
    0.693147
    """
    p, q = _pair(p, q)
    return _reduce(terms(p, q, "js").sum(-1))


def divergence(p, q, metric: str = "kl"):
    """D(P, Q) by name: ``metric`` in ("kl", "symmetric_kl", "js"). See the three functions.

    Raises ValueError for an unknown metric (listing the valid ones) and as :func:`kl_divergence`.

    >>> divergence([1, 1], [1, 3], "js") > 0
    True
    """
    fn = {"kl": kl_divergence, "symmetric_kl": symmetric_kl, "js": js_divergence}[check_metric(metric)]
    return fn(p, q)


def chunk_of(i: int, n_levels: int, merge: str) -> np.ndarray:
    """Chunk index (0..n_levels-1) of each of the i bins of P under ``merge`` (see the module docstring)."""
    j = np.arange(i)
    if merge == "fractional":  # = np.digitize(j, np.linspace(0, i, n + 1)) - 1, exactly when n is 2^k
        return (j * n_levels) // i
    return np.minimum(j // (i // n_levels), n_levels - 1)


def quantize_histogram(p, n_levels: int, merge: str = "integer") -> np.ndarray:
    r"""Q_q from P by merge-and-expand: what P looks like when only n_levels values survive.

    P has i bins, cut into n_levels chunks by ``merge``:
      "integer" (the default here: lab 05's exercise; ONNX Runtime): w = i // n_levels,
          chunk k = bins [k w, (k+1) w), the last chunk also takes the remainder [(n_levels-1) w, i);
      "fractional" (NVIDIA modelopt / pytorch-quantization, the searches' default): boundaries
          np.linspace(0, i, n_levels + 1), bin j in chunk floor(j n_levels / i) (i < n_levels allowed).
    Each chunk's total mass is spread evenly over the bins of the chunk where p > 0; bins where p == 0
    stay 0. So Q_q has P's total mass and support.

    Shapes: p (i,) counts or probabilities (i >= n_levels for "integer") -> (i,) float64.
    Raises ValueError for i < n_levels ("integer"), n_levels < 1, an unknown merge rule, and the
    histogram errors of :func:`kl_divergence`.

    >>> quantize_histogram([2, 0, 1, 3], 2)    # chunks [2, 0] -> [2, 0]; [1, 3] -> [2, 2]
    array([2., 0., 2., 2.])
    >>> quantize_histogram([2, 0, 1, 3, 6], 2, merge="fractional")   # bins 0-2 | 3-4 (edge at 2.5)
    array([1.5, 0. , 1.5, 4.5, 4.5])
    """
    p = as_hist(p, "p")
    if p.ndim != 1:
        raise ValueError(f"p must be 1-D (one histogram); got shape {p.shape}.")
    merge = check_merge(merge)
    n = check_levels(n_levels, p.size, merge)
    k = chunk_of(p.size, n, merge)
    nz = p > 0
    mass = np.bincount(k, weights=p, minlength=n)
    count = np.bincount(k, weights=nz, minlength=n)
    return np.where(nz, mass[k] / np.maximum(count[k], 1), 0.0)

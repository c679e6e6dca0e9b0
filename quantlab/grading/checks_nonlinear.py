r"""Lab 03 checks (nonlinear quantization): log_quantize (power-of-two) and kmeans_step (one Lloyd step).

References come from :mod:`quantlab.nonlinear` (``pow2_quantize`` with log-domain rounding, ``lloyd_step``).
Inputs are NumPy float32 arrays; see the exercise cells of labs/03_nonlinear_quantization.ipynb.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..nonlinear import fake_pow2, lloyd_step, pow2_dequantize, pow2_quantize
from .core import Case, Diagnosis, Exercise, compare_array, compare_tuple, register, to_array

# ------------------------------------------------------------------------------------ log_quantize


def _ref_log(r, bits):
    """r_hat with s = max|r| (floored at EPS), m = clip(round(log2(|r|/s)) + K, 0, K)."""
    q, s = pow2_quantize(torch.from_numpy(np.asarray(r)), bits, rounding="log")
    return pow2_dequantize(q, s, bits).numpy()


def _log_cases():
    rng = np.random.default_rng(3)
    g = rng.normal(0, 1, 400).astype(np.float32)
    w = rng.laplace(0, 0.05, (8, 16)).astype(np.float32)
    z = np.array([0.0, 0.8, -0.8, 0.0, 0.001, -0.3, 0.55, 0.1], np.float32)
    return [
        Case("N(0,1), 400 values, 3 bits", (g, 3)),
        Case("Laplace weight (8, 16), 4 bits", (w, 4)),
        Case("with exact zeros and a tiny value, 3 bits", (z, 3)),
        Case("all zeros, 4 bits (s = max|r| = 0)", (np.zeros(6, np.float32), 4),
             hint="an all-zero tensor has s = 0: return zeros (never divide by s = 0 or take log2(0))."),
        Case("N(0,1), 400 values, 2 bits (levels 0, ±s)", (g, 2)),
    ]


def _m_linear(r, bits):
    return fake_pow2(torch.from_numpy(np.asarray(r)), bits, rounding="linear").numpy()


def _m_nosign(r, bits):
    return np.abs(_ref_log(r, bits))


def _m_floor(r, bits):
    r = np.asarray(r, np.float64)
    K = 2 ** (bits - 1) - 1
    s = max(np.abs(r).max(), np.finfo(np.float32).eps)
    with np.errstate(divide="ignore"):
        m = np.clip(np.floor(np.log2(np.abs(r) / s)) + K, 0, K)
    return (np.sign(r) * s * 2.0 ** (m - K) * (m > 0)).astype(np.float32)


def _m_noclip(r, bits):
    r = np.asarray(r, np.float64)
    s = max(np.abs(r).max(), np.finfo(np.float32).eps)
    with np.errstate(divide="ignore"):
        e = np.round(np.log2(np.abs(r) / s))
    return np.where(r == 0, 0.0, np.sign(r) * s * 2.0 ** np.maximum(e, -1e9)).astype(np.float32)


def _nan_where(case, got, negative: bool):
    a = to_array(got).astype(np.float64)
    r = np.asarray(case.args[0])
    bad = ~np.isfinite(a)
    if a.shape != r.shape or not bad.any():
        return False
    return bool((r[bad] < 0).all()) if negative else bool((r[bad] == 0).any() or not r.any())


register(Exercise(
    id="log_quantize", lab="03", points=3, reference=_ref_log, make_cases=_log_cases,
    compare=partial(compare_array, floating=True, rtol=1e-5, atol=1e-7),
    diagnoses=[
        Diagnosis("forgetting the sign: log2 of a negative number is NaN. Work with |r| and put sign(r) back: "
                  "r_hat = sign(r)·s·2^(m-K).", when=lambda c, got: _nan_where(c, got, True)),
        Diagnosis("log of zero: log2(0) = -inf (and an all-zero tensor has s = 0, so r/s is NaN). Map r = 0 to "
                  "the zero code m = 0, e.g. with np.where(r == 0, 0, ...), and floor s at a tiny positive number.",
                  when=lambda c, got: _nan_where(c, got, False)),
        Diagnosis("forgetting the sign: your values are all >= 0. Quantize |r|, then multiply by sign(r).",
                  mutant=_m_nosign),
        Diagnosis("nearest code in the wrong space: you rounded to the nearest level by |r - r_hat| (linear "
                  "domain); this exercise rounds the exponent, m = round(log2(|r|/s)) + K — they differ for "
                  "|r|/s between √2·2^j and 1.5·2^j.", mutant=_m_linear),
        Diagnosis("you truncated the exponent (floor) instead of rounding it: m = round(log2(|r|/s)) + K.",
                  mutant=_m_floor),
        Diagnosis("clip m to [0, K]: exponents below the smallest level give the zero code (m = 0), not an ever "
                  "smaller power of two.", mutant=_m_noclip),
    ],
    fallback_hint="s = max|r|; K = 2^(b-1) - 1; m = clip(round(log2(|r|/s)) + K, 0, K); "
                  "r_hat = sign(r)·s·2^(m-K) where m > 0, else 0.",
    # the library's power-of-two quantizer (every alias, e.g. quantlab.nonlinear.log.fake_pow2, is the same object);
    # pow2_levels / pow2_scale (the grid, s = max|r|) are helpers the exercise does not ask for: allowed.
    forbids=("quantlab.nonlinear.pow2_quantize", "quantlab.nonlinear.pow2_dequantize", "quantlab.nonlinear.fake_pow2",
             "quantlab.nonlinear.quantize_weight"),
))


# ------------------------------------------------------------------------------------- kmeans_step


def _ref_step(x, centroids):
    new, codes = lloyd_step(torch.from_numpy(np.asarray(x))[None], torch.from_numpy(np.asarray(centroids))[None])
    return new[0].numpy(), codes[0].numpy()


def _step_cases():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 200).astype(np.float32)
    return [
        Case("6 values, 2 centroids", (np.array([0.0, 0.2, 0.9, 1.0, 1.1, 0.1], np.float32),
                                        np.array([0.0, 1.0], np.float32))),
        Case("N(0,1) 200 values, 4 centroids", (x, np.array([-1.5, -0.5, 0.5, 1.5], np.float32))),
        Case("an empty cluster (no value near 0.5)", (np.array([0.0, 0.1, 0.9, 1.0], np.float32),
                                                      np.array([0.0, 0.5, 0.55, 1.0], np.float32)),
             hint="a centroid that receives no value keeps its old position."),
        Case("N(0,1) 200 values, 8 linear-init centroids", (x, np.linspace(x.min(), x.max(), 8).astype(np.float32))),
    ]


def _m_all(x, c):
    new, codes = _ref_step(x, c)
    return np.full_like(new, np.asarray(x).mean()), codes


def _m_over_n(x, c):
    x, c = np.asarray(x, np.float64), np.asarray(c)
    codes = np.abs(x[:, None] - c[None]).argmin(1)
    sums = np.array([x[codes == j].sum() for j in range(len(c))])
    return np.where(np.bincount(codes, minlength=len(c)) > 0, sums / len(x), c).astype(np.float32), codes


def _m_signed(x, c):
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    codes = (x[:, None] - c[None]).argmin(1)
    new = np.array([x[codes == j].mean() if (codes == j).any() else c[j] for j in range(len(c))])
    return new.astype(np.float32), codes


def _m_new_codes(x, c):
    new, _ = _ref_step(x, c)
    return new, np.abs(np.asarray(x)[:, None] - new[None]).argmin(1)


def _empty_trouble(case, got):
    c0 = np.asarray(case.args[1])
    cents = to_array(got[0])
    return cents.shape != c0.shape or not np.isfinite(cents).all()


register(Exercise(
    id="kmeans_step", lab="03", points=3, reference=_ref_step, make_cases=_step_cases,
    compare=lambda got, exp: compare_tuple(
        got, exp, (partial(compare_array, floating=True, rtol=1e-5, atol=1e-6), partial(compare_array, integral=True)),
        ("new_centroids", "codes")),
    diagnoses=[
        Diagnosis("empty clusters: the mean of no values is NaN (or the centroid disappeared). A centroid that "
                  "receives no value keeps its old position, so the codebook always has k entries.",
                  when=_empty_trouble),
        Diagnosis("centroid update over the wrong set: each centroid is the mean of ITS OWN values "
                  "(x[codes == j]), not of all values.", mutant=_m_all),
        Diagnosis("centroid update over the wrong set: divide each cluster's sum by the number of values IN that "
                  "cluster, not by all N values.", mutant=_m_over_n),
        Diagnosis("assign by distance |x - c| (or (x - c)^2); argmin of the signed difference x - c always picks "
                  "the largest centroid.", mutant=_m_signed),
        Diagnosis("return the codes of the assign step (nearest to the OLD centroids), then the update; you "
                  "re-assigned to the new centroids.", mutant=_m_new_codes),
    ],
    fallback_hint="codes = argmin_j |x - c_j| (ties: lower j); c_j = mean(x[codes == j]), or c_j unchanged if "
                  "no value has code j.",
    # the assign step (nearest_index) and the whole step are the exercise; kmeans_init is allowed. scikit-learn
    # and SciPy are optional: forbidden where installed (quantlab.grading.forbid.installed).
    forbids=("quantlab.nonlinear.lloyd_step", "quantlab.nonlinear.kmeans_codebook", "quantlab.nonlinear.nearest_index",
             "sklearn.cluster.KMeans", "sklearn.cluster.k_means", "scipy.cluster.vq.kmeans",
             "scipy.cluster.vq.kmeans2", "scipy.cluster.vq.vq"),
))

r"""Lab 05 checks (calibration): kl_divergence and quantize_histogram.

The references are written here, independently of :mod:`quantlab.calibration`, from the conventions in
CONTRIBUTING.md: P and Q normalised to sum 1, natural log,
KL(P||Q) = sum_{i: p_i > 0} p_i log(p_i / max(q_i, 1e-10)); merge-and-expand with chunk width
w = i // n_levels, the last chunk taking the remainder, mass spread over the chunk's non-zero bins.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .core import Case, Diagnosis, Exercise, compare_array, compare_scalar, register, to_array

SMOOTH = 1e-10


# ------------------------------------------------------------------------------- kl_divergence


def kl_reference(p, q) -> float:
    r"""KL(P||Q) = sum_{p_i > 0} p_i log(p_i / max(q_i, 1e-10)) of the normalised histograms (nats).

    >>> round(kl_reference([1, 1], [1, 3]), 6)
    0.143841
    """
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], SMOOTH))))


def _kl_cases():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.5, 2.0, 8)
    q1 = rng.uniform(0.5, 2.0, 8)
    return [
        Case("normalised, no zero bins", (p1 / p1.sum(), q1 / q1.sum())),
        Case("raw counts (normalise first)", (np.array([10.0, 30, 40, 20]), np.array([5.0, 5, 20, 10]))),
        Case("zero bins in p", (np.array([0.0, 4, 3, 0, 2, 1]), np.array([1.0, 3, 3, 1, 1, 1])),
             hint="bins with p_i = 0 contribute 0: sum only over p > 0 (0 * log 0 would be NaN)."),
        Case("zero bins in q where p > 0", (np.array([2.0, 3, 1, 4]), np.array([3.0, 0, 2, 5])),
             hint="an empty q_i where p_i > 0 is smoothed: use np.maximum(q, 1e-10) after normalising."),
        Case("P == Q gives 0", (np.array([1.0, 2, 3, 0]), np.array([2.0, 4, 6, 0]))),
    ]


#: What a learner's kl_divergence may not call: the library's divergences and torch's / SciPy's KL.
KL_FORBIDS = (
    "quantlab.calibration.kl_divergence", "quantlab.calibration.divergence", "quantlab.calibration.symmetric_kl",
    "torch.nn.functional.kl_div", "torch.kl_div", "scipy.stats.entropy", "scipy.special.rel_entr",
    "scipy.special.kl_div",
)


def _kl_mutant(kind):
    def m(p, q):
        p = np.asarray(p, np.float64)
        q = np.asarray(q, np.float64)
        if kind == "no_norm":
            mask = p > 0
            return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], SMOOTH))))
        if kind == "swapped":
            return kl_reference(q, p)
        if kind == "log2":
            return kl_reference(p, q) / np.log(2)
        if kind == "smooth_before":
            p, qs = p / p.sum(), np.maximum(q, SMOOTH)
            qs = qs / qs.sum()
            mask = p > 0
            return float(np.sum(p[mask] * np.log(p[mask] / qs[mask])))
        raise AssertionError(kind)
    return m


def _not_finite(case, got):
    a = to_array(got)
    return a.dtype.kind == "f" and not np.isfinite(a).all()


_cmp_kl = partial(compare_scalar, rtol=1e-6, atol=1e-9)

register(Exercise(
    id="kl_divergence", lab="05", points=2, reference=kl_reference, make_cases=_kl_cases, compare=_cmp_kl,
    diagnoses=[
        Diagnosis("log(0) leaked into the result (NaN or inf): skip bins with p_i = 0 and smooth empty q_i "
                  "with np.maximum(q, 1e-10).", when=_not_finite),
        Diagnosis("you forgot to normalise: divide P and Q by their sums (p / p.sum()) before the "
                  "divergence.",
                  mutant=_kl_mutant("no_norm")),
        Diagnosis("arguments swapped: you computed KL(Q||P); the text's KL(P||Q) weights by p_i: "
                  "sum p_i log(p_i / q_i).", mutant=_kl_mutant("swapped")),
        Diagnosis("use the natural log (np.log), not log base 2.", mutant=_kl_mutant("log2")),
        Diagnosis("normalise first, then smooth: q = q / q.sum(); np.maximum(q, 1e-10).",
                  mutant=_kl_mutant("smooth_before")),
    ],
    fallback_hint="normalise P and Q, then sum over p_i > 0 of p_i * log(p_i / max(q_i, 1e-10)).",
    forbids=KL_FORBIDS,
))


# ------------------------------------------------------------------------------- quantize_histogram


def quantize_histogram_reference(p, n_levels: int) -> np.ndarray:
    r"""Merge P's i bins into n_levels chunks and expand back.

    Chunk k = bins [k*w, (k+1)*w) with w = i // n_levels, the last chunk also taking [n_levels*w, i);
    each chunk's mass is spread evenly over its bins where p > 0 (bins with p == 0 stay 0).

    >>> quantize_histogram_reference(np.array([1.0, 0, 3, 4, 0]), 2)
    array([1. , 0. , 3.5, 3.5, 0. ])
    """
    p = np.asarray(p, np.float64)
    i = p.size
    w = i // n_levels
    out = np.zeros_like(p)
    for k in range(n_levels):
        lo, hi = k * w, (i if k == n_levels - 1 else (k + 1) * w)
        nz = p[lo:hi] > 0
        if nz.any():
            out[lo:hi][nz] = p[lo:hi].sum() / nz.sum()
    return out


def _qh_cases():
    return [
        Case("8 bins -> 4 levels, no zeros", (np.array([1.0, 3, 2, 2, 5, 1, 0.5, 0.5]), 4)),
        Case("8 bins -> 2 levels, zero bins", (np.array([4.0, 0, 2, 0, 1, 1, 0, 6]), 2),
             hint="bins where p == 0 stay 0; spread each chunk's mass over its non-zero bins only."),
        Case("10 bins -> 3 levels (remainder bin)", (np.array([1.0, 2, 0, 3, 3, 0, 1, 2, 4, 5]), 3),
             hint="w = i // n_levels; the last chunk also takes the remainder bins [n_levels * w, i)."),
        Case("11 bins -> 4 levels, an empty chunk", (np.array([2.0, 1, 0, 0, 0, 0, 3, 0, 1, 1, 2]), 4),
             hint="a chunk whose bins are all 0 has no mass to spread: it stays 0 (avoid 0 / 0)."),
        Case("n_levels == number of bins (identity)", (np.array([0.1, 0.0, 0.4, 0.5]), 4)),
    ]


#: What a learner's quantize_histogram may not call: the library's merge-and-expand, under whatever name
#: the calibration package gives each merge rule (patterns are matched when the exercise is graded).
QH_FORBIDS = ("quantlab.calibration.quantize_histogram", "quantlab.calibration.*quantize_histogram*",
              "quantlab.calibration.*merge*")


def _qh_mutant(kind):
    def m(p, n_levels):
        p = np.asarray(p, np.float64)
        i = p.size
        w = i // n_levels
        out = np.zeros_like(p) if kind != "remainder_kept" else p.copy()
        for k in range(n_levels + (kind == "remainder_own_chunk")):
            lo = k * w
            if kind in ("remainder_lost", "remainder_kept"):
                hi = (k + 1) * w
            elif kind == "remainder_own_chunk":
                hi = i if k == n_levels else (k + 1) * w
            else:
                hi = i if k == n_levels - 1 else (k + 1) * w
            if lo >= hi:
                continue
            chunk = p[lo:hi]
            nz = chunk > 0
            if kind == "all_bins":
                out[lo:hi] = chunk.sum() / chunk.size
            elif nz.any():
                out[lo:hi][nz] = chunk.sum() / nz.sum()
        return out
    return m


def _mass_changed(case, got):
    a = to_array(got)
    return a.shape == np.shape(case.args[0]) and not np.isclose(a.sum(), np.sum(case.args[0]), rtol=1e-6)


_REMAINDER = ("you lost the remainder bins: when i is not a multiple of n_levels, the last chunk covers "
              "[(n_levels - 1) * w, i), including the leftover bins.")

register(Exercise(
    id="quantize_histogram", lab="05", points=3, reference=quantize_histogram_reference, make_cases=_qh_cases,
    compare=partial(compare_array, floating=False, rtol=1e-6, atol=1e-9),
    diagnoses=[
        Diagnosis("a chunk with no non-zero bins produced NaN/inf (0 / 0): leave such a chunk at 0.",
                  when=_not_finite),
        Diagnosis("you spread each chunk's mass over all its bins; spread it only over the bins where p > 0 "
                  "(bins with p == 0 stay 0).", mutant=_qh_mutant("all_bins")),
        Diagnosis(_REMAINDER, mutant=_qh_mutant("remainder_lost")),
        Diagnosis(_REMAINDER, mutant=_qh_mutant("remainder_kept")),
        Diagnosis(_REMAINDER + " They are not a chunk of their own.",
                  mutant=_qh_mutant("remainder_own_chunk")),
        Diagnosis("mass not conserved: the output must have the same total as p — each chunk's sum is "
                  "divided among its non-zero bins (sum / count), not averaged over the chunk.",
                  when=_mass_changed),
    ],
    fallback_hint="w = i // n_levels; chunk k = bins [k*w, (k+1)*w) (last one up to i); put chunk.sum() / "
                  "(number of non-zero bins) on each non-zero bin.",
    forbids=QH_FORBIDS,
))

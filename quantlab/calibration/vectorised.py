r"""D(P_b || Q_b) for every candidate clip range [a, b) at once, for both merge rules (no loop per candidate).

For a candidate [a, b) of the histogram h (N bins, total T): P_b = h[a:b] / T with the mass left of a
folded into bin a and the mass from b on folded into bin b-1; Q_b = merge-and-expand of h[a:b] (n chunks,
each chunk's mass m_k spread over its c_k non-empty bins), normalised by S_b = sum h[a:b].

KL and symmetric KL in closed form from prefix sums, O(n) per candidate: with G = sum h log h,
F_b = sum_k m_k log(m_k / c_k) and LH_k = sum of log h over the non-empty bins of chunk k,
    KL(P||Q)  = (G - S log T - F + S log S) / T          + the two fold corrections,
    KL(Q||P)  = (F - S log S - sum_k (m_k / c_k) LH_k) / S + log T   + the fold corrections.
JS does not split this way: every non-empty bin of every candidate is evaluated (one flat array).
The "fractional" rule reproduces scipy.stats.entropy as NVIDIA's calibrator uses it: +inf where the
folded mass lands on an empty bin (p > 0 = q); the "integer" rule smooths that q to 1e-10 instead.
"""

from __future__ import annotations

import numpy as np

from .divergences import SMOOTH, quantize_histogram, terms

#: NVIDIA's first candidate (``start_bin=128`` in modelopt's ``compute_amax``), used by the fractional rule.
START_BIN = 128


def first_length(n: int, merge: str, n_bins: int, start_bin: int | None = None) -> int:
    """Shortest candidate [a, b) (in bins): n_levels for "integer", start_bin (128) for "fractional"."""
    if merge == "integer":
        return n
    return min(START_BIN if start_bin is None else start_bin, n_bins)


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x log(x / y) where x > 0 (y > 0 there), else 0."""
    pos = x > 0
    return np.where(pos, x * np.log(np.where(pos, x, 1.0) / np.where(pos, y, 1.0)), 0.0)


def _bounds(a: int, ends: np.ndarray, n: int, merge: str) -> np.ndarray:
    """(m, n+1) absolute bin boundaries of the n chunks of every candidate [a, b)."""
    L = (ends - a)[:, None]
    k = np.arange(n + 1)[None, :]
    if merge == "fractional":  # chunk k = bins j with k L / n <= j < (k+1) L / n
        return a + (k * L + n - 1) // n
    b = a + k * (L // n)
    b[:, n] = ends
    return b


def _fold_kl(H, Q, delta, smooth: bool):
    """Change of p log(p/q) when delta is added to p at one bin (arrays over candidates)."""
    new_p = H + delta
    q_eff = np.where(Q > 0, Q, SMOOTH if smooth else 1.0)
    new = _xlogy(new_p, q_eff)
    if not smooth:
        new = np.where((Q <= 0) & (new_p > 0), np.inf, new)
    return np.where(delta > 0, new - _xlogy(H, q_eff), 0.0)


def curve(h: np.ndarray, a: int, ends: np.ndarray, n: int, metric: str, merge: str,
          left: float = 0.0) -> np.ndarray:
    """D(P_b || Q_b) for every b in ``ends`` (ends > a; ends - a >= n for "integer")."""
    if metric == "js":
        return _js(h, a, ends, n, merge, left)
    T = h.sum()
    pos = h > 0
    cum = np.concatenate(([0.0], np.cumsum(h)))
    nzc = np.concatenate(([0], np.cumsum(pos)))
    G = np.concatenate(([0.0], np.cumsum(_xlogy(h, np.ones_like(h)))))
    B = _bounds(a, ends, n, merge)
    m_k = np.diff(cum[B], axis=1)
    c_k = np.diff(nzc[B], axis=1)
    S = cum[ends] - cum[a]
    S_safe = np.where(S > 0, S, 1.0)
    F = _xlogy(m_k, np.maximum(c_k, 1)).sum(1)
    d = (G[ends] - G[a] - S * np.log(T) - F + _xlogy(S, np.ones_like(S))) / T
    # the one or two bins that receive folded mass: bin a (left of a) and bin b-1 (from b on)
    L = ends - a
    k_last = (L - 1) * n // L if merge == "fractional" else np.full_like(L, n - 1)
    rows = np.arange(ends.size)

    def q_at(j, k):  # Q_b at bin j (chunk k) of each candidate
        return np.where(pos[j], m_k[rows, k] / np.maximum(c_k[rows, k], 1) / S_safe, 0.0)

    e = ends - 1
    d_last, d_first = (T - cum[ends]) / T, np.where(L > 1, left / T, 0.0)
    d_last = d_last + np.where(L == 1, left / T, 0.0)
    Q_last, Q_first = q_at(e, k_last), q_at(np.full_like(e, a), np.zeros_like(e))
    smooth = merge == "integer"
    d += _fold_kl(h[e] / T, Q_last, d_last, smooth) + _fold_kl(h[a] / T, Q_first, d_first, smooth)
    if metric == "symmetric_kl":
        log_h = np.where(pos, np.log(np.where(pos, h, 1.0)), 0.0)
        LH = np.diff(np.concatenate(([0.0], np.cumsum(log_h)))[B], axis=1)
        ratio = np.where(c_k > 0, m_k / np.maximum(c_k, 1), 0.0)
        rev = (F - _xlogy(S, np.ones_like(S)) - (ratio * LH).sum(1)) / S_safe + np.log(T)
        rev = np.where(S > 0, rev, 0.0)
        for j, Qj, dj in ((e, Q_last, d_last), (np.full_like(e, a), Q_first, d_first)):
            Hj = h[j] / T
            ratio = np.where(Qj > 0, Hj, 1.0) / np.where(Qj > 0, Hj + dj, 1.0)
            rev += np.where((Qj > 0) & (dj > 0), Qj * np.log(ratio), 0.0)
        d = d + rev
    return d


def _js(h, a, ends, n, merge, left) -> np.ndarray:
    """JS for every candidate, visiting only the non-empty bins (empty bins add nothing to any term).
    Elements are (candidate, non-empty bin in [a, b)) pairs; folds onto empty bins are added in closed form."""
    m = ends.size
    T = h.sum()
    p = h / T
    cum = np.concatenate(([0.0], np.cumsum(h)))
    S = cum[ends] - cum[a]
    tail = (T - cum[ends]) / T
    nzb = np.flatnonzero(h)
    lo = np.searchsorted(nzb, a)
    counts = np.searchsorted(nzb, ends) - lo
    cand = np.repeat(np.arange(m), counts)
    j = nzb[lo + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)]
    L = ends - a
    rel = j - a
    if merge == "fractional":
        chunk = rel * n // L[cand]
    else:
        chunk = np.minimum(rel // (L // n)[cand], n - 1)
    key = cand * n + chunk
    mass = np.bincount(key, weights=h[j], minlength=m * n)
    cnt = np.bincount(key, minlength=m * n)
    pv = p[j] + np.where(j == ends[cand] - 1, tail[cand], 0.0) + np.where(j == a, left / T, 0.0)
    qv = mass[key] / np.maximum(cnt[key], 1) / np.where(S > 0, S, 1.0)[cand]
    out = np.bincount(cand, weights=terms(pv, qv, "js"), minlength=m)
    # P's first / last bin filled only by folded mass (q = 0 there): JS term = 1/2 p log 2
    extra = np.where(h[ends - 1] == 0, tail, 0.0) + (left / T if h[a] == 0 else 0.0)
    return out + 0.5 * np.log(2.0) * extra


def direct(h: np.ndarray, a: int, b: int, n: int, metric: str, merge: str) -> float:
    """The same D for one candidate, straight from the definitions (used to settle near-ties)."""
    P = h[a:b].copy()
    P[0] += h[:a].sum()
    P[-1] += h[b:].sum()
    Q = quantize_histogram(h[a:b], n, merge) if h[a:b].sum() > 0 else np.zeros(b - a)
    return float(terms(P / P.sum(), Q / max(Q.sum(), 1e-300), metric, smooth=merge == "integer").sum())


def best(d: np.ndarray, exact) -> int:
    """argmin with ties to the last candidate (NVIDIA's "last argmin"); candidates within 1e-9 of the minimum
    are re-evaluated with ``exact`` (the definition) so float summation order cannot flip the winner."""
    m = d.min()
    near = np.flatnonzero(d <= m + 1e-12 + 1e-9 * abs(m)) if np.isfinite(m) else np.arange(d.size)
    if 1 < near.size <= 64:
        vals = np.array([exact(int(j)) for j in near])
        return int(near[np.flatnonzero(vals == vals.min())[-1]])
    return int(near[-1])

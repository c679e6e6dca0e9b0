r"""Lab 09 checks (beyond the text: transformers): group_quantize_int4 and smooth_layer.

References written here in NumPy (float64), independently of :mod:`quantlab.transformer_quant` and
:mod:`quantlab.smoothquant`:
group_quantize_int4(w, group_size): each row of w (R, K) cut into groups of ``group_size`` consecutive values
(the last group may be shorter), s = max|group| / 7, ŵ = s · clip(round(w / s), -7, 7) (an all-zero group
stays 0); smooth_layer(x, w, alpha): s_j = max_t|x_tj|^α / max_i|w_ij|^(1-α), returns (x / s, w · s).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .core import Case, Diagnosis, Exercise, compare_array, compare_tuple, register

# ---------------------------------------------------------------------------- group_quantize_int4


def group_quantize_int4_reference(w, group_size):
    """Per-group symmetric int4 (narrow grid ±7) fake-quant along each row; float64, w's shape.

    >>> group_quantize_int4_reference(np.array([[1.0, -0.6, 0.25, 8.0, 0.1]]), 3).round(4)
    array([[ 1.    , -0.5714,  0.2857,  8.    ,  0.    ]])
    """
    w = np.asarray(w, np.float64)
    out = np.empty_like(w)
    for j0 in range(0, w.shape[1], group_size):
        g = w[:, j0:j0 + group_size]
        s = np.abs(g).max(axis=1, keepdims=True) / 7
        s_safe = np.where(s == 0, 1.0, s)
        out[:, j0:j0 + group_size] = np.clip(np.round(g / s_safe), -7, 7) * s
    return out


def _group_cases():
    rng = np.random.default_rng(9)
    w1 = rng.normal(0, 0.05, (6, 64)).astype(np.float32)
    w1[2, 5] = 1.5  # one outlier weight: only its group's scale grows
    w2 = rng.normal(0, 1.0, (4, 40)).astype(np.float32)
    w3 = rng.normal(0, 1.0, (3, 12)).astype(np.float32)
    w3[:, 8:] *= 0.01
    return [
        Case("w (6, 64) float32 with one outlier, group_size=16", (w1, 16)),
        Case("w (4, 40), group_size=16: the last group of each row has 8 values", (w2, 16)),
        Case("w (3, 12), group_size=4, small last group", (w3, 4)),
        Case("w (4, 40), group_size=40: one group per row", (w2, 40)),
    ]


def _group_mutant(kind):
    def m(w, group_size):
        w = np.asarray(w, np.float64)
        if kind == "axis0":
            return group_quantize_int4_reference(w.T, group_size).T
        if kind == "tensor":
            s = np.abs(w).max() / 7
            return np.clip(np.round(w / s), -7, 7) * s
        if kind == "drop_partial":
            k = (w.shape[1] // group_size) * group_size
            out = w.copy()
            out[:, :k] = group_quantize_int4_reference(w[:, :k], group_size)
            return out
        raise AssertionError(kind)
    return m


register(Exercise(
    id="group_quantize_int4", lab="09", points=2, reference=group_quantize_int4_reference,
    make_cases=_group_cases, compare=partial(compare_array, rtol=1e-5, atol=1e-6),
    diagnoses=[
        Diagnosis("groups along the wrong axis: a group is group_size consecutive values of one ROW (the inputs "
                  "of one output), i.e. w[i, j0:j0 + group_size], not a run down a column.",
                  mutant=_group_mutant("axis0")),
        Diagnosis("one scale for the whole tensor: s must be the absmax of each group, "
                  "np.abs(w[:, j0:j0 + g]).max(axis=1, keepdims=True) / 7, not np.abs(w).max() / 7.",
                  mutant=_group_mutant("tensor")),
        Diagnosis("the last partial group was left unquantized: when group_size does not divide the row, the "
                  "last group is shorter and gets its own scale (loop j0 over range(0, K, group_size)).",
                  mutant=_group_mutant("drop_partial")),
    ],
    fallback_hint="for each group w[:, j0:j0+g]: s = max|group| / 7 per row, ŵ = s · clip(round(group / s), -7, 7).",
    forbids=("quantlab.transformer_quant.fake_quantize_weight", "quantlab.transformer_quant.quantize_linear_weights",
             "quantlab.gptq.rtn_quantize", "quantlab.granularity.fake_quantize_tensor",
             "quantlab.granularity.quantize_tensor", "quantlab.granularity.choose_qparams",
             "quantlab.granularity.range_of"),
))


# ------------------------------------------------------------------------------------- smooth_layer


def smooth_layer_reference(x, w, alpha):
    r"""(x / s, w · s) with s_j = max_t|x_tj|^α / max_i|w_ij|^(1-α); x (T, C_in), w (C_out, C_in); float64.

    >>> xs, ws = smooth_layer_reference(np.array([[100.0, 1.0]]), np.array([[1.0, 1.0]]), 0.5)
    >>> xs, ws
    (array([[10.,  1.]]), array([[10.,  1.]]))
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    s = np.abs(x).max(axis=0) ** alpha / np.abs(w).max(axis=0) ** (1 - alpha)
    return x / s, w * s


def _smooth_cases():
    rng = np.random.default_rng(10)
    x1 = rng.normal(0, 1, (8, 8)).astype(np.float32)
    x1[:, 3] *= 60  # an outlier channel
    w1 = rng.normal(0, 0.1, (8, 8)).astype(np.float32)
    x2 = rng.normal(0, 1, (16, 6)).astype(np.float32)
    x2[:, 0] *= 100
    w2 = rng.normal(0, 0.2, (4, 6)).astype(np.float32)
    return [
        Case("x (8, 8), w (8, 8), alpha=0.5", (x1, w1, 0.5)),
        Case("x (8, 8), w (8, 8), alpha=0.8", (x1, w1, 0.8)),
        Case("x (16, 6), w (4, 6) (C_out=4), alpha=0.5", (x2, w2, 0.5)),
        Case("alpha=0: s_j = 1 / max|W_j|", (x2, w2, 0.0)),
    ]


def _smooth_mutant(kind):
    def m(x, w, alpha):
        x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
        if kind == "swap":
            s = np.abs(x).max(axis=0) ** (1 - alpha) / np.abs(w).max(axis=0) ** alpha
            return x / s, w * s
        if kind == "no_w":
            return smooth_layer_reference(x, w, alpha)[0], w
        if kind == "axis":
            s = np.abs(x).max(axis=1) ** alpha / np.abs(w).max(axis=1) ** (1 - alpha)
            return x / s, w * s
        raise AssertionError(kind)
    return m


_pair = partial(compare_tuple, comparators=[partial(compare_array, rtol=1e-4, atol=1e-6)] * 2,
                names=["x / s", "w * s"])
_AXIS = ("max over the wrong axis: max|X_j| is over the tokens (axis 0 of x, one value per input channel j) "
         "and max|W_j| over the outputs (axis 0 of w, torch layout (C_out, C_in)).")

register(Exercise(
    id="smooth_layer", lab="09", points=2, reference=smooth_layer_reference, make_cases=_smooth_cases,
    compare=_pair,
    diagnoses=[
        Diagnosis("α on the wrong side: s_j = max|X_j|^α / max|W_j|^(1-α) — α is the exponent of the "
                  "ACTIVATION max (α = 1 moves everything onto the weights).", mutant=_smooth_mutant("swap")),
        Diagnosis("you forgot to scale W: the output X Wᵀ stays the same only if column j of w is multiplied by "
                  "s_j when channel j of x is divided by it — return (x / s, w * s).",
                  mutant=_smooth_mutant("no_w")),
        Diagnosis(_AXIS, mutant=_smooth_mutant("axis")),
        Diagnosis(_AXIS, on_error=lambda case, exc: isinstance(exc, ValueError) and "broadcast" in str(exc)),
    ],
    fallback_hint="s = np.abs(x).max(axis=0)**alpha / np.abs(w).max(axis=0)**(1 - alpha); return x / s, w * s.",
    forbids=("quantlab.smoothquant.smooth_scales", "quantlab.smoothquant.smoothquant",
             "quantlab.smoothquant.w8a8_linear_output"),
))

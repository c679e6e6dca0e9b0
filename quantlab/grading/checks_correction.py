r"""Lab 06 checks (correcting quantization errors): bias_correction and weight_correction.

References written here from the text, in NumPy (float64), independently of :mod:`quantlab.correction`:
bias term a_i - a_q per output channel (axis 1), means over the batch and every spatial position;
weight correction per output channel c (axis 0): u_c = E(w_c) - E(w_hat_c),
zeta_c = ||w_c - E(w_c)|| / ||w_hat_c - E(w_hat_c)||, w_hat_c <- zeta_c (w_hat_c + u_c); a channel with
||w_hat_c - E(w_hat_c)|| = 0 is returned unchanged.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .core import Case, Diagnosis, Exercise, compare_array, register, to_array

# ------------------------------------------------------------------------------- bias_correction


def bias_correction_reference(a_fp, a_q):
    r"""a_i - a_q per channel (axis 1): means over axis 0 and every axis after 1. Returns (C,) float64.

    >>> bias_correction_reference(np.ones((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)))
    array([1., 1., 1.])
    """
    a_fp, a_q = np.asarray(a_fp, np.float64), np.asarray(a_q, np.float64)
    axes = (0,) + tuple(range(2, a_fp.ndim))
    return a_fp.mean(axis=axes) - a_q.mean(axis=axes)


def _bias_cases():
    rng = np.random.default_rng(6)
    conv_fp = rng.normal(0.2, 1.0, (4, 3, 5, 5)).astype(np.float32)
    conv_q = (conv_fp + rng.normal(0.0, 0.3, conv_fp.shape) + np.array([0.5, -0.2, 0.1])[None, :, None, None]
              ).astype(np.float32)
    lin_fp = rng.normal(0.0, 1.0, (8, 4)).astype(np.float32)
    lin_q = (lin_fp + np.array([0.3, 0.0, -0.4, 0.2])).astype(np.float32)
    wide_fp = rng.normal(1.0, 2.0, (2, 6, 3, 7)).astype(np.float32)  # H != W, C != N
    wide_q = (wide_fp * 0.9).astype(np.float32)
    return [
        Case("conv outputs (N, C, H, W) = (4, 3, 5, 5)", (conv_fp, conv_q)),
        Case("linear outputs (N, C) = (8, 4)", (lin_fp, lin_q)),
        Case("conv outputs (2, 6, 3, 7)", (wide_fp, wide_q)),
        Case("no error: a_q == a_fp", (conv_fp, conv_fp.copy())),
    ]


def _bias_mutant(kind):
    def m(a_fp, a_q):
        a_fp, a_q = np.asarray(a_fp, np.float64), np.asarray(a_q, np.float64)
        if kind == "sign":
            return -bias_correction_reference(a_fp, a_q)
        if kind == "no_spatial":
            return a_fp.mean(axis=0) - a_q.mean(axis=0)
        if kind == "axis1":
            return a_fp.mean(axis=1) - a_q.mean(axis=1)
        if kind == "per_tensor":
            return np.full(a_fp.shape[1], a_fp.mean() - a_q.mean())
        raise AssertionError(kind)
    return m


def _spatial_left(case, got):
    a = to_array(got)
    return a.ndim > 1 and a.shape[0] == case.args[0].shape[1]


register(Exercise(
    id="bias_correction", lab="06", points=2, reference=bias_correction_reference, make_cases=_bias_cases,
    compare=partial(compare_array, rtol=1e-4, atol=1e-5),
    diagnoses=[
        Diagnosis("wrong sign: the text adds a_i - a_q (FP32 mean minus quantized mean) to the bias, so that "
                  "the corrected output mean equals the FP32 one — you computed a_q - a_i.",
                  mutant=_bias_mutant("sign")),
        Diagnosis("you forgot the spatial mean: average over the batch AND every position (H, W), i.e. over "
                  "every axis except the channel axis 1, e.g. a.mean(axis=(0, 2, 3)) for a conv output.",
                  mutant=_bias_mutant("no_spatial")),
        Diagnosis("you forgot the spatial mean: average over the batch AND every position (H, W), i.e. over "
                  "every axis except the channel axis 1.", when=_spatial_left),
        Diagnosis("wrong averaging axis: you averaged over the channels (axis 1). Keep axis 1 (one value per "
                  "output channel) and average over all the others.", mutant=_bias_mutant("axis1")),
        Diagnosis("one value for the whole layer: the correction is per output channel — one a_i - a_q for "
                  "each channel (axis 1).", mutant=_bias_mutant("per_tensor")),
    ],
    fallback_hint="a_i - a_q = a_fp.mean(axis=all but 1) - a_q.mean(axis=all but 1), one value per channel.",
    forbids=("quantlab.correction.bias_correction_term", "quantlab.correction.channel_mean",
             "quantlab.correction.empirical_bias_correction"),
))


# ------------------------------------------------------------------------------- weight_correction


def weight_correction_reference(w, w_hat):
    r"""The text's rule per output channel (axis 0); zero-variance channels unchanged. float64, w's shape.

    >>> weight_correction_reference(np.array([[1.0, 3.0]]), np.array([[1.0, 2.0]]))
    array([[3., 5.]])
    """
    w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
    axes = tuple(range(1, w.ndim))
    e_w, e_h = w.mean(axis=axes, keepdims=True), w_hat.mean(axis=axes, keepdims=True)
    n_w = np.sqrt(((w - e_w) ** 2).sum(axis=axes, keepdims=True))
    n_h = np.sqrt(((w_hat - e_h) ** 2).sum(axis=axes, keepdims=True))
    flat = n_h == 0
    zeta = n_w / np.where(flat, 1.0, n_h)
    return np.where(flat, w_hat, zeta * (w_hat + (e_w - e_h)))


def _fq(w, bits):
    s = np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True) / (2 ** (bits - 1) - 1)
    return (s * np.clip(np.round(w / s), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)).astype(np.float32)


def _weight_cases():
    rng = np.random.default_rng(7)
    conv = rng.normal(0.0, 0.2, (4, 2, 3, 3)).astype(np.float32)
    conv[1] += 0.1
    lin = rng.normal(0.05, 0.5, (3, 8)).astype(np.float32)
    flat = rng.normal(0.0, 0.01, (3, 6)).astype(np.float32)
    flat[0] = rng.normal(0.0, 1.0, 6)
    flat_hat = np.round(flat / 0.5).astype(np.float32) * 0.5  # channels 1, 2 all quantize to 0
    return [
        Case("conv weight (4, 2, 3, 3), 3 bits per channel", (conv, _fq(conv, 3))),
        Case("linear weight (3, 8), 2 bits per channel", (lin, _fq(lin, 2))),
        Case("linear weight (3, 8), 4 bits", (lin, _fq(lin, 4))),
        Case("channels whose quantized weights are all equal", (flat, flat_hat),
             hint="a channel with ||w_hat_c - E(w_hat_c)|| = 0 must be returned unchanged (no division by 0)."),
    ]


def _weight_mutant(kind):
    def m(w, w_hat):
        w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
        axes = (0,) if kind == "axis0" else tuple(range(1, w.ndim))
        e_w, e_h = w.mean(axis=axes, keepdims=True), w_hat.mean(axis=axes, keepdims=True)
        if kind == "variance":
            var_w = ((w - e_w) ** 2).mean(axis=axes, keepdims=True)
            zeta = var_w / ((w_hat - e_h) ** 2).mean(axis=axes, keepdims=True)
        elif kind == "std":
            zeta = (w - e_w).std(axis=axes, keepdims=True) ** 2 / (w_hat - e_h).std(axis=axes, keepdims=True) ** 2
        else:
            ss_w = ((w - e_w) ** 2).sum(axis=axes, keepdims=True)
            zeta = np.sqrt(ss_w / ((w_hat - e_h) ** 2).sum(axis=axes, keepdims=True))
        if kind == "mean_norm":
            out = (w_hat - e_h) * zeta + e_w
        elif kind == "no_scale_u":
            out = zeta * w_hat + (e_w - e_h)
        else:
            out = zeta * (w_hat + (e_w - e_h))
        return out
    return m


def _nan_on_flat(case, got):
    a = to_array(got)
    return a.dtype.kind == "f" and not np.isfinite(a).all()


register(Exercise(
    id="weight_correction", lab="06", points=3, reference=weight_correction_reference, make_cases=_weight_cases,
    compare=partial(compare_array, rtol=1e-4, atol=1e-6),
    diagnoses=[
        Diagnosis("division by zero: a channel whose quantized weights are all equal has "
                  "||w_hat_c - E(w_hat_c)|| = 0, so zeta_c is undefined. Leave such a channel unchanged "
                  "(np.where on the norm).", when=_nan_on_flat),
        Diagnosis("division by zero: a channel whose quantized weights are all equal has "
                  "||w_hat_c - E(w_hat_c)|| = 0. Leave such a channel unchanged.",
                  on_error=lambda c, e: isinstance(e, (ZeroDivisionError, FloatingPointError))),
        Diagnosis("you used the variance instead of the norm: zeta_c = ||w_c - E(w_c)|| / "
                  "||w_hat_c - E(w_hat_c)||, the square root of the sum of squared deviations.",
                  mutant=_weight_mutant("variance")),
        Diagnosis("you used the variance instead of the norm: zeta_c is a ratio of norms (square roots), "
                  "not of squared deviations.", mutant=_weight_mutant("std")),
        Diagnosis("wrong averaging axis: E(w_c) and the norms are taken over each output channel's weights "
                  "(every axis except 0), one value per channel.", mutant=_weight_mutant("axis0")),
        Diagnosis("that is the mean-and-norm rule ((w_hat - E(w_hat)) zeta + E(w)); this exercise asks for "
                  "the text's rule, w_hat_c <- zeta_c (w_hat_c + u_c).", mutant=_weight_mutant("mean_norm")),
        Diagnosis("zeta_c multiplies u_c too: w_hat_c <- zeta_c (w_hat_c + u_c), not zeta_c w_hat_c + u_c.",
                  mutant=_weight_mutant("no_scale_u")),
    ],
    fallback_hint="per output channel: u = E(w) - E(w_hat), zeta = ||w - E(w)|| / ||w_hat - E(w_hat)||, "
                  "return zeta * (w_hat + u); channels with zero spread unchanged.",
    forbids=("quantlab.correction.weight_correction", "quantlab.correction.correction_factors",
             "quantlab.correction.scale_shift"),
))

r"""Lab 02 checks (granularity): per_channel_minmax and per_channel_scale.

References come from :mod:`quantlab.granularity` (``range_of`` and ``choose_qparams`` with
``PerChannel(axis)``). Inputs are NumPy float32 weights; outputs keep every dimension (size 1 except on
``axis``) so they broadcast against w.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..granularity import PerChannel, choose_qparams, range_of
from .checks_linear import QPARAMS_FORBIDS
from .core import Case, Diagnosis, Exercise, compare_array, compare_tuple, register, to_array


def _weights():
    rng = np.random.default_rng(0)
    conv = rng.normal(0, 0.1, (4, 3, 2, 2)).astype(np.float32)
    conv[1] *= 5.0
    conv[2, 0, 0, 0] = -1.5  # a channel whose max |w| is negative (tests abs)
    lin = rng.normal(0, 1, (3, 5)).astype(np.float32)
    lin[0, 2] = -4.0
    lin[2] += 1.0
    return conv, lin


def _others(w, axis):
    return tuple(d for d in range(np.ndim(w)) if d != axis % np.ndim(w))


# ------------------------------------------------------------------------------- per_channel_minmax


def _ref_minmax(w, axis):
    lo, hi = range_of(torch.from_numpy(np.asarray(w)), PerChannel(axis))
    return lo.numpy(), hi.numpy()


def _minmax_cases():
    conv, lin = _weights()
    return [
        Case("conv weight (4, 3, 2, 2), axis 0", (conv, 0)),
        Case("linear weight (3, 5), axis 0", (lin, 0)),
        Case("linear weight (3, 5), axis 1", (lin, 1)),
        Case("conv weight, axis 1 (input channels)", (conv, 1)),
    ]


#: What a learner's per_channel_minmax may not call: the library's range_of and the per-channel observers.
MINMAX_FORBIDS = (
    "quantlab.granularity.range_of", "quantlab.observers.PerChannelMinMaxObserver.update",
    "torch.ao.quantization.observer.PerChannelMinMaxObserver.forward",
    "torch.ao.quantization.observer.PerChannelMinMaxObserver._forward",
)


def _cmp_pair(got, expected):
    return compare_tuple(got, expected, (partial(compare_array, rtol=0, atol=0),) * 2, ("r_min", "r_max"))


def _minmax_mutant(kind):
    def m(w, axis):
        w = np.asarray(w)
        if kind == "wrong_axis":
            return w.min(axis=axis, keepdims=True), w.max(axis=axis, keepdims=True)
        if kind == "wrong_axis_flat":
            return w.min(axis=axis), w.max(axis=axis)
        if kind == "per_tensor":
            return np.full((1,) * w.ndim, w.min()), np.full((1,) * w.ndim, w.max())
        if kind == "per_tensor_scalar":
            return w.min(), w.max()
        raise AssertionError(kind)
    return m


def _flat_result(case, got):
    """Right values, but not keepdims (e.g. shape (C,) instead of (C, 1, 1, 1))."""
    lo, hi = (to_array(g) for g in got)
    elo, ehi = case.expected
    return lo.shape != elo.shape and lo.size == elo.size and np.array_equal(lo.reshape(-1), elo.reshape(-1)) \
        and np.array_equal(hi.reshape(-1), ehi.reshape(-1))


_WRONG_AXIS = ("you reduced along the channel axis instead of the others: keep `axis` and take min/max over "
               "every other dimension, e.g. w.min(axis=tuple(d for d in range(w.ndim) if d != axis), "
               "keepdims=True).")

register(Exercise(
    id="per_channel_minmax", lab="02", points=2, reference=_ref_minmax, make_cases=_minmax_cases,
    compare=_cmp_pair,
    diagnoses=[
        Diagnosis(_WRONG_AXIS, mutant=_minmax_mutant("wrong_axis")),
        Diagnosis(_WRONG_AXIS, mutant=_minmax_mutant("wrong_axis_flat")),
        Diagnosis("you returned the per-tensor min/max (one value for the whole tensor); compute one "
                  "range per channel along `axis`.", mutant=_minmax_mutant("per_tensor")),
        Diagnosis("you returned the per-tensor min/max (one value for the whole tensor); compute one "
                  "range per channel along `axis`.", mutant=_minmax_mutant("per_tensor_scalar")),
        Diagnosis("right values, wrong shape: keep the reduced dimensions (keepdims=True) so r_min has shape "
                  "(C, 1, 1, 1) and broadcasts against w — a 1-D result does not.", when=_flat_result),
    ],
    fallback_hint="r_min, r_max = min and max over every dimension except `axis`, with keepdims=True.",
    forbids=MINMAX_FORBIDS,
))


# ------------------------------------------------------------------------------- per_channel_scale


def _ref_scale(w, bits, axis=0):
    p = choose_qparams(torch.from_numpy(np.asarray(w)), bits, PerChannel(axis), symmetric=True, narrow=True)
    return p.s.numpy()


def _scale_cases():
    conv, lin = _weights()
    return [
        Case("conv weight, 8 bits, axis 0", (conv, 8, 0)),
        Case("linear weight, 8 bits, axis 0", (lin, 8, 0)),
        Case("linear weight, 4 bits, axis 0", (lin, 4, 0)),
        Case("linear weight, 8 bits, axis 1", (lin, 8, 1)),
    ]


#: per_channel_scale may not call any range -> (s, z) path (lab 01's QPARAMS_FORBIDS); range_of, the
#: per-channel min/max it builds on, stays allowed (it is lab 02's other exercise, not this one).
SCALE_FORBIDS = QPARAMS_FORBIDS


def _scale_mutant(kind):
    def m(w, bits, axis=0):
        w = np.asarray(w, np.float64)
        dims = _others(w, axis)
        amax = np.abs(w).max(axis=dims, keepdims=True)
        if kind == "wrong_axis":
            return np.abs(w).max(axis=axis, keepdims=True) / (2 ** (bits - 1) - 1)
        if kind == "no_abs":
            return w.max(axis=dims, keepdims=True) / (2 ** (bits - 1) - 1)
        if kind == "2b-1":
            return amax / (2**bits - 1)
        if kind == "2b-1_half":
            return amax / 2 ** (bits - 1)
        raise AssertionError(kind)
    return m


_DENOM = ("the denominator is the largest level of the narrow signed grid, 2^(b-1) - 1 (127 at 8 bits): "
          "not 2^b - 1 and not 2^(b-1).")

register(Exercise(
    id="per_channel_scale", lab="02", points=2, reference=_ref_scale, make_cases=_scale_cases,
    compare=partial(compare_array, rtol=1e-5, atol=0),
    diagnoses=[
        Diagnosis(_WRONG_AXIS.replace("min/max", "max |w|"), mutant=_scale_mutant("wrong_axis")),
        Diagnosis("you forgot the absolute value: s_c = max |w_c| / (2^(b-1) - 1) — a channel whose largest "
                  "magnitude is negative needs np.abs.", mutant=_scale_mutant("no_abs")),
        Diagnosis(_DENOM, mutant=_scale_mutant("2b-1")),
        Diagnosis(_DENOM, mutant=_scale_mutant("2b-1_half")),
        Diagnosis("right values, wrong shape: keep the reduced dimensions (keepdims=True) so s broadcasts "
                  "against w.", when=lambda case, got: to_array(got).shape != case.expected.shape
                  and np.allclose(to_array(got).reshape(-1), case.expected.reshape(-1), rtol=1e-5)),
    ],
    fallback_hint="s_c = max |w_c| / (2^(b-1) - 1), reduced over every dimension except `axis` (keepdims).",
    forbids=SCALE_FORBIDS,
))

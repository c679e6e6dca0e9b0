r"""Lab 08 checks (1-bit networks): pack_sign_bits, xnor_popcount_dot, binarize_with_alpha.

References come from :mod:`quantlab.packing` (``pack_signs``) and :mod:`quantlab.binary`; the wrong solutions the
hints recognise are written here as mutants: inverted bits, most-significant-bit-first order, missing padding,
K - popcount instead of K - 2 popcount, padding counted as agreement, np.sign (sign(0) = 0), α over the wrong axis.
"""

from __future__ import annotations

import numpy as np
import torch

from ..binary import binarize_weights
from ..packing import pack_signs
from .core import Case, Diagnosis, Exercise, compare_array, compare_scalar, register, to_array

_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def _signs(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- pack_sign_bits


def _ref_pack(x):
    return pack_signs(np.asarray(x))


def _pack_cases():
    rng = np.random.default_rng(8)
    first = np.ones(8, np.float32)
    first[0] = -1.0
    return [
        Case("K = 8, only x[0] = -1 (-> word 1)", (first,)),
        Case("K = 64, random signs", (_signs(rng, 64),)),
        Case("K = 70 (ragged: 2 words, 58 padding bits)", (_signs(rng, 70),)),
        Case("K = 130, random signs", (_signs(rng, 130),)),
        Case("K = 5, all -1", (-np.ones(5, np.float32),)),
    ]


def _cmp_words(got, expected):
    try:
        a = to_array(got)
    except TypeError as e:
        return str(e)
    if a.dtype.kind not in "ui":
        return f"returned dtype {a.dtype}; the words must be integers (np.uint64)"
    if a.shape != expected.shape:
        return f"returned shape {a.shape}, expected {expected.shape} (ceil(K / 64) words)"
    a = a.astype(np.uint64)                                          # int64 words: same bits
    bad = a != expected
    if bad.any():
        i = int(np.argmax(bad))
        return f"word {i} differs: expected 0x{int(expected[i]):016x}, got 0x{int(a[i]):016x}"
    return None


def _words_from_bits(bits):
    bits = np.asarray(bits, np.uint8)
    pad = (-len(bits)) % 64
    by = np.packbits(np.concatenate([bits, np.zeros(pad, np.uint8)]), bitorder="little")
    return by.view("<u8").astype(np.uint64)


def _pack_mutant(kind):
    def m(x):
        x = np.asarray(x)
        if kind == "inverted":                                       # bit = 1 for +1
            return _words_from_bits(x > 0)
        if kind == "msb_first":                                      # element i in bit 63 - i
            w = _words_from_bits(x < 0)
            return np.array([int(f"{int(v):064b}"[::-1], 2) for v in w], dtype=np.uint64)
        if kind == "no_padding":                                     # the ragged tail dropped
            return _words_from_bits(x[: len(x) // 64 * 64] < 0) if len(x) >= 64 else np.zeros(0, np.uint64)
        if kind == "pad_ones":                                       # padded with -1 (bits 1)
            w = _words_from_bits(x < 0)
            r = len(x) % 64
            if r:
                w[-1] |= _ONES ^ np.uint64((1 << r) - 1)
            return w
        raise AssertionError(kind)
    return m


register(Exercise(
    id="pack_sign_bits", lab="08", points=2, reference=_ref_pack, make_cases=_pack_cases, compare=_cmp_words,
    diagnoses=[
        Diagnosis("your bits are inverted: the convention (larq's) is bit = 1 for -1 and 0 for +1.",
                  mutant=_pack_mutant("inverted")),
        Diagnosis("bit order: element i of a word goes in bit i counted from the least significant bit "
                  "(value 2**i), not from the top (2**(63 - i)).", mutant=_pack_mutant("msb_first")),
        Diagnosis("you forgot the padding: K = 70 needs ceil(70 / 64) = 2 words; pad the last word with 0 bits.",
                  mutant=_pack_mutant("no_padding")),
        Diagnosis("pad with 0 bits (= +1), not 1 bits: padding must be the same in both operands and is masked "
                  "anyway; 0 keeps unused bits clean.", mutant=_pack_mutant("pad_ones")),
    ],
    fallback_hint="word j = sum over i < 64 of 2**i for every element x[64 j + i] == -1; ceil(K/64) words, uint64.",
    # pack_negative is pack_signs without the ±1 check; pack_bits(q, 1, 0) packs 1-bit values in the same order.
    forbids=("quantlab.packing.pack_signs", "quantlab.packing.pack_negative", "quantlab.packing.pack_bits"),
))


# ------------------------------------------------------------------------------------------- xnor_popcount_dot


def _ref_dot(a_words, w_words, K):
    a, w = np.asarray(a_words, np.uint64), np.asarray(w_words, np.uint64)
    return int(K - 2 * sum(bin(int(v)).count("1") for v in (a ^ w)))


def _dot_cases():
    rng = np.random.default_rng(9)
    cases = []
    for K in (64, 70, 200, 1):
        a, w = _signs(rng, K), _signs(rng, K)
        cases.append(Case(f"K = {K}" + (" (ragged)" if K % 64 else ""), (pack_signs(a), pack_signs(w), K)))
    same = _signs(rng, 100)
    cases.append(Case("K = 100, a = w (a·w = K)", (pack_signs(same), pack_signs(same), 100)))
    return cases


def _popcount(a, w):
    return sum(bin(int(v)).count("1") for v in (np.asarray(a, np.uint64) ^ np.asarray(w, np.uint64)))


register(Exercise(
    id="xnor_popcount_dot", lab="08", points=2, reference=_ref_dot, make_cases=_dot_cases,
    compare=lambda got, exp: compare_scalar(got, exp, integral=True),
    diagnoses=[
        Diagnosis("each differing bit turns a +1 into a -1, which changes the sum by 2: a·w = K - 2·popcount, "
                  "not K - popcount.", mutant=lambda a, w, K: K - _popcount(a, w)),
        Diagnosis("the sign is flipped: bits that differ (XOR = 1) contribute -1, so a·w = K - 2·popcount(a XOR w).",
                  mutant=lambda a, w, K: 2 * _popcount(a, w) - K),
        Diagnosis("you counted the padding bits: use the true K, not 64 × (number of words) — the padding bits "
                  "agree (XNOR = 1) but are not values.", mutant=lambda a, w, K: 64 * len(a) - 2 * _popcount(a, w)),
        Diagnosis("you counted the XNOR (agreements, ~(a ^ w)) where the formula needs the XOR (disagreements): "
                  "a·w = K - 2·popcount(a XOR w).", mutant=lambda a, w, K: K - 2 * (64 * len(a) - _popcount(a, w))),
    ],
    fallback_hint="x = a_words ^ w_words; popcount = total number of 1 bits; return K - 2 * popcount.",
    forbids=("quantlab.binary_kernel.xnor_gemm_numpy", "quantlab.binary_kernel.xnor_gemm_numba",
             "quantlab.binary.xnor_gemm", "quantlab.binary.binary_matmul",
             # unpacking back to ±1 (or bits) turns the exercise into a float dot product
             "quantlab.packing.unpack_signs", "quantlab.packing.unpack_bits"),
))


# ------------------------------------------------------------------------------------------- binarize_with_alpha


def _ref_alpha(w):
    return binarize_weights(torch.from_numpy(np.asarray(w))).numpy()


def _alpha_cases():
    rng = np.random.default_rng(10)
    conv = rng.normal(0, 0.1, (4, 3, 2, 2)).astype(np.float32)
    conv[1] *= 4.0
    conv[0, 0, 0, 0] = conv[2, 1, 1, 0] = 0.0                         # exact zeros: sign(0) = +1
    lin = rng.normal(0, 1, (3, 5)).astype(np.float32)
    lin[1, 2] = 0.0
    lin[2] += 0.8
    return [
        Case("conv weight (4, 3, 2, 2) with two exact zeros", (conv,)),
        Case("linear weight (3, 5) with an exact zero", (lin,)),
        Case("linear weight (2, 3), no zeros", (np.array([[0.5, -1.0, 2.0], [-0.1, -0.2, 0.3]], np.float32),)),
        Case("conv weight (6, 2, 3, 3), one channel all negative", (_conv_negative(rng),)),
    ]


def _conv_negative(rng):
    w = rng.normal(0, 0.2, (6, 2, 3, 3)).astype(np.float32)
    w[3] = -np.abs(w[3])
    return w


def _alpha_mutant(kind):
    def m(w):
        w = np.asarray(w, np.float64)
        dims = tuple(range(1, w.ndim))
        sign = np.where(w >= 0, 1.0, -1.0)
        if kind == "np_sign":
            return np.abs(w).mean(axis=dims, keepdims=True) * np.sign(w)
        if kind == "per_tensor":
            return np.abs(w).mean() * sign
        if kind == "wrong_axis":
            return np.abs(w).mean(axis=0, keepdims=True) * sign
        if kind == "max":
            return np.abs(w).max(axis=dims, keepdims=True) * sign
        if kind == "no_abs":
            return w.mean(axis=dims, keepdims=True) * sign
        if kind == "no_alpha":
            return sign
        raise AssertionError(kind)
    return m


register(Exercise(
    id="binarize_with_alpha", lab="08", points=2, reference=_ref_alpha, make_cases=_alpha_cases,
    compare=lambda got, exp: compare_array(got, exp, floating=True, rtol=1e-5, atol=1e-7),
    diagnoses=[
        Diagnosis("sign(0): np.sign(0) is 0, which is not a binary value. Use +1 for 0 (BNN/larq): "
                  "np.where(w >= 0, 1.0, -1.0).", mutant=_alpha_mutant("np_sign")),
        Diagnosis("α is per output channel: mean |W| over every axis except 0 (keepdims=True), one α per row W[c] "
                  "— you used one α for the whole tensor.", mutant=_alpha_mutant("per_tensor")),
        Diagnosis("α over the wrong axis: average |W| over all axes *except* axis 0 (the output channels), "
                  "not over axis 0.", mutant=_alpha_mutant("wrong_axis")),
        Diagnosis("α = mean |W_c| (it minimises ||W_c - α sign W_c||²), not max |W_c|.", mutant=_alpha_mutant("max")),
        Diagnosis("α = mean of |W_c| — take the absolute value before averaging.", mutant=_alpha_mutant("no_abs")),
        Diagnosis("you returned sign(W) only; multiply by α_c = mean |W_c| of each output channel.",
                  mutant=_alpha_mutant("no_alpha")),
    ],
    fallback_hint="alpha = np.abs(w).mean(axis=tuple(range(1, w.ndim)), keepdims=True); "
                  "return alpha * np.where(w >= 0, 1.0, -1.0).",
    forbids=("quantlab.binary.binarize_weights", "quantlab.binary.binary_weight_scale", "quantlab.binary.binarize",
             "quantlab.binary.sign_ste", "quantlab.binary.SignSTE.forward"),
))

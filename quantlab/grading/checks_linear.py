r"""Lab 01 checks (linear quantization): quantize, dequantize, asymmetric_params, symmetric_params.

References come from :mod:`quantlab.linear`; the wrong solutions listed as mutants are the usual
mistakes, each with its hint. Inputs are NumPy float32 arrays (r) and Python numbers or broadcasting
NumPy arrays (s, z, per-channel shapes such as (C, 1, 1, 1)).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..linear import dequantize as lib_dequantize
from ..linear import quantize as lib_quantize
from ..linear import scale_zero_point
from .core import Case, Diagnosis, Exercise, compare_array, compare_scalar, compare_tuple, register, to_array

_rng = lambda: np.random.default_rng(0)  # noqa: E731 - each builder starts from the same seed


def _no_ties(r, s, z, margin=1e-3):
    """Assert that r/s + z is not near a .5 tie (float32 vs float64 learners must agree)."""
    x = np.asarray(r, np.float64) / np.asarray(s, np.float64) + np.asarray(z, np.float64)
    frac = np.abs(x - np.floor(x) - 0.5)
    assert (frac > margin).all(), "test case too close to a rounding tie"
    return r


# ------------------------------------------------------------------------------- quantize


def _ref_quantize(r, s, z, q_min, q_max):
    return lib_quantize(r, s, z, q_min, q_max).astype(np.int64)


def _quantize_cases():
    rng = _rng()
    r1 = np.array([-1.23, -0.61, -0.04, 0.0, 0.26, 0.77, 1.49], np.float32)
    w = rng.normal(0, 1, (4, 3, 2, 2)).astype(np.float32)
    s_c = np.array([0.02, 0.011, 0.017, 0.013], np.float32).reshape(4, 1, 1, 1)
    z_c = np.array([3, -5, 0, 7]).reshape(4, 1, 1, 1)
    x2 = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
    s_row = np.array([0.0113, 0.0071, 0.0093], np.float32)
    r_wide = np.array([-3.0, -1.1, 0.3, 1.7, 2.9, 40.0], np.float32)
    return [
        Case("scalar s, z = 0", (_no_ties(r1, 0.1, 0), 0.1, 0, -128, 127)),
        Case("asymmetric z", (_no_ties(r1, 0.013, 11), np.float32(0.013), 11, -128, 127)),
        Case("values outside the grid (clip)", (_no_ties(r_wide, 0.13, -3), 0.13, -3, -8, 7),
             hint="values beyond the grid must be clipped to [q_min, q_max]."),
        Case("per-channel s, z of shape (C, 1, 1, 1)", (_no_ties(w, s_c, z_c), s_c, z_c, -128, 127),
             hint="per-channel s and z have shape (C, 1, 1, 1): write r / s + z and let NumPy broadcast."),
        Case("per-column s of shape (3,)", (_no_ties(x2, s_row, 2), s_row, 2, 0, 255),
             hint="s has one value per column; r / s broadcasts it."),
        Case("ties x.5 (round half to even)",
             (np.array([0.25, 0.75, 1.25, -0.25, -0.75, 0.1], np.float32), 0.5, 0, -128, 127),
             hint="on an exact tie (x.5) round to the even neighbour: np.round(2.5) == 2."),
    ]


#: What a learner's quantize may not call: the library's and torch's quantize (and fake-quantize, which
#: rounds and clips for you). Helpers such as ql.qrange stay allowed.
QUANTIZE_FORBIDS = (
    "quantlab.linear.quantize", "quantlab.linear.fake_quantize", "quantlab.linear.FakeQuantizeSTE.forward",
    "quantlab.granularity.quantize_tensor", "quantlab.granularity.fake_quantize_tensor",
    "torch.quantize_per_tensor", "torch.quantize_per_channel", "torch.quantize_per_tensor_dynamic",
    "torch.fake_quantize_per_tensor_affine", "torch.fake_quantize_per_channel_affine",
    "torch.ops.aten.quantize_per_tensor", "torch.ops.aten.fake_quantize_per_tensor_affine",
)


def _q(x, q_min, q_max, clip=True):
    x = np.asarray(x, np.float64)
    return np.clip(x, q_min, q_max) if clip else x


def _as_np(a):
    return np.asarray(a, np.float64)


_QUANTIZE_HINTS = {
    "clip": "you forgot to clip: values outside the grid must be clamped, np.clip(q, q_min, q_max).",
    "trunc": "you truncated (astype(int), np.trunc or np.floor) instead of rounding: use np.round(r / s + z) "
             "before converting to integers.",
    "half_up": "ties x.5 must round half to even (np.round / torch.round), not half up (floor(x + 0.5)) or "
               "half away from zero (Python's round on floats is fine; math.floor(x + 0.5) is not).",
    "z_sign": "the zero point is added, q = round(r / s + z); you subtracted it.",
    "mul_s": "s is the step between levels: divide by it (r / s), don't multiply.",
    "shape": "return an array with the same shape as r (no flattening, no reduction).",
    "broadcast": "per-channel s and z are arrays that broadcast against r (shape (C, 1, 1, 1)); don't turn "
                 "them into numbers with float(s), int(z) or .item() — just write r / s + z.",
}


def _mk_quantize_mutant(kind):
    def m(r, s, z, q_min, q_max):
        r, s, z = _as_np(r), _as_np(s), _as_np(z)
        x = r / s + z
        if kind == "clip":
            return np.round(x)
        if kind == "trunc":
            return np.clip(np.trunc(x), q_min, q_max)
        if kind == "floor":
            return np.clip(np.floor(x), q_min, q_max)
        if kind == "trunc_noclip":
            return np.trunc(x)
        if kind == "half_up":
            return np.clip(np.floor(x + 0.5), q_min, q_max)
        if kind == "half_away":
            return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), q_min, q_max)
        if kind == "z_sign":
            return np.clip(np.round(r / s - z), q_min, q_max)
        if kind == "mul_s":
            return np.clip(np.round(r * s + z), q_min, q_max)
        if kind == "first_channel":
            return np.clip(np.round(r / s.flat[0] + z.flat[0]), q_min, q_max)
        raise AssertionError(kind)
    return m


def _wrong_shape(case, got):
    a = to_array(got)
    return a.shape != np.shape(case.expected)


def _broadcast_error(case, exc):
    return np.ndim(case.args[1]) > 0 or np.ndim(case.args[2]) > 0


_ints = partial(compare_array, integral=True)

register(Exercise(
    id="quantize", lab="01", points=3, reference=_ref_quantize, make_cases=_quantize_cases, compare=_ints,
    diagnoses=[
        Diagnosis(_QUANTIZE_HINTS["clip"], mutant=_mk_quantize_mutant("clip")),
        Diagnosis(_QUANTIZE_HINTS["trunc"], mutant=_mk_quantize_mutant("trunc")),
        Diagnosis(_QUANTIZE_HINTS["trunc"], mutant=_mk_quantize_mutant("floor")),
        Diagnosis(_QUANTIZE_HINTS["trunc"], mutant=_mk_quantize_mutant("trunc_noclip")),
        Diagnosis(_QUANTIZE_HINTS["half_up"], mutant=_mk_quantize_mutant("half_up"),
                  only=("ties x.5 (round half to even)",)),
        Diagnosis(_QUANTIZE_HINTS["half_up"], mutant=_mk_quantize_mutant("half_away"),
                  only=("ties x.5 (round half to even)",)),
        Diagnosis(_QUANTIZE_HINTS["z_sign"], mutant=_mk_quantize_mutant("z_sign")),
        Diagnosis(_QUANTIZE_HINTS["mul_s"], mutant=_mk_quantize_mutant("mul_s")),
        Diagnosis(_QUANTIZE_HINTS["broadcast"], mutant=_mk_quantize_mutant("first_channel"),
                  only=("per-channel s, z of shape (C, 1, 1, 1)", "per-column s of shape (3,)")),
        Diagnosis(_QUANTIZE_HINTS["broadcast"], on_error=_broadcast_error),
        Diagnosis(_QUANTIZE_HINTS["shape"], when=_wrong_shape),
    ],
    fallback_hint="q = clip(round(r / s + z), q_min, q_max), with np.round (half to even).",
    forbids=QUANTIZE_FORBIDS,
))


# ------------------------------------------------------------------------------- dequantize


def _ref_dequantize(q, s, z):
    return lib_dequantize(q, s, z)


def _dequantize_cases():
    rng = _rng()
    q = np.array([-128, -7, 0, 3, 64, 127], np.int32)
    qc = rng.integers(0, 256, (3, 4)).astype(np.int32)
    s_c = np.array([0.013, 0.021, 0.0071], np.float32).reshape(3, 1)
    z_c = np.array([128, 120, 131]).reshape(3, 1)
    return [
        Case("scalar s, z = 0", (q, 0.1, 0)),
        Case("asymmetric z", (q.astype(np.int64), 0.013, 11)),
        Case("uint8 q, z = 128", (np.array([0, 17, 128, 200, 255], np.uint8), 0.0317, 128)),
        Case("per-channel s, z of shape (C, 1)", (qc, s_c, z_c)),
    ]


#: What a learner's dequantize may not call: the library's, and torch's quantized-tensor route.
DEQUANTIZE_FORBIDS = (
    "quantlab.linear.dequantize", "torch.dequantize", "torch._make_per_tensor_quantized_tensor",
    "torch._make_per_channel_quantized_tensor", "torch.ops.aten.dequantize",
)


def _mk_deq_mutant(kind):
    def m(q, s, z):
        q, s, z = _as_np(q), _as_np(s), _as_np(z)
        return {"no_z": s * q, "plus_z": s * (q + z), "minus_zs": s * q - z}[kind].astype(np.float32)
    return m


def _returned_ints(case, got):
    a = to_array(got)
    return a.dtype.kind in "iub"


register(Exercise(
    id="dequantize", lab="01", points=1, reference=_ref_dequantize, make_cases=_dequantize_cases,
    compare=partial(compare_array, floating=True),
    diagnoses=[
        Diagnosis("you returned integers: r_hat = s * (q - z) is real-valued; compute in float "
                  "(s * (q - z) with a float s already is).", when=_returned_ints),
        Diagnosis("you forgot the zero point: r_hat = s * (q - z).", mutant=_mk_deq_mutant("no_z")),
        Diagnosis("the zero point is subtracted, not added: r_hat = s * (q - z).",
                  mutant=_mk_deq_mutant("plus_z")),
        Diagnosis("subtract z before scaling: s * (q - z), not s * q - z.",
                  mutant=_mk_deq_mutant("minus_zs")),
    ],
    fallback_hint="r_hat = s * (q - z), as a float array of q's shape.",
    forbids=DEQUANTIZE_FORBIDS,
))


# ------------------------------------------------------------------------------- (s, z)


def _ref_params(symmetric, r_min, r_max, q_min, q_max):
    s, z = scale_zero_point(torch.tensor(float(r_min)), torch.tensor(float(r_max)), q_min, q_max, symmetric)
    return float(s), int(z)


def _cmp_s(got, expected):
    return compare_scalar(got, expected, rtol=1e-5, atol=0)


def _cmp_z(got, expected):
    return compare_scalar(got, expected, integral=True)


def _cmp_sz(got, expected):
    return compare_tuple(got, expected, (_cmp_s, _cmp_z), ("s", "z"))


def _cmp_sz_constant(got, expected):
    """Constant input: any finite s > 0 is accepted (EPS is the convention); z must equal the reference."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"returned {type(got).__name__}, expected a tuple (s, z)"
    try:
        s = to_array(got[0]).reshape(-1)
    except TypeError as e:
        return f"s: {e}"
    if s.size != 1 or not np.isfinite(s[0]) or s[0] <= 0:
        return f"s: returned {s.tolist()}, expected a number > 0 (floor s at EPS for constant input)"
    reason = compare_scalar(got[1], expected[1], integral=True)
    return None if reason is None else f"z: {reason}"


def _sz(got):
    return float(to_array(got[0]).reshape(())), float(to_array(got[1]).reshape(()))


def _asym_cases():
    def c(name, r_min, r_max, q_min, q_max, **kw):
        s, _ = _ref_params(False, r_min, r_max, q_min, q_max)
        _no_ties(min(r_min, 0.0), s, 0)
        return Case(name, (r_min, r_max, q_min, q_max), **kw)
    return [
        c("unsigned grid [0, 255]", -1.0, 3.0, 0, 255),
        c("signed grid [-128, 127]", -0.73, 2.11, -128, 127),
        c("4-bit grid, mostly negative", -5.3, 0.7, -8, 7),
        c("r_min > 0 (range must include 0)", 0.5, 2.5, -128, 127,
          hint="widen the range to contain 0 first: r_min = min(r_min, 0), r_max = max(r_max, 0)."),
        Case("constant input r_min = r_max = 0", (0.0, 0.0, 0, 255), compare=_cmp_sz_constant,
             hint="for constant input r_max - r_min = 0, so s = 0 and r / s blows up: floor s at EPS "
                  "(float32 eps), s = max(s, EPS)."),
    ]


#: What a learner's asymmetric_params / symmetric_params may not call: every library path from a range to
#: (s, z) (scale_zero_point, qparams_from_range, choose_qparams, the observers' qparams) and torch's
#: observers and qparams helpers. (Also used by lab 02's per_channel_scale.)
QPARAMS_FORBIDS = (
    "quantlab.linear.scale_zero_point", "quantlab.granularity.qparams_from_range",
    "quantlab.granularity.choose_qparams", "quantlab.granularity.quantize_tensor",
    "quantlab.observers.MinMaxObserver.qparams", "quantlab.observers.PerChannelMinMaxObserver.qparams",
    "quantlab.observers.HistogramObserver.qparams",
    "torch.ao.quantization.observer.UniformQuantizationObserverBase._calculate_qparams",
    "torch.ao.quantization.observer.MinMaxObserver.calculate_qparams",
    "torch.ao.quantization.observer.PerChannelMinMaxObserver.calculate_qparams",
    "torch.ao.quantization.observer.HistogramObserver.calculate_qparams",
    "torch.ao.quantization.utils.determine_qparams", "torch._choose_qparams_per_tensor",
    "torch.choose_qparams_optimized",
)


def _widen(r_min, r_max):
    return min(r_min, 0.0), max(r_max, 0.0)


def _s_matches(fn):
    def when(case, got):
        s, _ = _sz(got)
        want = fn(*case.args)
        return want is not None and np.isclose(s, want, rtol=1e-5, atol=0) and not np.isclose(
            s, case.expected[0], rtol=1e-5, atol=0)
    return when


def _z_not_integer(case, got):
    _, z = _sz(got)
    return z != round(z)


def _z_sign(case, got):
    s, z = _sz(got)
    r_min, _ = _widen(*case.args[:2])
    q_min, q_max = case.args[2:]
    cands = {q_min + round(r_min / s), -(q_min - round(r_min / s)), round(r_min / s)}
    cands |= {min(max(c, q_min), q_max) for c in set(cands)}
    return z != case.expected[1] and z in cands


def _s_nonpositive(case, got):
    s, _ = _sz(got)
    return not s > 0


def _zero_division(case, exc):
    return case.args[0] == case.args[1] and isinstance(exc, (ZeroDivisionError, FloatingPointError,
                                                             ValueError))


register(Exercise(
    id="asymmetric_params", lab="01", points=2, reference=partial(_ref_params, False), make_cases=_asym_cases,
    compare=_cmp_sz,
    diagnoses=[
        Diagnosis("returned s <= 0 for constant input: floor the scale, s = max(s, EPS) with "
                  "EPS = np.finfo(np.float32).eps.", when=_s_nonpositive),
        Diagnosis("returned s <= 0 (division by zero) for constant input: floor the scale, s = max(s, EPS) "
                  "with EPS = np.finfo(np.float32).eps.", on_error=_zero_division),
        Diagnosis("z is not an integer: you forgot to round, z = q_min - round(r_min / s).",
                  when=_z_not_integer),
        Diagnosis("you forgot to include 0 in the range: first r_min = min(r_min, 0), r_max = max(r_max, 0).",
                  when=_s_matches(lambda a, b, lo, hi: (b - a) / (hi - lo) if a > 0 or b < 0 else None)),
        Diagnosis("s divides by the number of steps q_max - q_min, not by q_max.",
                  when=_s_matches(lambda a, b, lo, hi: (max(b, 0) - min(a, 0)) / hi)),
        Diagnosis("check the sign of the zero point: z = q_min - round(r_min / s) "
                  "(r_min <= 0, so z >= q_min).",
                  when=_z_sign),
    ],
    fallback_hint="s = (r_max - r_min) / (q_max - q_min) after widening the range to contain 0; "
                  "z = clip(q_min - round(r_min / s), q_min, q_max).",
    forbids=QPARAMS_FORBIDS,
))


def _sym_cases():
    return [
        Case("signed 8-bit, r_max dominates", (-0.5, 2.0, -128, 127)),
        Case("|r_min| > r_max", (-3.1, 1.2, -128, 127),
             hint="the range is symmetric around 0: use max(-r_min, r_max), not r_max alone."),
        Case("narrow grid [-127, 127]", (-1.7, 0.9, -127, 127)),
        Case("4-bit narrow grid [-7, 7]", (-0.35, 0.42, -7, 7)),
    ]


def _z_nonzero(case, got):
    _, z = _sz(got)
    return z != 0


register(Exercise(
    id="symmetric_params", lab="01", points=1, reference=partial(_ref_params, True), make_cases=_sym_cases,
    compare=_cmp_sz,
    diagnoses=[
        Diagnosis("symmetric quantization has z = 0 (the grid is centred on 0).", when=_z_nonzero),
        Diagnosis("you used r_max only; the range must cover the negative side too: max(-r_min, r_max).",
                  when=_s_matches(lambda a, b, lo, hi: b / ((hi - lo) / 2))),
        Diagnosis("divide by half the grid, (q_max - q_min) / 2: the positive and negative halves each "
                  "get half of the levels.",
                  when=_s_matches(lambda a, b, lo, hi: max(-a, b) / (hi - lo))),
    ],
    fallback_hint="s = max(-r_min, r_max) / ((q_max - q_min) / 2), z = 0.",
    forbids=QPARAMS_FORBIDS,
))

r"""Lab 07 checks (quantization-aware training): fake_quant_ste, ema_range, export_weights.

References written here from the text and CONTRIBUTING.md, independently of :mod:`quantlab.qat`:
the fake-quant node r_hat = s (clip(round(r/s + z), q_min, q_max) - z) with the clipped
straight-through gradient (1 where round(r/s + z) lies in [q_min, q_max], else 0); the moving-average
range r <- r + c (batch - r); export q = clip(round(w/s + z), q_min, q_max) as 8-bit integers with the
asymmetric rule for (s, z).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .core import Case, Diagnosis, Exercise, compare_array, compare_scalar, compare_tuple, register, to_array

EPS = float(np.finfo(np.float32).eps)

# ------------------------------------------------------------------------------- fake_quant_ste


def _upstream(shape):
    """The upstream gradient dL/dr_hat used by the check: distinct positive numbers 1 ... 7."""
    import torch

    n = int(np.prod(shape)) if len(shape) else 1
    return (torch.arange(n, dtype=torch.float32) % 7 + 1).reshape(shape)


def fake_quant_ste_reference(r, s, z, q_min, q_max):
    r"""(r_hat, dL/dr) for L = sum(g * r_hat): r_hat = s (clip(round(r/s + z)) - z), dL/dr = g where
    round(r/s + z) is inside [q_min, q_max], else 0. NumPy float32 arrays.

    >>> import torch
    >>> v, g = fake_quant_ste_reference(torch.tensor([0.26, 9.0]), 0.1, 0, -8, 7)
    >>> [round(float(a), 4) for a in v], g.tolist()
    ([0.3, 0.7], [1.0, 0.0])
    """
    r = to_array(r).astype(np.float32)
    s = np.asarray(to_array(s), np.float32)
    z = np.asarray(to_array(z), np.float32)
    q = np.round(r / s + z)
    inside = (q >= q_min) & (q <= q_max)
    values = (s * (np.clip(q, q_min, q_max) - z)).astype(np.float32)
    return values, (_upstream(r.shape).numpy() * inside).astype(np.float32)


def _fq_cases():
    import torch

    g = torch.Generator().manual_seed(7)

    def r_of(shape, lo, hi):
        return (torch.rand(shape, generator=g) * (hi - lo) + lo).requires_grad_(True)

    s_c = torch.tensor([0.05, 0.2, 0.5]).reshape(3, 1)
    z_c = torch.tensor([0, 3, -2]).reshape(3, 1)
    return [
        Case("signed 4-bit, z = 0, values beyond the range", (r_of((12,), -1.5, 1.5), 0.1, 0, -8, 7)),
        Case("unsigned 8-bit with z = 64", (r_of((4, 5), -2.0, 5.0), 0.02, 64, 0, 255),
             hint="r_hat = s * (q - z): subtract z again after clipping."),
        Case("at the clip edges", (torch.tensor([-0.8, -0.86, 0.7, 0.74, 0.76, 0.0], requires_grad=True),
                                   0.1, 0, -8, 7),
             hint="the gradient is 1 where round(r/s + z) lies in [q_min, q_max] (edges included)."),
        Case("per channel: s, z of shape (3, 1) broadcast", (r_of((3, 6), -2.0, 2.0), s_c, z_c, -8, 7)),
        Case("2 bits, asymmetric", (r_of((10,), -1.0, 2.0), 0.5, 1, 0, 3)),
    ]


def _leaf_grad(got, r_shape):
    """dL/dr of the learner's output, L = sum(g * r_hat), found through its autograd graph."""
    import torch

    if not isinstance(got, torch.Tensor):
        raise TypeError(f"returned {type(got).__name__}, expected a torch tensor r_hat")
    if got.grad_fn is None:
        return None
    leaves, seen, todo = [], set(), [got.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if hasattr(fn, "variable") and tuple(fn.variable.shape) == tuple(r_shape):
            leaves.append(fn.variable)
        todo.extend(f for f, _ in fn.next_functions)
    if not leaves:
        return None
    # a scalar loss L = sum(g * r_hat): grad() with grad_outputs would import sympy (~2 s) on first use
    loss = (got * _upstream(tuple(r_shape)).to(got.dtype)).sum()
    (grad,) = torch.autograd.grad(loss, leaves[0], retain_graph=True, allow_unused=True)
    return torch.zeros(r_shape) if grad is None else grad


def _cmp_fq(got, expected):
    values, grad = expected
    reason = compare_array(got, values, floating=True, rtol=1e-5, atol=1e-6)
    if reason is not None:
        return f"r_hat: {reason}"
    g = _leaf_grad(got, values.shape)
    if g is None:
        return ("no gradient reaches r: build r_hat with your autograd Function (FakeQuant.apply(r, ...)) "
                "so that backward() runs")
    reason = compare_array(g, grad, floating=True)
    return None if reason is None else f"gradient dL/dr: {reason}"


def _fq_mutant(kind):
    def m(r, s, z, q_min, q_max):
        values, grad = fake_quant_ste_reference(r, s, z, q_min, q_max)
        up = _upstream(values.shape).numpy()
        if kind == "grad_everywhere":
            return values, up
        if kind == "grad_zero":
            return values, np.zeros_like(up)
        if kind == "no_z":
            rr, ss = to_array(r).astype(np.float32), np.asarray(to_array(s), np.float32)
            return (ss * np.clip(np.round(rr / ss), q_min, q_max)).astype(np.float32), grad
        if kind == "grad_unrounded":
            rr, ss = to_array(r).astype(np.float32), np.asarray(to_array(s), np.float32)
            v = rr / ss + np.asarray(to_array(z), np.float32)
            return values, (up * ((v >= q_min) & (v <= q_max))).astype(np.float32)
        raise AssertionError(kind)
    return m


def _no_graph(case, got):
    import torch

    return isinstance(got, torch.Tensor) and got.grad_fn is None


register(Exercise(
    id="fake_quant_ste", lab="07", points=3, reference=fake_quant_ste_reference, make_cases=_fq_cases,
    compare=_cmp_fq,
    diagnoses=[
        Diagnosis("r_hat carries no gradient: return FakeQuant.apply(r, s, z, q_min, q_max), and do not "
                  "detach r or convert it to NumPy inside forward's result.", when=_no_graph),
        Diagnosis("your gradient passes everywhere; the clipped STE passes it only where round(r/s + z) "
                  "lies inside [q_min, q_max] and gives 0 outside: grad_out * inside.",
                  mutant=_fq_mutant("grad_everywhere")),
        Diagnosis("your gradient is zero everywhere (round has derivative 0 almost everywhere): the "
                  "straight-through estimator pretends round is the identity, so return grad_out * inside "
                  "from backward.", mutant=_fq_mutant("grad_zero")),
        Diagnosis("you forgot z: q = clip(round(r/s + z), q_min, q_max) and r_hat = s * (q - z).",
                  mutant=_fq_mutant("no_z")),
        Diagnosis("test 'inside' on the rounded value round(r/s + z), as PyTorch does, not on r/s + z.",
                  mutant=_fq_mutant("grad_unrounded")),
    ],
    fallback_hint="forward: q = round(r/s + z); save inside = (q >= q_min) & (q <= q_max); return "
                  "s * (clip(q, q_min, q_max) - z). backward: return grad_out * inside and None for the rest.",
    forbids=("quantlab.linear.FakeQuantizeSTE", "quantlab.linear.fake_quantize", "quantlab.qat.fake_quant",
             "quantlab.qat.nodes.fake_quant", "quantlab.granularity.fake_quantize_tensor",
             "torch.fake_quantize_per_tensor_affine", "torch.fake_quantize_per_channel_affine"),
))


# ------------------------------------------------------------------------------- ema_range


def ema_range_reference(r_min, r_max, x, c):
    r"""Moving-average range update: first batch (r_min is None) -> (min x, max x); later
    r_min <- r_min + c (min x - r_min), r_max <- r_max + c (max x - r_max).

    >>> ema_range_reference(0.0, 1.0, np.array([-1.0, 3.0]), 0.1)
    (-0.1, 1.2)
    """
    a = to_array(x).astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if r_min is None:
        return lo, hi
    return r_min + c * (lo - r_min), r_max + c * (hi - r_max)


def _ema_cases():
    import torch

    g = torch.Generator().manual_seed(3)
    return [
        Case("a batch wider than the range, c = 0.1", (0.0, 1.0, torch.tensor([-1.0, 0.5, 3.0]), 0.1)),
        Case("a narrower batch, c = 0.01", (-2.0, 6.0, torch.randn(4, 8, generator=g), 0.01)),
        Case("c = 0.5", (0.0, 2.0, torch.rand(16, generator=g) * 4, 0.5)),
        Case("the first batch (no range yet: r_min is None)", (None, None, torch.tensor([[0.2, -0.3], [1.5, 0.0]]),
                                                               0.01),
             hint="the first batch sets the range: (x.min(), x.max())."),
        Case("c = 1 (only the last batch counts)", (-1.0, 1.0, torch.tensor([0.25, 0.75]), 1.0)),
    ]


def _ema_mutant(kind):
    def m(r_min, r_max, x, c):
        a = to_array(x).astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if r_min is None:
            return lo, hi
        if kind == "swapped":
            return lo + c * (r_min - lo), hi + c * (r_max - hi)
        if kind == "running":
            return min(r_min, lo), max(r_max, hi)
        raise AssertionError(kind)
    return m


_cmp_f = partial(compare_scalar, rtol=1e-5, atol=1e-7)

register(Exercise(
    id="ema_range", lab="07", points=2, reference=ema_range_reference, make_cases=_ema_cases,
    compare=lambda got, exp: compare_tuple(got, exp, (_cmp_f, _cmp_f), ("r_min", "r_max")),
    diagnoses=[
        Diagnosis("the moving average's weight is the wrong way round: the *new* batch gets weight c, the old "
                  "range 1 - c: r_min + c * (x.min() - r_min).", mutant=_ema_mutant("swapped")),
        Diagnosis("that is the running min/max (it never shrinks); the moving average moves a fraction c "
                  "towards this batch's range, also inwards.", mutant=_ema_mutant("running")),
    ],
    fallback_hint="lo, hi = x.min(), x.max(); first batch: (lo, hi); else (r_min + c * (lo - r_min), "
                  "r_max + c * (hi - r_max)).",
    forbids=("quantlab.observers.MovingAverageMinMaxObserver", "torch.ao.quantization.MovingAverageMinMaxObserver",
             "torch.ao.quantization.observer.MovingAverageMinMaxObserver"),
))


# ------------------------------------------------------------------------------- export_weights


def export_weights_reference(w, r_min, r_max, q_min, q_max):
    r"""(q, s, z): the range widened to contain 0, s = max((r_max - r_min)/(q_max - q_min), eps),
    z = clip(q_min - round(r_min/s)), q = clip(round(w/s + z), q_min, q_max) as int8 (uint8 for a grid
    above 127).

    >>> q, s, z = export_weights_reference(np.array([-1.0, 0.5, 1.0]), -1.0, 1.0, -127, 127)
    >>> q.tolist(), round(s, 6), z
    ([-127, 64, 127], 0.007874, 0)
    """
    w = to_array(w).astype(np.float32)
    lo, hi = min(float(r_min), 0.0), max(float(r_max), 0.0)
    s = float(np.float32(max((hi - lo) / (q_max - q_min), EPS)))
    z = int(np.clip(q_min - np.round(lo / s), q_min, q_max))
    q = np.clip(np.round(w / np.float32(s) + z), q_min, q_max)
    return q.astype(np.uint8 if q_max > 127 else np.int8), s, z


def _ex_cases():
    import torch

    g = torch.Generator().manual_seed(11)
    w = torch.randn(8, 4, 3, 3, generator=g) * 0.2
    m = float(w.abs().max())
    return [
        Case("conv weights, symmetric range, 8-bit narrow grid", (w, -m, m, -127, 127)),
        Case("4-bit narrow grid", (w[:2], -m, m, -7, 7)),
        Case("asymmetric range on [0, 255] (z != 0, uint8)", (w[:3] + 0.1, float(w.min()) + 0.1,
                                                              float(w.max()) + 0.1, 0, 255),
             hint="z = clip(q_min - round(r_min / s), q_min, q_max); q = clip(round(w/s + z), ...)."),
        Case("a range that does not contain 0", (torch.rand(2, 5, generator=g) + 0.5, 0.5, 1.5, -128, 127),
             hint="widen the range to contain 0 first: r_min <- min(r_min, 0), r_max <- max(r_max, 0)."),
        Case("weights beyond the final range are clipped", (torch.tensor([[-2.0, -0.5, 0.3, 4.0]]), -1.0, 1.0,
                                                            -7, 7)),
    ]


def _cmp_q(got, expected):
    reason = compare_array(got, expected, integral=True)
    if reason is not None:
        return reason
    a = to_array(got)
    if a.dtype != expected.dtype:
        return (f"q has dtype {a.dtype}; store it as {expected.dtype} (8-bit integers: int8 for a signed grid, "
                "uint8 for [0, 255])")
    return None


def _cmp_export(got, expected):
    return compare_tuple(got, expected, (_cmp_q, _cmp_f, lambda g, e: compare_scalar(g, e, integral=True)),
                         ("q", "s", "z"))


def _ex_mutant(kind):
    def m(w, r_min, r_max, q_min, q_max):
        q, s, z = export_weights_reference(w, r_min, r_max, q_min, q_max)
        wa = to_array(w).astype(np.float32)
        if kind == "no_z":
            return np.clip(np.round(wa / s), q_min, q_max).astype(q.dtype), s, z
        if kind == "floor":
            return np.clip(np.floor(wa / s + z), q_min, q_max).astype(q.dtype), s, z
        if kind == "no_clip":
            return np.round(wa / s + z).astype(q.dtype), s, z
        raise AssertionError(kind)
    return m


def _wrong_dtype(case, got):
    try:
        return to_array(got[0]).dtype.kind in "f" or to_array(got[0]).dtype.itemsize > 1
    except Exception:
        return False


register(Exercise(
    id="export_weights", lab="07", points=3, reference=export_weights_reference, make_cases=_ex_cases,
    compare=_cmp_export,
    diagnoses=[
        Diagnosis("you forgot z: q = clip(round(w/s + z), q_min, q_max) — the zero point shifts the grid.",
                  mutant=_ex_mutant("no_z")),
        Diagnosis("round to the nearest level (np.round / torch.round), not floor or int().",
                  mutant=_ex_mutant("floor")),
        Diagnosis("clip to [q_min, q_max] before converting: weights beyond the final range saturate.",
                  mutant=_ex_mutant("no_clip")),
        Diagnosis("export replaces the data type: return q as 8-bit integers (int8, or uint8 for [0, 255]), "
                  "not float or int32/int64.", when=_wrong_dtype),
    ],
    fallback_hint="r_min, r_max = min(r_min, 0), max(r_max, 0); s = (r_max - r_min)/(q_max - q_min); "
                  "z = clip(q_min - round(r_min/s)); q = clip(round(w/s + z), q_min, q_max).astype(int8).",
    forbids=("quantlab.linear.quantize", "quantlab.linear.scale_zero_point", "quantlab.granularity.quantize_tensor",
             "quantlab.granularity.choose_qparams", "quantlab.granularity.qparams_from_range",
             "quantlab.qat.export_layer_weights", "quantlab.qat.export", "torch.quantize_per_tensor",
             "torch.quantize_per_channel"),
))

"""Unguarded (issue 7 §1): each exercise's reference equals the library function of that name on its cases.

The references of requant_multiplier, kl_divergence and quantize_histogram are written independently in
quantlab/grading/ from CONTRIBUTING.md's conventions; here they must agree with quantlab.engine and
quantlab.calibration, so a change of either side's convention fails. quantize_histogram is the lab's
integer-chunk merge rule (w = i // n_levels, remainder in the last chunk): the library keeps it by the name
``quantlab.calibration.quantize_histogram``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import quantlab.binary
import quantlab.binary_kernel
import quantlab.calibration
import quantlab.correction
import quantlab.engine
import quantlab.granularity
import quantlab.linear
import quantlab.nonlinear
import quantlab.observers
import quantlab.packing
import quantlab.smoothquant
import quantlab.transformer_quant
from quantlab.grading import REGISTRY, run_exercise


def _params(symmetric):
    def f(r_min, r_max, q_min, q_max):
        s, z = quantlab.linear.scale_zero_point(torch.tensor(float(r_min)), torch.tensor(float(r_max)), q_min,
                                                q_max, symmetric)
        return float(s), int(z)
    return f


def _minmax(w, axis):
    lo, hi = quantlab.granularity.range_of(torch.from_numpy(w), quantlab.granularity.PerChannel(axis))
    return lo.numpy(), hi.numpy()


def _scale(w, bits, axis=0):
    p = quantlab.granularity.choose_qparams(torch.from_numpy(w), bits, quantlab.granularity.PerChannel(axis),
                                            symmetric=True, narrow=True)
    return p.s.numpy()


def _log_quantize(r, bits):
    return quantlab.nonlinear.fake_pow2(torch.from_numpy(r), bits, rounding="log").numpy()


def _kmeans_step(x, centroids):
    new, codes = quantlab.nonlinear.lloyd_step(torch.from_numpy(x)[None], torch.from_numpy(centroids)[None])
    return new[0].numpy(), codes[0].numpy()


def _fake_quant_ste(r, s, z, q_min, q_max):
    return quantlab.linear.fake_quantize(r, torch.as_tensor(s, dtype=r.dtype), torch.as_tensor(z), q_min, q_max)


def _ema_range(r_min, r_max, x, c):
    obs = quantlab.observers.MovingAverageMinMaxObserver(averaging_constant=c)
    if r_min is not None:
        obs.min_val, obs.max_val = torch.tensor(float(r_min)), torch.tensor(float(r_max))
    obs.update(torch.as_tensor(x, dtype=torch.float64))
    return float(obs.min_val), float(obs.max_val)


def _export_weights(w, r_min, r_max, q_min, q_max):
    s, z = quantlab.linear.scale_zero_point(float(r_min), float(r_max), q_min, q_max)
    q = quantlab.linear.quantize(torch.as_tensor(w, dtype=torch.float32), s, z, q_min, q_max)
    return q.numpy().astype(np.uint8 if q_max > 127 else np.int8), float(s), int(z)


def _group_int4(w, group_size):
    return quantlab.transformer_quant.fake_quantize_weight(
        torch.from_numpy(w), 4, quantlab.granularity.PerGroup(group_size)).double().numpy()


def _smooth_layer(x, w, alpha):
    x, w = torch.from_numpy(x), torch.from_numpy(w)
    s = quantlab.smoothquant.smooth_scales(x.abs().amax(0), w.abs().amax(0), alpha)
    return (x / s).numpy(), (w * s).numpy()


def _xnor_dot(a_words, w_words, K):
    return int(quantlab.binary_kernel.xnor_gemm_numpy(a_words[None], w_words[None], K)[0, 0])


LIBRARY = {
    "quantize": quantlab.linear.quantize,
    "dequantize": quantlab.linear.dequantize,
    "asymmetric_params": _params(False),
    "symmetric_params": _params(True),
    "per_channel_minmax": _minmax,
    "per_channel_scale": _scale,
    "requant_multiplier": quantlab.engine.requant_multiplier,
    "kl_divergence": quantlab.calibration.kl_divergence,
    "quantize_histogram": quantlab.calibration.quantize_histogram,
    "log_quantize": _log_quantize,
    "kmeans_step": _kmeans_step,
    "bias_correction": quantlab.correction.bias_correction_term,
    "weight_correction": quantlab.correction.weight_correction,
    "pack_sign_bits": quantlab.packing.pack_signs,
    "xnor_popcount_dot": _xnor_dot,
    "binarize_with_alpha": quantlab.binary.binarize_weights,
    "fake_quant_ste": _fake_quant_ste,
    "ema_range": _ema_range,
    "export_weights": _export_weights,
    "group_quantize_int4": _group_int4,
    "smooth_layer": _smooth_layer,
}


def test_every_exercise_has_its_library_function():
    assert set(LIBRARY) == set(REGISTRY)


@pytest.mark.parametrize("name", list(LIBRARY))
def test_reference_equals_library_function(name):
    ex = REGISTRY[name]
    for case in ex.prepared_cases():
        got = LIBRARY[name](*copy.deepcopy(case.args))
        reason = (case.compare or ex.compare)(got, case.expected)
        assert reason is None, f"{name}, case {case.name!r}: library vs reference: {reason}"


def test_independent_references_match_on_random_inputs():
    """Beyond the shipped cases: random histograms and multipliers."""
    rng = np.random.default_rng(7)
    kl, qh = REGISTRY["kl_divergence"].reference, REGISTRY["quantize_histogram"].reference
    for _ in range(50):
        n = int(rng.integers(4, 300))
        p, q = rng.uniform(0, 1, n) * (rng.uniform(size=n) > 0.2), rng.uniform(0, 1, n) * (rng.uniform(size=n) > 0.2)
        p[0], q[0] = 1.0, 1.0
        assert float(quantlab.calibration.kl_divergence(p, q)) == pytest.approx(kl(p, q), rel=1e-9, abs=1e-12)
        levels = int(rng.integers(1, n + 1))
        np.testing.assert_allclose(quantlab.calibration.quantize_histogram(p, levels), qh(p, levels), rtol=1e-12)
    for M in rng.uniform(1e-6, 1, 200):
        assert quantlab.engine.requant_multiplier(float(M)) == REGISTRY["requant_multiplier"].reference(float(M))


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library_function_is_refused_by_its_exercise(name):
    """Guarded: handing in the library's function (correct on every case, above) fails — the exercise's
    ``forbids`` cover its own library implementation."""
    res = run_exercise(LIBRARY[name], name)
    assert res.status == "failed" and res.points == 0, res.feedback
    assert "may not call `" in res.feedback and "write the formula yourself" in res.feedback, res.feedback

r"""Calibration for post-training quantization (section 9.3.1): pick [r_min, r_max] from P_f, then s and z.

The text's procedure, in our notation:

1. P_f = histogram of the FP32 activations seen on the calibration data (:mod:`.histograms`).
2. For each candidate (q_min, q_max) range -- here a clip range [r_min, r_max] on P_f's bins -- quantize:
   P = the bins inside the range, with the mass outside folded into the end bins (clipping), and
   Q_q = :func:`quantize_histogram` (merge the kept bins into n_levels chunks, spread back; built without
   the folded mass, as TensorRT does) (:mod:`.divergences`).
3. Measure the difference D(P || Q_q): :func:`kl_divergence`, :func:`symmetric_kl` or :func:`js_divergence`.
4. Keep the range with the smallest D (:mod:`.search`) and compute s, z from it
   (:func:`quantlab.granularity.qparams_from_range`, in :mod:`.entry`).

Two merge rules (CONTRIBUTING.md): "fractional", NVIDIA's TensorRT entropy calibrator (the searches'
default), and "integer", lab 05's exercise (the default of :func:`quantize_histogram`). Baselines:
:func:`minmax_range`, :func:`percentile_range`, :func:`mse_range` (:mod:`.baselines`). One entry point:
:func:`calibrate`.
"""

from .baselines import minmax_range, mse_range, percentile_range
from .divergences import (
    MERGE_RULES,
    METRICS,
    SMOOTH,
    divergence,
    js_divergence,
    kl_divergence,
    quantize_histogram,
    symmetric_kl,
)
from .entry import METHODS, calibrate, calibrate_model, calibrate_range, collect_activations, fake_quantize_activations
from .histograms import abs_histogram, flatten_zero_bin, histogram
from .search import RangeSearch, ThresholdSearch, divergence_curve, kl_range, kl_threshold, n_levels_for

__all__ = [
    "METRICS", "METHODS", "MERGE_RULES", "SMOOTH",
    "kl_divergence", "symmetric_kl", "js_divergence", "divergence", "quantize_histogram",
    "histogram", "abs_histogram", "flatten_zero_bin", "divergence_curve", "kl_threshold", "kl_range",
    "n_levels_for", "ThresholdSearch", "RangeSearch",
    "minmax_range", "percentile_range", "mse_range", "calibrate_range", "calibrate",
    "calibrate_model", "fake_quantize_activations", "collect_activations",
]

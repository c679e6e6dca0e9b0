r"""Correcting quantization errors (end of section 9.3.1): bias (mean) correction and weight correction.

The text, for a = sum_i w_i x_i + b:

* **Bias (mean) correction** (:mod:`quantlab.correction.bias`). For each output channel i, a_i = mean of
  the FP32 operator's output and a_q = mean of the dequantized output of the quantized operator (over the
  calibration data and the spatial positions); add a_i - a_q to that channel's bias.
  :func:`empirical_bias_correction` does it layer by layer in order; :func:`data_free_bias_correction`
  (beyond the text, DFQ) estimates E[x] from batch norm instead of data.
* **Weight correction** (:mod:`quantlab.correction.weights`). Per channel c, u_c = E(w_c) - E(w_hat_c),
  zeta_c = ||w_c - E(w_c)|| / ||w_hat_c - E(w_hat_c)||, w_hat_c <- zeta_c (w_hat_c + u_c) (rule "text"),
  or the mean-and-norm rule (w_hat_c - E(w_hat_c)) zeta_c + E(w_c) ("mean_norm"); and the folding
  identities a deployment uses (zeta_c into the scale, u_c into a non-integer zero point).
* **Quantizers** (:mod:`quantlab.correction.quantizers`): FP32 model -> quantized model, weight-only
  (:func:`weight_quantizer`) or on the integer engine (:func:`int_quantizer`), and what the corrections
  read from them (:func:`channel_means`, :func:`effective_weights`, :func:`evaluate_quantized`).

>>> import quantlab.correction as qc
>>> qc.weight_correction(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]]), "text")
tensor([[3., 5.]])
"""

from __future__ import annotations

import torch  # noqa: F401 - for the doctest above

from .bias import (
    apply_bias_terms,
    bias_correction_term,
    channel_mean,
    clipped_gaussian_mean,
    data_free_bias_correction,
    empirical_bias_correction,
    expected_layer_inputs,
)
from .quantizers import channel_means, effective_weights, evaluate_quantized, int_quantizer, weight_quantizer
from .weights import (
    RULES,
    correction_factors,
    fold_weight_correction,
    scale_shift,
    weight_correction,
    zero_point_output,
)

__all__ = [
    "RULES", "channel_mean", "bias_correction_term", "correction_factors", "scale_shift", "weight_correction",
    "fold_weight_correction", "zero_point_output", "clipped_gaussian_mean", "expected_layer_inputs",
    "weight_quantizer", "int_quantizer", "effective_weights", "channel_means", "evaluate_quantized",
    "apply_bias_terms", "empirical_bias_correction", "data_free_bias_correction",
]

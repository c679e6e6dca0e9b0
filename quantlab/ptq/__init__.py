r"""Post-training quantization (section 9.3.1): weight quantization and full quantization.

*Weight quantization* stores only the weights as integers, q = clip(round(w/s + z), q_min, q_max), with
(s, z) per layer or per channel. At inference the weights are dequantized back to FP32, w_hat = s (q - z),
and the ordinary FP32 model runs: the model is ~4x smaller at 8 bits, no calibration data is needed,
and it is no faster.  -> :func:`quantize_weights` (:mod:`quantlab.ptq.weights`).

*Full quantization* also quantizes the activations, so every layer can run on integers
(:mod:`quantlab.engine`). The activation ranges (r_min, r_max) of each layer are measured by running a
small *calibration set* from the training data through the FP32 model (:func:`calibrate_activations`);
:func:`convert` then turns weights, biases and ranges into an integer model for
:func:`quantlab.engine.run_int` (:mod:`quantlab.ptq.full`).
"""

from .full import SUPPORTED_LAYERS, ActRanges, calibrate_activations, convert, layer_chain
from .ranges import prefix_minmax_ranges
from .weights import (
    WeightOnlyConv2d,
    WeightOnlyLinear,
    WeightOnlyModel,
    median_time,
    quantize_weights,
    state_size_bytes,
)

__all__ = [
    "SUPPORTED_LAYERS", "state_size_bytes", "median_time",
    "WeightOnlyConv2d", "WeightOnlyLinear", "WeightOnlyModel", "quantize_weights",
    "ActRanges", "layer_chain", "calibrate_activations", "convert", "prefix_minmax_ranges",
]

r"""An integer-only inference engine (full quantization, section 9.3.1): int8 in, int32 sums, int8 out.

Take one layer a = sum_i w_i x_i + b. With r = s (q - z) for weights (s_w, z_w), input (s_x, z_x) and
output (s_y, z_y), and the bias stored as q_b = round(b / (s_w s_x)) in int32 (z_b = 0):

    acc = sum_i (q_w,i - z_w)(q_x,i - z_x) + q_b                      (exact, int32)
    q_y = clip(z_y + M * acc, q_min, q_max),     M = s_w s_x / s_y      (one real number per layer/channel)

Two modules, one concept each (import from ``quantlab.engine``; the split is an implementation detail):

* :mod:`.ops` -- the integer operations: ``requant_multiplier`` (M ~ M0 * 2^-n), ``requantize``,
  ``quantize_bias``, ``int_conv2d``, ``int_linear``; its docstring explains why the sums are exact and
  why they run on the CPU.
* :mod:`.layers` -- the integer layers and model: ``IntConv2d``, ``IntLinear``, ``IntReLU``,
  ``IntMaxPool2d``, ``IntAvgPool2d``, ``IntFlatten``, ``IntModel`` (built by :func:`quantlab.ptq.convert`)
  and ``run_int`` (logits returned on the input's device).
"""

from .layers import IntAvgPool2d, IntConv2d, IntFlatten, IntLinear, IntMaxPool2d, IntModel, IntReLU, run_int
from .ops import INT32_MAX as INT32_MAX
from .ops import INT32_MIN as INT32_MIN
from .ops import int_conv2d, int_linear, quantize_bias, requant_multiplier, requantize

__all__ = [
    "requant_multiplier",
    "requantize",
    "quantize_bias",
    "int_conv2d",
    "int_linear",
    "IntConv2d",
    "IntLinear",
    "IntReLU",
    "IntMaxPool2d",
    "IntAvgPool2d",
    "IntFlatten",
    "IntModel",
    "run_int",
]

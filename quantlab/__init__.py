"""quantlab: learn neural-network quantization by building it (section 9.3.1, in the text's notation).

Modules, one per concept of the text: ``linear`` (q = clip(round(r/s + z), q_min, q_max)),
``granularity`` (layer-by-layer vs channel-by-channel), ``metrics`` (MSE, SQNR, size), and the
learner-facing ``grading`` and ``viz``, with the lab's own ``data`` and ``models``.
"""

from .granularity import (
    PerChannel,
    PerGroup,
    PerTensor,
    QParams,
    choose_qparams,
    fake_quantize_tensor,
    fake_quantize_weights,
    quantize_tensor,
    range_of,
)
from .linear import EPS, dequantize, fake_quantize, qrange, quantize, scale_zero_point
from .metrics import compression_ratio, model_size_bytes, mse, sqnr_db, tensor_size_bytes

__all__ = [
    "EPS", "qrange", "scale_zero_point", "quantize", "dequantize", "fake_quantize",
    "PerTensor", "PerChannel", "PerGroup", "QParams", "range_of", "choose_qparams",
    "quantize_tensor", "fake_quantize_tensor", "fake_quantize_weights",
    "mse", "sqnr_db", "compression_ratio", "tensor_size_bytes", "model_size_bytes",
]
__version__ = "0.1.0"

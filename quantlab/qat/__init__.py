r"""Quantization-aware training (section 9.3.1, "Quantization Aware Training"), in the text's four steps.

"Quantization aware training is to simulate quantization in the training process and use
pseudo-quantization nodes to account for the accuracy changes brought by quantization into the
training error":

1. *Initialization* — :func:`initial_ranges`: [r_min, r_max] of the weights and the activations.
2. *Construction of a simulated quantization network* — :func:`prepare_qat`: BN folded, fake-quant
   nodes (:class:`QuantNode`, :func:`fake_quant`) after the weights and activations.
3. *Quantization training* — :func:`qat_train`: ranges recomputed while training, back-propagation
   through the straight-through nodes; learned ranges :class:`LSQ` and :class:`PACT` beyond the text.
4. *Export quantization network* — :func:`export`: (s, z) from the final ranges, integer weights,
   quantize/dequantize operators, an integer-only model for :func:`quantlab.engine.run_int`.

Checkpoints fine-tuned from ``data/cnn.pt`` ship in ``data/`` (:func:`load_qat`); remake them with
``python benchmarks/qat_table.py`` (see data/README.md).
"""

from .export import export, export_layer_weights, export_summary, float_model
from .network import (
    QATLayer,
    QATModel,
    QATReLU,
    Ranges,
    initial_ranges,
    is_prepared,
    load_qat,
    prepare_qat,
    quantization_points,
    save_qat,
)
from .nodes import LEARN, LSQ, OBSERVERS, PACT, QuantNode, fake_quant, lsq_grad_scale
from .training import History, qat_train

__all__ = [
    "fake_quant", "LSQ", "PACT", "lsq_grad_scale", "QuantNode", "OBSERVERS", "LEARN",
    "Ranges", "quantization_points", "initial_ranges", "prepare_qat", "QATModel", "QATLayer", "QATReLU",
    "is_prepared", "save_qat", "load_qat", "History", "qat_train",
    "export", "export_layer_weights", "export_summary", "float_model",
]

r"""Step 4 of quantization-aware training: export the quantization network to integers.

"Obtain q_min and q_max and calculate quantization parameters s and z; calculate quantization integer
values of weights according to the formula and replace parameters and data types of corresponding
network layers; delete pseudo quantization nodes and insert quantization and anti-quantization
operators before and after quantization network layers respectively."

:func:`export` does exactly that with the library's integer engine: (s, z) of every node from its final
range (:func:`quantlab.granularity.qparams_from_range`), weights q_w = clip(round(w/s + z)) stored as
int8, biases as int32 on s_w s_x, the fake-quant nodes gone, a *quantize* operator on the input and a
*dequantize* operator on the logits (:class:`quantlab.engine.IntModel`, run by
:func:`quantlab.engine.run_int`).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from .._checks import model_device
from ..engine import IntModel, quantize_bias
from ..granularity import PerChannel, PerTensor
from ..linear import quantize
from ..models import replace_layers
from ..ptq import ActRanges, convert
from .network import QATLayer, QATModel, QATReLU, is_prepared

__all__ = ["export", "export_layer_weights", "float_model", "export_summary"]


def _check_exportable(model) -> QATModel:
    if isinstance(model, IntModel):
        raise ValueError("this model is already exported (an integer IntModel): run it with "
                         "quantlab.engine.run_int(model, x); export the QATModel only once.")
    if not isinstance(model, QATModel):
        hint = " It holds QuantNodes but is not a QATModel." if is_prepared(model) else (
            " It was never prepared: run step 1 (initial_ranges) and step 2 (prepare_qat) first.")
        raise ValueError(f"export needs a simulated quantization network (QATModel); got "
                         f"{type(model).__name__}.{hint}")
    return model


def export_layer_weights(layer: QATLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""(q_w int8, s, z) of one prepared layer: q_w = clip(round(w/s + z), q_min, q_max) with (s, z) from
    the weight node's final range. Shapes: q_w as the weight; s, z broadcast against it (on its device).

    >>> q_w, s, z = export_layer_weights(qat.net.conv1)                     # doctest: +SKIP
    """
    if not isinstance(layer, QATLayer):
        raise TypeError(f"layer must be a prepared layer (QATLayer, e.g. qat.net.conv1); got "
                        f"{type(layer).__name__}.")
    w = layer.layer.weight.detach()
    p = layer.weight_qparams()
    q_w = quantize(w, p.s, p.z, p.q_min, p.q_max).to(torch.int8)
    return q_w, p.s, p.z


def float_model(model: QATModel) -> nn.Module:
    """The float network without fake-quant nodes (trained latent weights), as a plain copy."""
    _check_exportable(model)
    net = replace_layers(model.net, lambda n, m: m.layer, types=QATLayer)
    return replace_layers(net, lambda n, m: m.relu, types=QATReLU)


@torch.no_grad()
def export(model: QATModel) -> IntModel:
    r"""Step 4: the integer-only model (int8 weights, int32 biases, quantize/dequantize at the ends).

    Activation grids: (s, z) from each node's final [r_min, r_max] on [0, 2^b - 1]; weights: each
    weight node's (s, z) (equal to min/max of the weights unless learned by LSQ), q_w int8, z_w = 0;
    M = s_w s_x / s_y as a fixed-point multiplier. The result runs on :func:`quantlab.engine.run_int`
    (CPU) and ``.size_bytes(packed=True)`` measures it. ``model`` is not modified (its weights are read
    on whatever device they are and moved to the CPU engine).

    Raises ValueError for a model that was never prepared or an IntModel (already exported).

    >>> qmodel = export(qat)                                                 # doctest: +SKIP
    >>> run_int(qmodel, x_test).argmax(1)                                    # doctest: +SKIP
    """
    model = _check_exportable(model)
    cfg = model.config
    on_cpu = model_device(model) == torch.device("cpu")
    cpu = model if on_cpu else copy.deepcopy(model).to("cpu")
    ranges = ActRanges(cpu.activation_ranges(), "qat", cfg["act_bits"], 0)
    gran = PerChannel(0) if cfg["granularity"] == "per-channel" else PerTensor()
    qmodel = convert(float_model(cpu), ranges, cfg["weight_bits"], cfg["act_bits"], gran)
    prepared = dict(cpu.net.named_modules())
    for i, layer in enumerate(qmodel.layers):
        m = prepared.get(layer.name)
        if not isinstance(m, QATLayer):
            continue
        q_w, s, _ = export_layer_weights(m)
        s_w = s.reshape(-1).expand(q_w.shape[0]).to(torch.float32).clone()
        if torch.equal(q_w, layer.q_w) and torch.equal(s_w, layer.s_w):
            continue
        # learned step sizes (LSQ): the weight grid is the node's, not min/max of the weights
        bias = m.layer.bias.detach() if m.layer.bias is not None else torch.zeros(q_w.shape[0])
        qmodel.layers[i] = dataclasses.replace(layer, q_w=q_w, s_w=s_w, q_b=quantize_bias(bias, s_w, layer.s_x))
    return qmodel


def export_summary(qmodel: IntModel) -> list[tuple[str, str]]:
    """The exported operators in order, as (operator, detail) rows: quantize, integer layers, dequantize."""
    s, z, q_min, q_max = qmodel.input_qparams
    rows = [("quantize", f"input: q = clip(round(x/{s:.4g} + {z}), {q_min}, {q_max})")]
    for layer in qmodel.layers:
        kind = type(layer).__name__
        if hasattr(layer, "q_w"):
            rows.append((kind, f"{layer.name}: q_w {str(layer.q_w.dtype).replace('torch.', '')} "
                               f"{tuple(layer.q_w.shape)}, q_b int32, M0·2^-n per channel"
                               + (" + fused ReLU" if layer.relu else "")))
        else:
            rows.append((kind, layer.name))
    s_y, z_y = qmodel.output_qparams[:2]
    rows.append(("dequantize", f"logits: r = {s_y:.4g} (q - {z_y})"))
    return rows

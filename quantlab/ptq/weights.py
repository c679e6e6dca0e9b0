r"""Weight-only post-training quantization: integers stored, FP32 computed.

q = clip(round(w/s + z), q_min, q_max) per Conv2d/Linear weight (per tensor or per output channel),
stored packed (:mod:`quantlab.packing`); every forward rebuilds w_hat = s (q - z) and runs the FP32 layer.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_bits, check_model, model_device
from ..granularity import PerChannel, PerTensor, choose_qparams
from ..linear import dequantize, quantize
from ..models import replace_layers
from ..packing import _width, pack_bits, unpack_bits

__all__ = ["state_size_bytes", "median_time", "WeightOnlyConv2d", "WeightOnlyLinear", "WeightOnlyModel",
           "quantize_weights"]


def state_size_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer actually stored in ``module`` (numel * element_size).

    >>> state_size_bytes(nn.Linear(10, 2))          # 20 + 2 float32 values
    88
    """
    check_model(module, "module")
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def median_time(fn, *args, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn(*args)`` over ``repeats`` runs (after ``warmup`` runs), no grad.

    On CUDA, kernels run asynchronously: the clock stops after ``torch.cuda.synchronize()``.

    >>> median_time(torch.zeros, 10, repeats=3) < 1.0
    True
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {type(fn).__name__}.")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn(*args)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _WeightOnly(nn.Module):
    """Holds q (packed), s, z of one weight tensor; ``weight`` is w_hat = s (q - z), rebuilt per call."""

    def __init__(self, layer: nn.Module, bits: int, granularity, symmetric: bool):
        super().__init__()
        w = layer.weight.detach()
        p = choose_qparams(w, bits, granularity, symmetric=symmetric, narrow=symmetric)
        q = quantize(w, p.s, p.z, p.q_min, p.q_max)
        self.bits, self.q_min, self.q_max, self.shape = bits, p.q_min, p.q_max, tuple(w.shape)
        self.register_buffer("q_packed", pack_bits(q, bits, p.q_min))
        self.register_buffer("s", p.s.to(torch.float32).contiguous())
        # z = 0 for symmetric quantization: nothing to store.
        self.register_buffer("z", None if symmetric else p.z.to(torch.int32).contiguous())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """w_hat = s (q - z): the FP32 weight the ordinary layer uses, rebuilt from the integers per call."""
        if _width(self.bits) == 8:  # one byte per value: no unpacking
            q = self.q_packed.view(self.shape)
        else:
            q = unpack_bits(self.q_packed, self.bits, self.q_min, math.prod(self.shape)).view(self.shape)
        return dequantize(q, self.s, 0 if self.z is None else self.z)


class WeightOnlyConv2d(_WeightOnly):
    """Conv2d whose weights are stored as integers and dequantized to FP32 on every forward."""

    def __init__(self, layer: nn.Conv2d, bits: int, granularity, symmetric: bool):
        if layer.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported; got padding_mode={layer.padding_mode!r}.")
        super().__init__(layer, bits, granularity, symmetric)
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WeightOnlyLinear(_WeightOnly):
    """Linear whose weights are stored as integers and dequantized to FP32 on every forward."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class WeightOnlyModel(nn.Module):
    """A copy of a model whose Conv2d/Linear weights are stored as packed integers plus (s, z).

    Built with the model walker :func:`quantlab.models.replace_layers` (the original is untouched; an
    error about a weight names its layer). It lives on the device of ``model``.
    """

    def __init__(self, model: nn.Module, bits: int, granularity, symmetric: bool):
        super().__init__()
        self.bits, self.granularity, self.symmetric = bits, granularity, symmetric

        def swap(name, layer):
            cls = WeightOnlyConv2d if isinstance(layer, nn.Conv2d) else WeightOnlyLinear
            return cls(layer, bits, granularity, symmetric)

        self.model = replace_layers(model, swap).eval()

    def forward(self, x):
        return self.model(x)

    def size_bytes(self) -> int:
        """Bytes actually stored: packed integer weights, s (and z), FP32 biases and BatchNorm buffers."""
        return state_size_bytes(self)


def check_granularity(granularity):
    """PerChannel(0) for None; PerTensor() or PerChannel(0) as given; ValueError otherwise."""
    if granularity is None:
        return PerChannel(0)
    if isinstance(granularity, PerTensor) or (isinstance(granularity, PerChannel) and granularity.axis == 0):
        return granularity
    raise ValueError(f"granularity must be PerTensor() or PerChannel(0) (output channels); "
                     f"got {granularity!r}.")


def quantize_weights(model: nn.Module, bits: int = 8, granularity=None, symmetric: bool = True):
    r"""Weight quantization: q = clip(round(w/s + z), q_min, q_max) per Conv2d/Linear weight, stored packed.

    symmetric: z = 0 on the narrow grid, s = max|w| / (2^(b-1) - 1); else asymmetric on [0, 2^b - 1].
    Inference dequantizes, w_hat = s (q - z), and runs the FP32 layers (biases and BatchNorm stay FP32).
    ``model`` is not modified; the result lives on ``model``'s device. Sizes: ``.size_bytes()`` vs
    :func:`state_size_bytes` (model).

    granularity: PerChannel(0) (default, None) or PerTensor().
    Raises TypeError if ``model`` is not an nn.Module; ValueError for bits outside 2..8, a granularity
    other than PerTensor()/PerChannel(0), a model on the meta device or split across devices, or a bad
    weight (NaN/inf; the message names the layer).

    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> wq = quantize_weights(model, bits=4)
    >>> round(state_size_bytes(model) / wq.size_bytes(), 1)      # < 8x: biases and s stay FP32
    6.3
    """
    bits = check_bits(bits, low=2, high=8)
    model_device(model)
    return WeightOnlyModel(model, bits, check_granularity(granularity), bool(symmetric))

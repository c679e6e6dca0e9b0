r"""The integer engine's layers and model: integer tensors in, integer tensors out; (s, z) travel alongside.

:class:`IntConv2d` / :class:`IntLinear` accumulate exactly (:func:`quantlab.engine.ops.int_conv2d`,
:func:`~quantlab.engine.ops.int_linear`) and requantize with the fixed-point multiplier M ~ M0 * 2^-n
(a fused ReLU is the clamp to [z_y, q_max]); :class:`IntReLU`, :class:`IntMaxPool2d`, :class:`IntAvgPool2d`
and :class:`IntFlatten` move integers; :class:`IntModel` chains them and :func:`run_int` runs it: quantize
the input once, integer layers on the CPU, dequantize only the logits (returned on the input's device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._checks import check_images
from ..linear import dequantize, quantize
from ..packing import _width
from .ops import int_conv2d, int_linear, requant_multiplier, requantize

__all__ = ["IntConv2d", "IntLinear", "IntReLU", "IntMaxPool2d", "IntAvgPool2d", "IntFlatten", "IntModel", "run_int"]

@dataclass
class _IntMatmulLayer:
    """Shared state of IntConv2d / IntLinear (weights, bias, multiplier, output grid)."""

    name: str
    q_w: torch.Tensor  # int8 (C_out, ...) -- or int16 for weights above 8 bits
    s_w: torch.Tensor  # float32 (C_out,) -- the same value repeated for per-tensor weights
    z_w: torch.Tensor  # int64 (C_out,)
    q_b: torch.Tensor | None  # int32 (C_out,) on scale s_w * s_x
    s_x: float
    z_x: int
    s_y: float
    z_y: int
    q_min: int
    q_max: int
    relu: bool = False  # fused ReLU: clamp to [z_y, q_max]
    M0: torch.Tensor = field(init=False)
    n: torch.Tensor = field(init=False)

    def __post_init__(self):
        M = self.s_w.double() * self.s_x / self.s_y
        pairs = [requant_multiplier(float(m)) for m in M]
        self.M0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
        self.n = torch.tensor([p[1] for p in pairs], dtype=torch.int64)

    @property
    def clamp_range(self) -> tuple[int, int]:
        return (max(self.z_y, self.q_min) if self.relu else self.q_min), self.q_max

    def accumulate(self, q_x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, q_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (int32 accumulator as int64, requantized output q_y as int64)."""
        acc = self.accumulate(q_x)
        return acc, requantize(acc, self.M0, self.n, self.z_y, *self.clamp_range)

    def __call__(self, q_x):
        return self.forward(q_x)[1]


@dataclass
class IntConv2d(_IntMatmulLayer):
    """Integer Conv2d: q_y = clip(z_y + M (sum (q_w - z_w)(q_x - z_x) + q_b)); M per output channel."""

    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    def accumulate(self, q_x):
        return int_conv2d(q_x, self.z_x, self.q_w, self.z_w, self.q_b, self.stride, self.padding,
                          self.dilation, self.groups)


@dataclass
class IntLinear(_IntMatmulLayer):
    """Integer Linear: q_y = clip(z_y + M (sum_k (q_w - z_w)(q_x - z_x) + q_b)); M per output channel."""

    def accumulate(self, q_x):
        return int_linear(q_x, self.z_x, self.q_w, self.z_w, self.q_b)


@dataclass
class IntReLU:
    """A ReLU that could not be fused: q_y = max(q_x, z) (q = z is r = 0); (s, z) unchanged."""

    name: str
    z: int

    def __call__(self, q_x):
        return torch.clamp(q_x, min=self.z)


@dataclass
class IntMaxPool2d:
    """Max pooling on integers: max commutes with r = s (q - z) for s > 0, so (s, z) are unchanged."""

    name: str
    kernel_size: tuple
    stride: tuple
    padding: tuple = (0, 0)
    z: int = 0

    def __call__(self, q_x):
        # float32 holds every integer below 2^24 exactly; padded cells are -inf and never win.
        y = F.max_pool2d(q_x.to(torch.float32), self.kernel_size, self.stride, self.padding)
        return y.to(torch.int64)


@dataclass
class IntAvgPool2d:
    """Average pooling on integers: q_y = z + floor((sum (q_x - z) + k/2) / k) (ties up); (s, z) kept."""

    name: str
    kernel_size: tuple
    stride: tuple
    z: int = 0

    def __call__(self, q_x):
        k = self.kernel_size[0] * self.kernel_size[1]
        x = q_x.to(torch.float64) - self.z
        sums = torch.round(F.avg_pool2d(x, self.kernel_size, self.stride, divisor_override=1)).to(torch.int64)
        return self.z + torch.div(2 * sums + k, 2 * k, rounding_mode="floor")


@dataclass
class IntFlatten:
    """Flatten (N, C, H, W) -> (N, C*H*W): integers and (s, z) unchanged."""

    name: str
    start_dim: int = 1

    def __call__(self, q_x):
        return torch.flatten(q_x, self.start_dim)


@dataclass
class IntModel:
    """A fully quantized chain of integer layers, with the input grid and the output (logit) grid.

    input_qparams / output_qparams: (s, z, q_min, q_max). Built by :func:`quantlab.ptq.convert`.
    """

    layers: list
    input_qparams: tuple
    output_qparams: tuple
    weight_bits: int = 8
    act_bits: int = 8
    granularity: object = None

    def size_bytes(self, packed: bool = False) -> int:
        """Bytes the engine stores: weights (int8), int32 biases, (s_w, z_w, M0, n) per channel.

        packed=True counts the weights as :func:`quantlab.packing.pack_bits` stores them (2 per byte at
        3-4 bits, 4 at 2 bits, 8 at 1 bit); the engine itself keeps them in int8.
        """
        total = 0
        for layer in self.layers:
            if isinstance(layer, _IntMatmulLayer):
                for t in (layer.q_w, layer.s_w, layer.z_w, layer.q_b, layer.M0, layer.n):
                    if t is not None:
                        total += t.numel() * t.element_size()
                if packed:
                    total -= layer.q_w.numel() * layer.q_w.element_size()
                    total += -(-layer.q_w.numel() * _width(self.weight_bits) // 8)
        return total

    def __call__(self, x):
        return run_int(self, x)


def _input_check(qmodel: IntModel, x: torch.Tensor) -> None:
    """The batch fits the first integer layer (channels / features), or a ValueError naming x_float."""
    first = qmodel.layers[0] if qmodel.layers else None
    if isinstance(first, IntConv2d):
        c_in = first.q_w.shape[1] * first.groups
        if x.ndim != 4 or x.shape[1] != c_in:
            raise ValueError(f"x_float must have shape (N, {c_in}, H, W) for the first layer {first.name!r}; "
                             f"got {tuple(x.shape)}.")
    elif isinstance(first, IntLinear) and (x.ndim != 2 or x.shape[1] != first.q_w.shape[1]):
        raise ValueError(f"x_float must have shape (N, {first.q_w.shape[1]}) for the first layer "
                         f"{first.name!r}; got {tuple(x.shape)}.")


def run_int(qmodel: IntModel, x_float, intermediates: bool = False):
    r"""Integer-only inference: quantize the input once, run integer layers, dequantize only the logits.

    q_x = clip(round(x / s_x + z_x), q_min, q_max) (:func:`quantlab.linear.quantize`); every layer maps
    integers to integers; logits = s_y (q_y - z_y) (:func:`quantlab.linear.dequantize`) for the last layer.

    Shapes: x_float (N, 1, 28, 28) float for the lab's CNN, on any device. Returns float32 logits (N, 10)
    on x_float's device; with ``intermediates=True`` returns (logits, records) where records is a list of
    dicts {"name", "kind", "q_in", "acc" (int32 accumulator or None), "q_out"}, one per layer (on the CPU).
    The batch is moved to the CPU once and the integer layers run there (see the module docstring).
    Raises TypeError for a non-IntModel or non-float x_float (raw uint8 pixels: divide by 255);
    ValueError for an empty batch, NaN/inf in x_float (named as such), or a shape the first layer cannot
    take; a ValueError inside a layer is re-raised with the layer's name.

    >>> from quantlab.ptq import calibrate_activations, convert
    >>> m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    >>> x = torch.rand(8, 1, 2, 2)
    >>> logits = run_int(convert(m, calibrate_activations(m, x, input_shape=(1, 2, 2))), x)
    >>> logits.shape, bool((logits - m(x)).abs().max() < 0.05)
    (torch.Size([8, 2]), True)
    """
    if not isinstance(qmodel, IntModel):
        raise TypeError(f"qmodel must be an IntModel (from quantlab.ptq.convert); got {type(qmodel).__name__}.")
    x = check_images(x_float, "x_float")
    _input_check(qmodel, x)
    s, z, q_min, q_max = qmodel.input_qparams
    q = quantize(x.detach().to("cpu", torch.float32), s, z, q_min, q_max).to(torch.int64)  # once per call
    records = []
    for layer in qmodel.layers:
        try:
            acc, q_out = layer.forward(q) if isinstance(layer, _IntMatmulLayer) else (None, layer(q))
        except ValueError as e:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): {e}") from e
        if intermediates:
            records.append({"name": layer.name, "kind": type(layer).__name__, "q_in": q, "acc": acc,
                            "q_out": q_out})
        q = q_out
    s_y, z_y = qmodel.output_qparams[:2]
    logits = dequantize(q, s_y, z_y).to(x.device)
    return (logits, records) if intermediates else logits

r"""Granularity: which values share one (s, z) — layer-by-layer vs channel-by-channel (section 9.3.1).

Granularity is *data*, not a code path: ``PerTensor()`` (one s, z for the whole layer),
``PerChannel(axis)`` (one s, z per output channel) and ``PerGroup(group_size)`` (one s, z per run of
``group_size`` consecutive weights in a row — beyond the text, as used for LLM weights). The one
function :func:`choose_qparams` computes (s, z) for any of them, shaped to broadcast against r, so
:func:`quantlab.linear.quantize` needs no special case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from ._checks import as_float_tensor, check_bits
from .linear import fake_quantize, qrange, quantize, scale_zero_point

__all__ = [
    "PerTensor",
    "PerChannel",
    "PerGroup",
    "Granularity",
    "QParams",
    "qparams_from_range",
    "range_of",
    "choose_qparams",
    "quantize_tensor",
    "fake_quantize_tensor",
    "fake_quantize_weights",
]


@dataclass(frozen=True)
class PerTensor:
    """One (s, z) for the whole tensor: layer-by-layer quantization."""


@dataclass(frozen=True)
class PerChannel:
    """One (s, z) per index along ``axis`` (axis 0 = output channels of a conv/linear weight)."""

    axis: int = 0


@dataclass(frozen=True)
class PerGroup:
    """One (s, z) per ``group_size`` consecutive values of each row.

    Rows: r viewed as (shape[0], -1); a 1-D r is a single row.
    """

    group_size: int = 32


Granularity = Union[PerTensor, PerChannel, PerGroup]


@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters — the library's one type for them: s, z, the grid [q_min, q_max], granularity.

    s (float32) and z (int64) are tensors that broadcast against r (0-d per tensor, (C, 1, ..., 1) per
    channel). Iterating gives the four numbers of the text, so ``s, z, q_min, q_max = p`` works.
    Made only by :func:`qparams_from_range` (and :func:`choose_qparams`, which calls it).
    """

    s: torch.Tensor
    z: torch.Tensor
    q_min: int
    q_max: int
    granularity: object = PerTensor()

    def __iter__(self):
        return iter((self.s, self.z, self.q_min, self.q_max))

    def __getitem__(self, i):
        return (self.s, self.z, self.q_min, self.q_max)[i]

    def __len__(self) -> int:
        return 4

    @property
    def n_params(self) -> int:
        """How many distinct (s, z) pairs are stored (1 per tensor, C per channel, R*K/g per group)."""
        if isinstance(self.granularity, PerGroup):
            return self.s.numel() // self.granularity.group_size
        return self.s.numel()

    def to(self, device) -> QParams:
        """The same parameters with s and z on ``device``."""
        return QParams(self.s.to(device), self.z.to(device), self.q_min, self.q_max, self.granularity)


def qparams_from_range(r_min, r_max, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                       narrow: bool = False, granularity: Granularity = PerTensor()) -> QParams:
    r"""The one path from a range to parameters: [q_min, q_max] = qrange(bits, signed, narrow), then (s, z).

    signed defaults to ``symmetric`` (z = 0 needs a grid around 0; asymmetric uses 0..2^b - 1, like
    torch.quint8). (s, z) = :func:`quantlab.linear.scale_zero_point` (r_min, r_max, q_min, q_max, symmetric):
    asymmetric s = (r_max - r_min)/(q_max - q_min), z = clip(q_min - round(r_min/s)); symmetric z = 0.
    Every module (granularity, observers, calibration, PTQ, the engine, the explorers) calls this.

    Shapes: r_min, r_max numbers or tensors of one shape; s, z have that shape (on r_min's device).

    >>> p = qparams_from_range(-1.0, 3.0, 8)
    >>> float(p.s), int(p.z), p.q_min, p.q_max      # s = 4/255, z = 64
    (0.01568627543747425, 64, 0, 255)
    """
    bits = check_bits(bits)
    signed = symmetric if signed is None else bool(signed)
    q_min, q_max = qrange(bits, signed=signed, narrow=narrow)
    s, z = scale_zero_point(r_min, r_max, q_min, q_max, symmetric=symmetric)
    return QParams(s, z, q_min, q_max, granularity)


def _check_axis(axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int; got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis} is out of range for a tensor with {ndim} dimension(s); use 0..{ndim - 1} "
            "(axis 0 = output channels of a conv or linear weight)."
        )
    return axis % ndim


def range_of(r, granularity: Granularity = PerTensor()):
    r"""(r_min, r_max) per quantization unit, shaped to broadcast against r.

    PerTensor: 0-d tensors.  PerChannel(axis): shape with every dim 1 except ``axis``.
    PerGroup(g): r viewed as (R, K) = (shape[0], -1) (a 1-D r is one row) with K % g == 0; returns
    r's shape (each group's range repeated over its g values), so it broadcasts trivially.

    >>> w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    >>> range_of(w, PerChannel(0))[1].flatten()
    tensor([1.0000, 0.5000])
    """
    t = as_float_tensor(r, "r")
    if isinstance(granularity, PerTensor):
        return t.min(), t.max()
    if isinstance(granularity, PerChannel):
        if t.ndim == 0:
            raise ValueError(
                "PerChannel needs a tensor with at least one dimension; use PerTensor() for a scalar."
            )
        axis = _check_axis(granularity.axis, t.ndim)
        dims = [d for d in range(t.ndim) if d != axis]
        if not dims:
            return t.clone(), t.clone()
        return t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    if isinstance(granularity, PerGroup):
        g = granularity.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ValueError(f"group_size must be a positive int; got {g!r}.")
        rows = t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(1, -1)  # a 1-D r is one row
        if rows.shape[1] % g:
            raise ValueError(
                f"group_size={g} does not divide the row length {rows.shape[1]} of r viewed as "
                f"{tuple(rows.shape)}; "
                f"pick a divisor of {rows.shape[1]}."
            )
        grouped = rows.reshape(rows.shape[0], -1, g)
        lo = grouped.amin(dim=2, keepdim=True).expand_as(grouped).reshape(t.shape)
        hi = grouped.amax(dim=2, keepdim=True).expand_as(grouped).reshape(t.shape)
        return lo, hi
    raise TypeError(
        f"granularity must be PerTensor(), PerChannel(axis) or PerGroup(size); got {granularity!r}."
    )


def choose_qparams(
    r, bits: int = 8, granularity: Granularity = PerTensor(), symmetric: bool = False,
    signed: bool | None = None, narrow: bool = False,
) -> QParams:
    r"""Compute (s, z, q_min, q_max) for r at a bit-width and granularity — range first, then parameters.

    [q_min, q_max] = qrange(bits, signed, narrow); signed defaults to ``symmetric`` (z = 0 needs a grid
    around 0) — pass signed=False with symmetric=True for non-negative data such as post-ReLU.
    (r_min, r_max) = :func:`range_of` (r, granularity);  (s, z) = :func:`scale_zero_point`.

    Shapes: r any float shape; s, z broadcast against r (see range_of).

    >>> p = choose_qparams(torch.randn(16, 3, 3, 3), 8, PerChannel(0), symmetric=True)
    >>> p.s.shape, p.q_min, p.q_max
    (torch.Size([16, 1, 1, 1]), -128, 127)
    """
    r_min, r_max = range_of(r, granularity)
    return qparams_from_range(r_min, r_max, bits, symmetric, signed, narrow, granularity)


def quantize_tensor(r, bits: int = 8, granularity: Granularity = PerTensor(), symmetric: bool = False, **kw):
    """Quantize r in one call: returns (q, QParams). ``dequantize(q, p.s, p.z)`` gives r_hat back.

    >>> q, p = quantize_tensor(torch.randn(4, 8), 4, PerChannel(0))
    """
    p = choose_qparams(r, bits, granularity, symmetric, **kw)
    return quantize(r, p.s, p.z, p.q_min, p.q_max), p


def fake_quantize_tensor(
    r, bits: int = 8, granularity: Granularity = PerTensor(), symmetric: bool = False, **kw
):
    """r_hat = dequantize(quantize(r)) at a bit-width and granularity (float out, same shape as r).

    >>> r_hat = fake_quantize_tensor(torch.randn(4, 8), 4, PerChannel(0), symmetric=True)
    """
    p = choose_qparams(r, bits, granularity, symmetric, **kw)
    return fake_quantize(r, p.s, p.z, p.q_min, p.q_max)



def fake_quantize_weights(model: torch.nn.Module, bits: int, granularity: Granularity = PerChannel(0),
                          symmetric: bool = True, narrow: bool = True) -> torch.nn.Module:
    r"""A copy of ``model`` whose Conv/Linear weights are replaced by w_hat = s (clip(round(w/s + z)) - z).

    Simulated weight quantization for any granularity and 1–16 bits; :func:`quantlab.ptq.quantize_weights` is the
    stored counterpart (packed integers + (s, z), per-tensor or per-channel, 2–8 bits) with measured size.
    Each weight gets its own (s, z) at the given granularity (biases stay FP32). For ``PerGroup(g)``, a layer
    whose row length (C_in·k_h·k_w) is not a multiple of g — e.g. a first conv with rows of 9 — falls back
    to one group per row (= per-channel). ``model`` is not modified; the copy is on ``model``'s device.
    Built with the model walker :func:`quantlab.models.replace_layers`: a bad weight (NaN/inf) is a
    ValueError naming its layer; a non-model is a TypeError; a meta or half-moved model a ValueError.

    >>> lin = torch.nn.Linear(4, 2)
    >>> m2 = fake_quantize_weights(lin, 2)            # 2 bits, narrow symmetric grid: levels -s, 0, s
    >>> [len(torch.unique(row)) <= 3 for row in m2.weight.detach()]
    [True, True]
    """
    from .models import replace_layers

    def swap(name, layer):
        g = granularity
        if isinstance(g, PerGroup) and (layer.weight[0].numel() % g.group_size):
            g = PerChannel(0)
        with torch.no_grad():
            layer.weight.copy_(fake_quantize_tensor(layer.weight, bits, g, symmetric, narrow=narrow))
        return layer

    return replace_layers(model, swap)

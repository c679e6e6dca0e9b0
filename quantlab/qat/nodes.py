r"""The pseudo-quantization ("fake-quant") nodes of quantization-aware training, forward beside backward.

* :func:`fake_quant` — the text's node: r_hat = s (clip(round(r/s + z), q_min, q_max) - z) with the
  clipped straight-through gradient (1 where round(r/s + z) lies in [q_min, q_max], else 0). It is
  :class:`quantlab.linear.FakeQuantizeSTE`; per-channel works because s and z broadcast against r.
* :class:`LSQ` — learned step size (Esser et al. 2020, beyond the text): s is a parameter, z = 0.
* :class:`PACT` — learned activation clip alpha (Choi et al. 2018, beyond the text).
* :class:`QuantNode` — the module that sits in the network: it keeps the range [r_min, r_max] of what
  it quantizes (buffers), updates it while training (weights: min/max of the current weights;
  activations: an observer of :mod:`quantlab.observers`, running min/max or moving average), and
  applies one of the three rules above.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_bits
from ..granularity import PerChannel, PerTensor, QParams, qparams_from_range, range_of
from ..linear import FakeQuantizeSTE, qrange
from ..observers import MinMaxObserver, MovingAverageMinMaxObserver

__all__ = ["fake_quant", "LSQ", "PACT", "lsq_grad_scale", "QuantNode", "OBSERVERS", "LEARN"]

#: Range rules for activation nodes while training: running min/max or exponential moving average.
OBSERVERS = ("minmax", "ema")
#: Learned ranges: None (ranges observed), "lsq" (weights or activations), "pact" (activations only).
LEARN = (None, "lsq", "pact")


def fake_quant(r: torch.Tensor, p: QParams) -> torch.Tensor:
    r"""The fake-quant node: r_hat = s (clip(round(r/s + z), q_min, q_max) - z), clipped-STE gradient.

    Backward: dr_hat/dr = 1 where round(r/s + z) is inside [q_min, q_max], 0 outside (s, z get none).
    Equals ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` and their gradients except
    on exact rounding ties (PyTorch rounds r * (1/s), tests/test_qat.py).

    Shapes: r float (any shape, any device); p.s, p.z broadcast against r (0-d, or (C, 1, ..., 1)).
    Returns r's shape and dtype.

    >>> p = qparams_from_range(-0.875, 0.875, 4, symmetric=True, narrow=True)   # s = 1/8, z = 0 on [-7, 7]
    >>> fake_quant(torch.tensor([0.30, 2.0]), p)
    tensor([0.2500, 0.8750])
    """
    s = p.s.to(device=r.device, dtype=r.dtype)
    z = p.z.to(device=r.device, dtype=r.dtype)
    return FakeQuantizeSTE.apply(r, s, z, p.q_min, p.q_max)


def lsq_grad_scale(n: int, q_p: int) -> float:
    r"""LSQ's gradient scale g = 1 / sqrt(N * Q_P): N values share one step size, Q_P = q_max.

    >>> lsq_grad_scale(100, 7)
    0.03779644730092272
    """
    return 1.0 / math.sqrt(max(int(n), 1) * max(int(q_p), 1))


class LSQ(torch.autograd.Function):
    r"""Learned step size quantization: r_hat = s clip(round(r/s), q_min, q_max), s learned, z = 0.

    Forward:   v = r / s,  r_hat = s * clip(round(v), q_min, q_max)
    Backward:  dr_hat/dr = 1 where round(v) in [q_min, q_max], else 0 (the clipped STE, as fake_quant)
               dr_hat/ds = g * (round(v) - v)  inside,  g * q_min  below,  g * q_max  above
               with g = 1/sqrt(N Q_P) (:func:`lsq_grad_scale`), summed over the values sharing one s.

    Shapes: r float any shape; s a positive tensor that broadcasts against r (0-d or (C, 1, ..., 1)).

    >>> r, s = torch.tensor([0.3, 5.0], requires_grad=True), torch.tensor(0.5, requires_grad=True)
    >>> LSQ.apply(r, s, -4, 3, 1.0).sum().backward()
    >>> r.grad, s.grad      # 5.0 is clipped: no gradient to r, q_max = 3 to s; 0.3: round(0.6) - 0.6
    (tensor([1., 0.]), tensor(3.4000))
    """

    @staticmethod
    def forward(ctx, r, s, q_min, q_max, g):
        v = r / s
        q = torch.round(v)
        below, above = q < q_min, q > q_max
        ctx.save_for_backward(v, q, below, above)
        ctx.q_min, ctx.q_max, ctx.g, ctx.s_shape = q_min, q_max, g, s.shape
        return s * torch.clamp(q, q_min, q_max)

    @staticmethod
    def backward(ctx, grad_out):
        v, q, below, above = ctx.saved_tensors
        inside = ~(below | above)
        grad_r = grad_out * inside
        ds = torch.where(below, float(ctx.q_min), torch.where(above, float(ctx.q_max), q - v))
        grad_s = _sum_to(grad_out * ds * ctx.g, ctx.s_shape)
        return grad_r, grad_s, None, None, None


class PACT(torch.autograd.Function):
    r"""PACT: clip activations to a learned [0, alpha], then quantize on 2^b levels (unsigned, z = 0).

    Forward:   y = clip(x, 0, alpha),   s = alpha / (2^b - 1),   y_hat = s * round(y / s)
    Backward:  dy_hat/dx = 1 for 0 <= x <= alpha, else 0;   dy_hat/dalpha = 1 for x > alpha, else 0
               (straight through the rounding, as in the PACT paper: y = (|x| - |x - alpha| + alpha) / 2).

    Shapes: x float any shape; alpha a positive 0-d tensor.

    >>> x, a = torch.tensor([-1.0, 0.4, 3.0], requires_grad=True), torch.tensor(1.0, requires_grad=True)
    >>> PACT.apply(x, a, 2).sum().backward()
    >>> x.grad, a.grad
    (tensor([0., 1., 0.]), tensor(1.))
    """

    @staticmethod
    def forward(ctx, x, alpha, bits):
        levels = 2**bits - 1
        s = alpha / levels
        ctx.save_for_backward((x >= 0) & (x <= alpha), x > alpha)
        y = torch.minimum(torch.clamp(x, min=0.0), alpha)
        return s * torch.round(y / s)

    @staticmethod
    def backward(ctx, grad_out):
        inside, above = ctx.saved_tensors
        return grad_out * inside, (grad_out * above).sum().reshape(()), None


def _sum_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (the shape of s: 0-d or (C, 1, ..., 1))."""
    if len(shape) == 0:
        return t.sum()
    lead = t.ndim - len(shape)
    if lead:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(d for d, n in enumerate(shape) if n == 1 and t.shape[d] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


class QuantNode(nn.Module):
    r"""A fake-quant node with its range [r_min, r_max] (buffers) and the rule that updates it.

    kind "weight": symmetric narrow grid [-(2^(b-1)-1), 2^(b-1)-1], z = 0, the range is min/max of the
    current weights (per channel with ``PerChannel(0)``), recomputed on every forward — the text's step 3.
    kind "activation": asymmetric unsigned grid [0, 2^b - 1]; while training the range follows the
    observer ("minmax": running min/max, "ema": r <- r + c (batch - r)), unless :attr:`frozen`.
    learn="lsq": s is a learned parameter (:class:`LSQ`); learn="pact": alpha is (:class:`PACT`,
    activations whose range starts at 0 only). Either way :meth:`qparams` goes through
    :func:`quantlab.granularity.qparams_from_range` from :meth:`range`.

    Raises ValueError for bits outside 2..8, an unknown kind/observer/learn, or PACT on weights.

    >>> node = QuantNode("activation", 4).init_range(0.0, 3.0)
    >>> node.eval()(torch.tensor([0.15, 1.0, 9.0]))       # s = 3/15 = 0.2; 9.0 clips to 3.0
    tensor([0.2000, 1.0000, 3.0000])
    """

    def __init__(self, kind: str, bits: int, granularity=PerTensor(), observer: str = "ema",  # noqa: B008 - frozen dataclass
                 averaging_constant: float = 0.01, learn: str | None = None):
        super().__init__()
        if kind not in ("weight", "activation"):
            raise ValueError(f"kind must be 'weight' or 'activation'; got {kind!r}.")
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}; got {observer!r}.")
        if learn not in LEARN or (learn == "pact" and kind == "weight"):
            raise ValueError(f"learn must be None, 'lsq' or (activations only) 'pact'; got {learn!r} for "
                             f"a {kind} node.")
        if kind == "activation" and not isinstance(granularity, PerTensor):
            raise ValueError("activation nodes are per tensor: use granularity=PerTensor().")
        if not isinstance(granularity, (PerTensor, PerChannel)):
            raise ValueError(f"granularity must be PerTensor() or PerChannel(0); got {granularity!r}.")
        self.kind, self.bits, self.granularity = kind, check_bits(bits, low=2, high=8), granularity
        self.observer, self.learn, self.frozen = observer, learn, False
        self.averaging_constant = averaging_constant
        self.register_buffer("r_min", torch.zeros(()))
        self.register_buffer("r_max", torch.zeros(()))
        self.register_buffer("initialised", torch.tensor(False))
        self.s = nn.Parameter(torch.ones(())) if learn == "lsq" else None
        self.alpha = nn.Parameter(torch.ones(())) if learn == "pact" else None

    # -- the grid -------------------------------------------------------------------------------
    @property
    def symmetric(self) -> bool:
        return self.kind == "weight"

    @property
    def grid(self) -> tuple[int, int]:
        """[q_min, q_max]: narrow signed for weights, unsigned for activations."""
        return qrange(self.bits, signed=self.symmetric, narrow=self.symmetric)

    def _lsq_grid(self) -> tuple[int, int]:
        """LSQ's own grid (z = 0): the weight grid, or unsigned / signed for activations by their range."""
        if self.kind == "weight" or float(self.r_min) >= 0:
            return self.grid
        return qrange(self.bits, signed=True)

    # -- step 1: initial range --------------------------------------------------------------------
    def init_range(self, r_min, r_max) -> QuantNode:
        """Set the initial range (the text's step 1); learned s / alpha start from it. Returns self."""
        r_min = torch.as_tensor(r_min, dtype=torch.float32).detach()
        r_max = torch.as_tensor(r_max, dtype=torch.float32).detach()
        dev = self.r_min.device
        self.r_min, self.r_max = r_min.clone().to(dev), r_max.clone().to(dev)
        self.initialised.fill_(True)
        if self.learn == "lsq":
            q_lo, q_hi = self._lsq_grid()
            s0 = qparams_from_range(r_min, r_max, self.bits, symmetric=True, signed=q_lo < 0,
                                    narrow=self.kind == "weight").s
            self.s = nn.Parameter(s0.clone().to(dev))
        elif self.learn == "pact":
            if float(r_min) < 0:
                raise ValueError("PACT clips to [0, alpha]: use it after a ReLU (this range starts at "
                                 f"{float(r_min):.3g} < 0), or learn=None / 'lsq' here.")
            self.alpha = nn.Parameter(torch.clamp(r_max, min=1e-3).clone().to(dev))
        return self

    # -- the range and its (s, z) ---------------------------------------------------------------------
    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_min, r_max) now: observed, or s*q_min..s*q_max (LSQ), or 0..alpha (PACT); detached."""
        if self.learn == "lsq":
            q_lo, q_hi = self._lsq_grid()
            s = self.s.detach()
            return s * q_lo, s * q_hi
        if self.learn == "pact":
            return torch.zeros_like(self.alpha.detach()), self.alpha.detach().clone()
        return self.r_min.clone(), self.r_max.clone()

    def qparams(self) -> QParams:
        """(s, z, q_min, q_max) from :meth:`range` via qparams_from_range (the export uses the same)."""
        self._need_init()
        r_min, r_max = self.range()
        return qparams_from_range(r_min, r_max, self.bits, symmetric=self.symmetric, signed=self.symmetric,
                                  narrow=self.symmetric, granularity=self.granularity)

    def _need_init(self):
        if not bool(self.initialised):
            raise RuntimeError("this QuantNode has no range yet: run step 1 (quantlab.qat.initial_ranges) "
                               "and build the network with prepare_qat(model, ranges, ...).")

    # -- step 3: range updates while training ---------------------------------------------------------
    def _observe(self, r: torch.Tensor) -> None:
        if self.kind == "weight":
            if self.learn is not None:
                return
            lo, hi = range_of(r.detach(), self.granularity)
            self.r_min, self.r_max = lo, hi
            return
        if not self.training or self.frozen or self.learn is not None:
            return
        obs = MinMaxObserver() if self.observer == "minmax" else MovingAverageMinMaxObserver(
            self.averaging_constant)
        obs.min_val, obs.max_val = self.r_min, self.r_max
        obs.update(r.detach())
        self.r_min, self.r_max = obs.min_val.reshape(()), obs.max_val.reshape(())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        self._need_init()
        self._observe(r)
        if self.learn == "lsq":
            q_lo, q_hi = self._lsq_grid()
            n = r.numel() // self.s.numel() if self.kind == "weight" else r[0].numel()
            return LSQ.apply(r, self.s, q_lo, q_hi, lsq_grad_scale(n, q_hi))
        if self.learn == "pact":
            return PACT.apply(r, self.alpha, self.bits)
        return fake_quant(r, self.qparams())

    def extra_repr(self) -> str:
        rule = self.learn or ("min/max of the weights" if self.kind == "weight" else self.observer)
        return f"{self.kind}, bits={self.bits}, {type(self.granularity).__name__}, range: {rule}"

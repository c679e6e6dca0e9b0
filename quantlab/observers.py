r"""Range observers for post-training quantization (section 9.3.1): watch calibration batches, keep stats.

"In order to quantify the activation values, the user needs to provide a certain number of calibration
datasets to count the distribution of activation values at each level." An observer is that counter:
call it on every calibration batch (``observer(x)`` returns x unchanged, so it can sit in a forward
hook), then ask it for quantization parameters with ``observer.qparams(bits)``.

- :class:`MinMaxObserver`              r_min = min over all batches, r_max = max over all batches.
- :class:`MovingAverageMinMaxObserver` r_min <- r_min + c (min(x) - r_min)   (same for r_max).
- :class:`PerChannelMinMaxObserver`    one (r_min, r_max) per index along ``axis``.
- :class:`HistogramObserver`           the histogram P_f of all values seen, on ``bins`` equal bins over
  [r_min, r_max]; when a batch widens the range the old histogram is re-binned into the new one.

Devices: the min/max observers keep their statistics on the device of the batches (one device per
observer); the histogram observer copies each batch to the CPU (NumPy).

``qparams`` returns a :class:`quantlab.granularity.QParams` (s, z, q_min, q_max) computed by
:func:`quantlab.granularity.qparams_from_range` (same rules as PyTorch's observers). The histogram feeds
:func:`quantlab.calibration.calibrate`.
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import as_float_tensor
from .granularity import PerChannel, QParams, qparams_from_range

__all__ = [
    "Calibration",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "HistogramObserver",
    "rebin",
]


#: Observers return the library's one parameter type (an alias kept for older notebooks).
Calibration = QParams


class _RangeObserver:
    """Shared parts: input checks, ``__call__`` -> update, and qparams from (r_min, r_max)."""

    min_val: torch.Tensor | None = None
    max_val: torch.Tensor | None = None

    def __call__(self, x):
        """Observe one batch and return it unchanged (usable as a forward hook's body)."""
        self.update(x)
        return x

    def _batch(self, x) -> torch.Tensor:
        t = as_float_tensor(x, "x").detach().float()
        if self.min_val is not None and t.device != self.min_val.device:
            raise ValueError(f"x is on {t.device} but earlier batches were on {self.min_val.device}; feed one "
                             f"observer from one device (x = x.to('{self.min_val.device}')).")
        return t

    def update(self, x) -> None:
        """Fold one batch into the running range: the first batch sets it, later ones are combined."""
        lo, hi = self._batch_range(self._batch(x))
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = self._combine(lo, hi)

    def _batch_range(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t.min(), t.max()

    def _combine(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Running min/max (overridden by the moving average)."""
        return torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)

    def _need_data(self):
        if self.min_val is None:
            raise RuntimeError(
                f"{type(self).__name__} has not seen any data yet; call observer(x) on calibration batches "
                "before asking for qparams."
            )

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_min, r_max) seen so far. Raises RuntimeError before the first batch."""
        self._need_data()
        return self.min_val.clone(), self.max_val.clone()

    def qparams(self, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                narrow: bool = False) -> QParams:
        r"""(s, z, q_min, q_max) for the observed range [r_min, r_max].

        asymmetric: s = (r_max - r_min)/(q_max - q_min),  z = clip(q_min - round(r_min/s));
        symmetric:  s = max(-r_min, r_max)/((q_max - q_min)/2),  z = 0   (see quantlab.scale_zero_point).
        signed defaults to ``symmetric`` (asymmetric uses the unsigned grid 0..2^b-1, like torch.quint8).
        Raises RuntimeError before any data, ValueError for a bad bit-width.

        >>> obs = MinMaxObserver(); obs.update(torch.tensor([-1.0, 3.0]))
        >>> obs.qparams(8).z      # s = 4/255, z = round(1/s) = 64
        tensor(64)
        """
        self._need_data()
        return qparams_from_range(self.min_val, self.max_val, bits, symmetric, signed, narrow)


class MinMaxObserver(_RangeObserver):
    r"""Running r_min = min over every value seen, r_max = max over every value seen (per tensor).

    Shapes: any batch shape; ``min_val``/``max_val`` are 0-d float32 tensors.
    Raises ValueError for an empty batch or NaN/inf (the message names ``x``).

    >>> obs = MinMaxObserver(); obs.update(torch.randn(64, 10)); obs.update(torch.randn(64, 10))
    >>> s, z, q_min, q_max = obs.qparams(8)
    """


class MovingAverageMinMaxObserver(_RangeObserver):
    r"""Exponential moving average of each batch's range (less sensitive to one outlier batch):

    first batch: r_min = min(x);  later: r_min <- r_min + c (min(x) - r_min),  same for r_max,
    c = averaging_constant.

    >>> obs = MovingAverageMinMaxObserver(0.01); obs.update(torch.randn(64, 10))
    >>> s, z, q_min, q_max = obs.qparams(8)
    """

    def __init__(self, averaging_constant: float = 0.01):
        c = float(averaging_constant)
        if not 0.0 < c <= 1.0:
            raise ValueError(f"averaging_constant must lie in (0, 1]; got {averaging_constant!r}; try 0.01.")
        self.averaging_constant = c

    def _combine(self, lo, hi):
        """Move the running range a fraction c towards this batch's range."""
        c = self.averaging_constant
        return self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)


class PerChannelMinMaxObserver(_RangeObserver):
    r"""One running (r_min, r_max) per index along ``axis`` (channel-by-channel quantization).

    Shapes: every batch must have the same number of dimensions and the same size along ``axis`` (C);
    ``min_val``/``max_val`` have shape (C,). ``qparams`` returns s, z shaped to broadcast against a batch
    (size C along ``axis``, 1 elsewhere), so ``quantlab.quantize(x, s, z, q_min, q_max)`` works directly.
    Raises ValueError when the channel count or number of dimensions changes between batches.

    >>> obs = PerChannelMinMaxObserver(axis=1); obs.update(torch.randn(8, 16, 5, 5))
    >>> obs.qparams(8, symmetric=True).s.shape
    torch.Size([1, 16, 1, 1])
    """

    def __init__(self, axis: int = 0):
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"axis must be an int; got {axis!r}.")
        self.axis = axis
        self._shape: tuple[int, int] | None = None  # (ndim, C)

    def _batch_range(self, t):
        """Per-channel (min, max) of one batch, after checking its axis and channel count."""
        if t.ndim == 0 or not -t.ndim <= self.axis < t.ndim:
            raise ValueError(
                f"axis={self.axis} is out of range for x with shape {tuple(t.shape)}; "
                f"pick 0..{max(t.ndim - 1, 0)}."
            )
        axis = self.axis % t.ndim
        shape = (t.ndim, t.shape[axis])
        if self._shape is not None and shape != self._shape:
            raise ValueError(
                f"x has {shape[1]} channel(s) along axis {self.axis} and {shape[0]} dimension(s), "
                f"but earlier batches had {self._shape[1]} and {self._shape[0]}; "
                "feed batches of one layer only (or create a new observer)."
            )
        self._shape = shape
        flat = t.movedim(axis, 0).reshape(t.shape[axis], -1)
        return flat.amin(dim=1), flat.amax(dim=1)

    def qparams(self, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                narrow: bool = False) -> QParams:
        """Per-channel (s, z): same rule as per tensor, shaped to broadcast along ``axis`` of a batch."""
        p = super().qparams(bits, symmetric, signed, narrow)
        ndim, c = self._shape
        view = [1] * ndim
        view[self.axis % ndim] = c
        return QParams(p.s.reshape(view), p.z.reshape(view), p.q_min, p.q_max, PerChannel(self.axis))


def rebin(hist: np.ndarray, edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    r"""Re-bin a histogram onto new edges, assuming values are spread uniformly inside each old bin.

    The cumulative count F(e) is piecewise linear between old edges; new counts = diff(F(new_edges)).
    Mass is conserved exactly when [new_edges[0], new_edges[-1]] contains [edges[0], edges[-1]].
    A degenerate old range (edges[0] == edges[-1]) is a point mass, dropped into the bin containing it.

    Shapes: hist (n,), edges (n+1,), new_edges (m+1,) increasing -> (m,) float64.

    >>> rebin(np.array([2.0, 2.0]), np.array([0.0, 1, 2]), np.array([0.0, 0.5, 2.0]))
    array([1., 3.])
    """
    hist = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    new_edges = np.asarray(new_edges, dtype=np.float64)
    total = hist.sum()
    if edges[-1] <= edges[0]:
        out = np.zeros(len(new_edges) - 1)
        k = np.searchsorted(new_edges, edges[0], side="right") - 1
        out[int(np.clip(k, 0, len(out) - 1))] = total
        return out
    cdf = np.concatenate(([0.0], np.cumsum(hist)))
    out = np.maximum(np.diff(np.interp(new_edges, edges, cdf)), 0.0)
    out[np.argmax(out)] += total - out.sum()  # put back the float round-off (the fullest bin absorbs it)
    return out


class HistogramObserver(_RangeObserver):
    r"""The histogram P_f of every value seen: ``bins`` equal bins over [r_min, r_max] of all batches.

    When a batch falls outside the current range, the range grows to cover it and the old histogram is
    re-binned (:func:`rebin`: mass of each old bin spread uniformly over the new bins it overlaps) before
    the batch is added. Total mass is exact; each re-binning moves mass by less than one old bin.

    Attributes: ``hist`` (bins,) float64 counts, ``bin_edges`` (bins+1,), ``min_val``, ``max_val``,
    ``n_seen``. CPU-only by design: ``update`` copies each batch to the CPU (NumPy histograms), so
    batches may come from any device; ``min_val``/``max_val`` are CPU tensors. ``qparams`` uses min/max;
    :func:`quantlab.calibration.calibrate` (observer, "kl", ...) runs the searches.

    >>> obs = HistogramObserver(bins=2048); obs.update(torch.randn(1000)); obs.update(3 * torch.randn(1000))
    >>> hist, edges = obs.histogram(); int(hist.sum())
    2000
    """

    def __init__(self, bins: int = 2048):
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int; got {bins!r} (2048 is the usual choice).")
        self.bins = bins
        self.hist: np.ndarray | None = None
        self.bin_edges: np.ndarray | None = None
        self.n_seen = 0

    def update(self, x) -> None:
        """Add one batch to the histogram, widening (and re-binning) first if it falls outside the range."""
        t = as_float_tensor(x, "x").detach()  # keep float64 data in float64
        a = t.reshape(-1).cpu().double().numpy()  # NumPy histogram: the batch is copied to the CPU
        lo, hi = float(a.min()), float(a.max())
        if self.hist is None:
            new_lo, new_hi = lo, hi
        else:
            new_lo, new_hi = min(lo, float(self.bin_edges[0])), max(hi, float(self.bin_edges[-1]))
        edges = np.linspace(new_lo, new_hi, self.bins + 1)
        if new_hi > new_lo:
            counts = np.histogram(a, bins=self.bins, range=(new_lo, new_hi))[0].astype(np.float64)
        else:  # every value so far is the same number: all the mass sits in bin 0
            counts = np.zeros(self.bins)
            counts[0] = a.size
        if self.hist is not None:
            same = new_lo == self.bin_edges[0] and new_hi == self.bin_edges[-1]
            counts += self.hist if same else rebin(self.hist, self.bin_edges, edges)
        self.hist, self.bin_edges = counts, edges
        self.n_seen += a.size
        lo_t, hi_t = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
        if self.min_val is None:
            self.min_val, self.max_val = lo_t, hi_t
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo_t), torch.maximum(self.max_val, hi_t)

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(hist, bin_edges) of all values seen: float64 (bins,) and (bins+1,). Raises before any data."""
        self._need_data()
        return self.hist.copy(), self.bin_edges.copy()

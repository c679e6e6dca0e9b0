r"""One entry point: calibrate(data, method, bits) -> QParams; per layer of a model with forward hooks.

Range -> (s, z) only through :func:`quantlab.granularity.qparams_from_range`; activations only through
:func:`quantlab.models.collect_activations` / :func:`quantlab.models.activation_hooks`.
"""

from __future__ import annotations

import contextlib

import torch

from .._checks import check_bits, check_model
from ..granularity import QParams, qparams_from_range
from ..linear import fake_quantize
from ..models import activation_hooks, collect_activations
from ..observers import HistogramObserver, _RangeObserver
from .baselines import check_pct, minmax_range, mse_range, percentile_range
from .divergences import METRICS, check_merge
from .histograms import abs_histogram, check_bins, flatten_zero_bin, histogram, source_histogram
from .search import kl_range, kl_threshold

__all__ = ["METHODS", "calibrate_range", "calibrate", "calibrate_model", "fake_quantize_activations",
           "collect_activations"]

METHODS = ("minmax", "percentile", "mse") + METRICS


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    return method


def calibrate_range(source, method: str = "kl", bits: int = 8, symmetric: bool = False,
                    signed: bool | None = None, pct: float = 99.99, bins: int = 2048,
                    merge: str = "fractional") -> tuple[float, float]:
    r"""(r_min, r_max) chosen by ``method`` in METHODS from calibration data; see :func:`calibrate`.

    >>> calibrate_range(torch.randn(10_000), "percentile", pct=99.0, symmetric=True)[1] > 2
    True
    """
    method, bits, bins, merge = _check_method(method), check_bits(bits), check_bins(bins), check_merge(merge)
    pct = check_pct(pct)
    signed = symmetric if signed is None else bool(signed)
    if method == "minmax":
        lo, hi = minmax_range(source)
        if symmetric:
            t = max(-lo, hi)
            return (-t if signed else min(lo, 0.0)), t
        return lo, hi
    if isinstance(source, _RangeObserver) and not isinstance(source, HistogramObserver):
        raise TypeError(
            f"method={method!r} needs a histogram; pass raw x, (hist, bin_edges) or a HistogramObserver "
            f"(a {type(source).__name__} only keeps min/max)."
        )
    if method == "percentile":
        return percentile_range(source, pct, symmetric)
    if method == "mse":
        return mse_range(source, bits, symmetric, signed)
    if symmetric:
        if isinstance(source, (HistogramObserver, tuple)):
            ha, ea = abs_histogram(*source_histogram(source, bins), bins=bins)
        else:
            ha, ea = histogram(source, bins, absolute=True)
        t = kl_threshold(flatten_zero_bin(ha, ea), ea, bits, signed, method, merge).threshold
        return (-t if signed else 0.0), t
    h, e = source_histogram(source, bins)
    res = kl_range(flatten_zero_bin(h, e), e, bits=bits, metric=method, merge=merge)
    return res.r_min, res.r_max


def calibrate(source, method: str = "kl", bits: int = 8, symmetric: bool = False, signed: bool | None = None,
              pct: float = 99.99, bins: int = 2048, narrow: bool = False, merge: str = "fractional") -> QParams:
    r"""Calibrate one tensor's quantization: (s, z, q_min, q_max) = calibrate(data, method, bits).

    1. [r_min, r_max] by ``method``:
       "minmax" (all data), "percentile" (pct-th percentile, tails clipped), "mse" (min E[(r - r_hat)^2]),
       "kl" / "symmetric_kl" / "js" (min D(P || Q_q): :func:`kl_threshold` when symmetric, else
       :func:`kl_range`; the bin holding the exact zeros is first flattened, :func:`flatten_zero_bin`;
       ``merge`` = "fractional" (NVIDIA's TensorRT entropy calibrator, default) or "integer" (lab 05's rule)).
    2. (s, z) = :func:`quantlab.granularity.qparams_from_range` (r_min, r_max, bits, symmetric, signed,
       narrow): [q_min, q_max] = qrange(bits, signed) (signed defaults to ``symmetric``; use
       symmetric=True, signed=False for post-ReLU data). All-zero data gives s = EPS.

    ``source``: raw x (tensor on any device — the histogram is built on the CPU — or array), a
    HistogramObserver, a (hist, bin_edges) histogram of x, or (for "minmax" only) any min/max observer.
    Returns QParams(s, z, q_min, q_max), s float32, z int64, on the device of a tensor ``source`` (else the CPU).
    Raises ValueError for an unknown method/merge (listing the valid ones), bits outside [1, 16] (2 for
    signed divergence searches), bins < 1, pct outside (50, 100], empty data, NaN/inf, negative counts;
    TypeError for integer data or a min/max observer with a histogram method.

    >>> s, z, q_min, q_max = calibrate(torch.relu(torch.randn(10_000)), "kl", bits=8)
    >>> int(z), (q_min, q_max)
    (0, (0, 255))
    >>> from quantlab import EPS
    >>> float(calibrate(torch.zeros(100), "kl").s) == EPS
    True
    """
    r_min, r_max = calibrate_range(source, method, bits, symmetric, signed, pct, bins, merge)
    p = qparams_from_range(r_min, r_max, bits, symmetric, signed, narrow)
    return p.to(source.device) if isinstance(source, torch.Tensor) else p     # (s, z) follow the data


def calibrate_model(acts: dict, method: str = "kl", bits: int = 8, **kw) -> dict:
    """{layer name: QParams} for every activation in ``acts`` (from :func:`collect_activations`).

    Post-ReLU data is non-negative, so the default here is symmetric=True, signed=False: unsigned grid,
    z = 0, range [0, T]. ``kw`` goes to :func:`calibrate` (merge, pct, bins, ...). Errors name the layer.

    >>> from quantlab.models import SmallCNN
    >>> acts = collect_activations(SmallCNN(), torch.rand(8, 1, 28, 28))
    >>> sorted(calibrate_model(acts, "minmax", bits=8))
    ['relu1', 'relu2', 'relu3']
    """
    if not isinstance(acts, dict) or not acts:
        raise TypeError(f"acts must be a non-empty dict {{layer name: activations}} (from collect_activations); "
                        f"got {type(acts).__name__}.")
    kw = {"symmetric": True, "signed": False, **kw}
    out = {}
    for name, a in acts.items():
        try:
            out[name] = calibrate(a, method, bits, **kw)
        except (ValueError, TypeError) as e:
            raise type(e)(f"layer {name!r}: {e}") from e
    return out


@contextlib.contextmanager
def fake_quantize_activations(model: torch.nn.Module, qparams: dict):
    """Inside the ``with`` block, each named layer's output becomes fake_quantize(out, s, z, q_min, q_max).

    For evaluation: the hooks (:func:`quantlab.models.activation_hooks`) overwrite each output in place
    (no gradient flows through them; QAT uses :class:`quantlab.linear.FakeQuantizeSTE` modules instead).
    QParams are moved to the output's device. Raises ValueError naming the layers the model lacks.

    >>> from quantlab.models import SmallCNN
    >>> model = SmallCNN().eval(); x = torch.rand(4, 1, 28, 28)
    >>> with fake_quantize_activations(model, calibrate_model(collect_activations(model, x), "minmax", 2)):
    ...     n = len(collect_activations(model, x)["relu3"].unique())
    >>> n <= 4     # 2 bits: at most 4 values
    True
    """
    check_model(model)
    if not isinstance(qparams, dict):
        raise TypeError(f"qparams must be a dict {{layer name: QParams}} (from calibrate_model); "
                        f"got {type(qparams).__name__}.")
    modules = dict(model.named_modules())
    missing = sorted(set(qparams) - set(modules))
    if missing:
        raise ValueError(f"qparams names layers the model does not have: {missing}; its layers are "
                         f"{[n for n in modules if n][:8]}.")

    def fq(name, out):
        p = qparams[name]
        with torch.no_grad():
            out.copy_(fake_quantize(out, p.s.to(out.device), p.z.to(out.device), p.q_min, p.q_max))

    with activation_hooks(model, fq, list(qparams)) as m:
        yield m

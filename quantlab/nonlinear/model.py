r"""Linear vs nonlinear at equal bits on one tensor or a whole model (weight-only), and k-means fine-tuning.

``METHODS``: "linear" (symmetric narrow grid, the text's baseline, through
:func:`quantlab.granularity.fake_quantize_tensor`), "log" (power-of-two), "kmeans" (codebook per unit),
"nf" (NormalFloat quantile grid, blocks of 64). At b bits every method stores b-bit codes; what differs is
the side information, which :func:`quantize_weight` counts in bytes (scales, codebooks, block absmax), and
how many table lookups dequantization needs (0 for linear and log, one per weight for kmeans and nf).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import as_float_tensor, check_model
from ..granularity import PerTensor, fake_quantize_tensor
from ..metrics import tensor_size_bytes
from ..models import find_layers, replace_layers
from .kmeans import Codebook, kmeans_codebook
from .log import fake_pow2, pow2_size_bytes
from .nf4 import fake_nf, nf_size_bytes

_PER_TENSOR = PerTensor()  # the default granularity (one immutable value)

__all__ = ["METHODS", "quantize_weight", "quantize_model_weights", "kmeans_books", "finetune_centroids"]

METHODS = ("linear", "log", "kmeans", "nf")


def _n_units(w: torch.Tensor, granularity) -> int:
    return 1 if isinstance(granularity, PerTensor) else w.shape[granularity.axis]


def quantize_weight(w, method: str, bits: int, granularity=_PER_TENSOR, **kw):
    r"""(w_hat, stored bytes, lookups) for one tensor at b bits with one of ``METHODS``.

    Bytes: linear b/8 per value + 8 per (s, z); log b/8 + 4 per s; kmeans b/8 + 4·2^b per codebook;
    nf b/8 + 4 per block of 64 (granularity ignored: NF's unit is the block). Lookups: values that need a
    table lookup before a multiply (0 for linear/log, numel for kmeans/nf). ``kw`` goes to the method
    (``rounding`` for log; ``init``, ``iters``, ``seed`` for kmeans; ``block_size`` for nf).

    Raises ValueError for an unknown method or bits out of the method's range (log, nf: 2..8).

    >>> w_hat, n_bytes, lookups = quantize_weight(torch.randn(64, 9), "kmeans", 2)
    >>> n_bytes, lookups       # 576 values · 2 bits / 8 + 4 centroids · 4 bytes
    (160.0, 576)
    """
    t = as_float_tensor(w, "w")
    n, U = t.numel(), _n_units(t, granularity)
    if method == "linear":
        w_hat = fake_quantize_tensor(t, bits, granularity, symmetric=True, narrow=True)
        return w_hat, tensor_size_bytes(n, bits, U), 0
    if method == "log":
        return fake_pow2(t, bits, granularity, kw.get("rounding", "linear")), pow2_size_bytes(n, bits, U), 0
    if method == "kmeans":
        cb = kmeans_codebook(t, bits, granularity, **kw)
        return cb.dequantize().to(t.dtype), cb.size_bytes(), n
    if method == "nf":
        bs = kw.get("block_size", 64)
        return fake_nf(t, bits, bs), nf_size_bytes(n, bits, bs), n
    raise ValueError(f"method must be one of {METHODS}; got {method!r}.")


def quantize_model_weights(model: torch.nn.Module, method: str, bits: int, granularity=_PER_TENSOR, **kw):
    r"""A copy of ``model`` whose Conv/Linear weights are replaced by w_hat (weight-only), and a report.

    Uses :func:`quantlab.models.replace_layers` (``model`` is not modified; errors name the layer). The
    report maps layer name -> {"bytes": stored bytes of the weight, "lookups": ..., "n": numel}.

    >>> from quantlab.models import SmallCNN
    >>> m, report = quantize_model_weights(SmallCNN(), "log", 3)
    >>> report["fc2"]          # 640 weights · 3 bits / 8 + one FP32 scale
    {'bytes': 244.0, 'lookups': 0, 'n': 640}
    """
    check_model(model)
    report: dict = {}

    def swap(name, layer):
        with torch.no_grad():
            w_hat, n_bytes, lookups = quantize_weight(layer.weight, method, bits, granularity, **kw)
            layer.weight.copy_(w_hat)
        report[name] = {"bytes": n_bytes, "lookups": lookups, "n": layer.weight.numel()}
        return layer

    return replace_layers(model, swap), report


def kmeans_books(model: torch.nn.Module, bits: int, granularity=_PER_TENSOR, **kw) -> dict:
    r"""One :class:`Codebook` per Conv/Linear weight of ``model`` (layer name -> Codebook), on its device.

    >>> from quantlab.models import SmallCNN
    >>> books = kmeans_books(SmallCNN(), 2)
    >>> list(books), books["fc2"].centroids.shape
    (['conv1', 'conv2', 'fc1', 'fc2'], torch.Size([1, 4]))
    """
    check_model(model)
    return {name: kmeans_codebook(layer.weight.detach(), bits, granularity, **kw)
            for name, layer in find_layers(model)}


def finetune_centroids(model: torch.nn.Module, books: dict, x, y, steps: int = 50, lr: float = 3e-4,
                       batch_size: int = 128, seed: int = 0):
    r"""Fine-tune codebooks with the codes fixed (Deep Compression): c_k <- c_k - lr · Σ_{i: code_i = k} ∂L/∂w_i.

    ``books`` maps layer name -> :class:`Codebook` (e.g. from :func:`kmeans_codebook` of each weight).
    Each step: weights w_i = c[code_i], cross-entropy on a seeded minibatch of (x, y), backward, then the
    gradient of each centroid is the *sum* of its weights' gradients (a scatter-add by code), and plain
    SGD moves the centroids. BatchNorm stays in eval mode; nothing but the centroids changes. Because the
    gradient is a sum over all of a centroid's weights (~25,000 for fc1 at 2 bits), lr is small: 3e-4 recovers
    most of the 2-bit accuracy of the lab's CNN in 50 steps; 1e-3 diverges.
    Returns (fine-tuned model copy, new books, list of losses). ``model`` and ``books`` are not modified.
    x must be on the model's device; y (class labels) may be anywhere and is moved there once.

    >>> from quantlab.models import SmallCNN
    >>> model, x, y = SmallCNN(), torch.rand(32, 1, 28, 28), torch.randint(10, (32,))
    >>> books = kmeans_books(model, 2)
    >>> m_ft, books_ft, losses = finetune_centroids(model, books, x, y, steps=3, batch_size=8)
    >>> torch.equal(books_ft["fc1"].codes, books["fc1"].codes), len(losses)      # codes fixed
    (True, 3)
    """
    from .._checks import check_same_device

    check_same_device(model, x)
    y = torch.as_tensor(y).to(x.device)
    g = torch.Generator().manual_seed(int(seed))
    cents = {n: b.centroids.clone() for n, b in books.items()}

    def load(name, layer):
        if name in books:
            with torch.no_grad():
                layer.weight.copy_(Codebook(books[name].codes, cents[name], books[name].bits,
                                            books[name].granularity).dequantize())
        return layer

    m = replace_layers(model, load)
    m.eval()
    layers = {n: m.get_submodule(n) for n in books}
    losses = []
    for _ in range(int(steps)):
        idx = torch.randint(len(y), (batch_size,), generator=g).to(y.device)
        m.zero_grad()
        loss = F.cross_entropy(m(x[idx]), y[idx])
        loss.backward()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for n, layer in layers.items():
                b = books[n]
                rows_g, _ = _rows(layer.weight.grad, b.granularity)
                rows_c, _ = _rows(b.codes, b.granularity)
                grad_c = torch.zeros_like(cents[n]).scatter_add_(1, rows_c, rows_g)  # Σ over each code
                cents[n] -= lr * grad_c
                layer.weight.copy_(Codebook(b.codes, cents[n], b.bits, b.granularity).dequantize())
    new_books = {n: Codebook(b.codes, cents[n], b.bits, b.granularity) for n, b in books.items()}
    return m, new_books, losses


def _rows(t, granularity):
    from .kmeans import _units

    return _units(t, granularity)

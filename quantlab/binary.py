r"""1-bit quantization (section 9.3.1: "1 bit is the limit of model compression ... 1/32 ... XNOR and BitCount").

* Binarization: x_b = sign(x) with **sign(0) = +1** (BNN, larq), so every value is exactly ±1.
* Training: the straight-through estimator clipped at |x| <= 1 (Hubara/Courbariaux 2016): d x_b / d x = 1_{|x| <= 1}
  (:class:`SignSTE`, forward beside backward).
* Binary weights with a scale (BWN / XNOR-Net, Rastegari et al. 2016): W ≈ α_c sign(W_c) with
  α_c = mean |W_c| per output channel c, the α minimising ||W_c - α sign(W_c)||².
* XNOR networks binarize the activations too; then a ±1 dot product is  a . w = K - 2 popcount(a XOR w)
  on bits packed 64 to a word (:mod:`quantlab.packing`, :mod:`quantlab.binary_kernel`).
* First and last layers stay FP32 (as XNOR-Net does); :func:`binarize_model` replaces the hidden ones.

Binary layers with binary inputs pad with +1 (larq's ``pad_values=1``): a zero pad is not a ±1 value and the
packed kernel could not represent it. Float layers, ops and models follow the device rule (they run where the
data is); the packed kernel is CPU-only: :func:`binary_matmul`, :func:`binary_conv2d` and :func:`pack_model`'s
layers copy their inputs to the CPU and return results on the inputs' device.

Length (~410 lines, just over the project's ~400): the float ±1 layers and their packed twins are kept in one
file on purpose — ``pack_model`` turns each ``BinaryConv2d``/``BinaryLinear`` into its packed counterpart, and
the lab reads them side by side; the kernel itself lives in :mod:`quantlab.binary_kernel`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import binary_kernel as _k
from ._checks import as_float_tensor, check_model, from_tensor
from .models import WEIGHT_LAYERS, find_layers, replace_layers
from .packing import _as_signs, pack_negative, pack_signs

__all__ = [
    "binarize", "SignSTE", "sign_ste", "binary_weight_scale", "binarize_weights",
    "BinaryConv2d", "BinaryLinear", "binarize_model", "xnor_gemm", "binary_matmul", "binary_conv2d",
    "PackedBinaryConv2d", "PackedBinaryLinear", "pack_model", "packed_size_bytes",
]


def binarize(x):
    r"""x_b = sign(x) with sign(0) = +1:  x_b = +1 if x >= 0 else -1 (same dtype and device; NumPy in, NumPy out).

    Raises TypeError for integer input, ValueError for NaN/inf or empty input.

    >>> binarize(torch.tensor([-0.3, 0.0, 2.0]))
    tensor([-1.,  1.,  1.])
    """
    t = as_float_tensor(x, "x")
    return from_tensor(torch.where(t >= 0, 1.0, -1.0).to(t.dtype), x)


class SignSTE(torch.autograd.Function):
    r"""sign with the clipped straight-through estimator, forward beside backward.

    Forward:  x_b = +1 if x >= 0 else -1          (sign(0) = +1)
    Backward: d x_b / d x = 1 where |x| <= 1, else 0   (the gradient of hardtanh: Hubara et al. 2016)

    >>> x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 1.5], requires_grad=True)
    >>> SignSTE.apply(x).sum().backward(); x.grad
    tensor([0., 1., 1., 1., 0.])
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x.abs() <= 1)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        return grad_out * inside


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """:class:`SignSTE` on a checked float tensor (see there). >>> sign_ste(torch.tensor([0.0]))  # tensor([1.])"""
    return SignSTE.apply(as_float_tensor(x, "x"))


def binary_weight_scale(w):
    r"""α_c = mean |W_c| over everything but the output axis 0: shape (C_out, 1, ..., 1), broadcasts against W.

    It minimises ||W_c - α sign(W_c)||² (set the derivative in α to 0: α = <W_c, sign W_c> / n = mean |W_c|).
    Shapes: w (C_out, ...) float (NumPy or torch, any device; gradient flows). Raises as :func:`binarize`.

    >>> binary_weight_scale(torch.tensor([[1.0, -3.0], [0.5, 0.5]])).flatten()
    tensor([2.0000, 0.5000])
    """
    t = as_float_tensor(w, "w")
    if t.ndim < 2:
        raise ValueError(f"w must have an output-channel axis 0 and at least 2 dims; got shape {tuple(t.shape)}.")
    return from_tensor(t.abs().mean(dim=tuple(range(1, t.ndim)), keepdim=True), w)


def binarize_weights(w):
    r"""W_hat = α_c sign(W_c) with α_c = mean |W_c| (:func:`binary_weight_scale`) and sign(0) = +1.

    >>> binarize_weights(torch.tensor([[1.0, -3.0], [0.0, 1.0]]))
    tensor([[ 2.0000, -2.0000],
            [ 0.5000,  0.5000]])
    """
    t = as_float_tensor(w, "w")
    return from_tensor(binary_weight_scale(t) * binarize(t), w)


class _Binary:
    """Shared forward of the binary layers: y = α ⊙ (x_b ⊛ sign(W)) + b, exactly as the packed kernel computes it."""

    binary_input: bool

    def _signs_and_alpha(self):
        w = self.weight
        return SignSTE.apply(w), binary_weight_scale(w).reshape(1, -1)

    def extra_repr(self):
        return super().extra_repr() + f", binary_input={self.binary_input}"


class BinaryConv2d(_Binary, nn.Conv2d):
    r"""Conv2d with binary weights W_b = α sign(W) (BWN) and, if ``binary_input``, binary inputs x_b = sign(x) (XNOR).

    Forward: y = α_c (x_b ⊛ sign(W))_c + b_c — the integer ±1 convolution first, then α (as the packed kernel
    does, so the two agree bit for bit). With binary inputs the padding value is +1, not 0. Gradients: clipped
    STE through both signs, and through α = mean|W_c|. Latent float weights are kept for training.

    >>> BinaryConv2d(1, 2, 3, padding=1, binary_input=True)(torch.randn(1, 1, 5, 5)).shape
    torch.Size([1, 2, 5, 5])
    """

    def __init__(self, *args, binary_input: bool = False, **kw):
        super().__init__(*args, **kw)
        self.binary_input = binary_input

    def forward(self, x):
        w_b, alpha = self._signs_and_alpha()
        pad = self.padding
        if self.binary_input:
            x = SignSTE.apply(x)
            if any(pad):
                x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]), value=1.0)
            pad = 0
        y = F.conv2d(x, w_b, None, self.stride, pad, self.dilation, self.groups) * alpha.reshape(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


class BinaryLinear(_Binary, nn.Linear):
    r"""Linear with W_b = α sign(W) and optional binary inputs: y = α ⊙ (x_b sign(W)^T) + b.

    >>> BinaryLinear(4, 3, binary_input=True)(torch.randn(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, *args, binary_input: bool = False, **kw):
        super().__init__(*args, **kw)
        self.binary_input = binary_input

    def forward(self, x):
        w_b, alpha = self._signs_and_alpha()
        if self.binary_input:
            x = SignSTE.apply(x)
        y = F.linear(x, w_b) * alpha
        return y if self.bias is None else y + self.bias


def _to_binary(layer: nn.Module, binary_input: bool) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("only groups=1, numeric zero padding convolutions can be binarized.")
        new = BinaryConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                           padding=layer.padding, dilation=layer.dilation, bias=layer.bias is not None,
                           binary_input=binary_input)
    else:
        new = BinaryLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           binary_input=binary_input)
    new.load_state_dict(layer.state_dict())
    return new.to(layer.weight.device)


def binarize_model(model: nn.Module, activations: bool = False) -> nn.Module:
    r"""A copy of ``model`` whose hidden conv/linear layers are binary; the first and last stay FP32 (XNOR-Net).

    activations=False: BWN (binary weights α sign(W), float activations). activations=True: XNOR (binary weights
    and inputs). For XNOR, each ReLU whose next weight layer is binary becomes ``nn.Identity`` (sign of a ReLU
    output would always be +1); the sign's STE already clips the gradient at |x| <= 1. Latent weights start
    from ``model``'s. The original is untouched; the copy stays on the model's device.

    Raises TypeError if model is not an nn.Module; ValueError (naming the layer) if it has < 3 weight layers.

    >>> from quantlab.models import SmallCNN
    >>> [type(m).__name__ for _, m in find_layers(binarize_model(SmallCNN(), True))]
    ['Conv2d', 'BinaryConv2d', 'BinaryLinear', 'Linear']
    """
    check_model(model)
    names = [n for n, _ in find_layers(model)]
    if len(names) < 3:
        raise ValueError(f"model has {len(names)} conv/linear layer(s) {names}; binarizing keeps the first and "
                         "last in FP32, so it needs at least 3.")
    hidden = set(names[1:-1])
    new = replace_layers(model, lambda n, m: _to_binary(m, activations) if n in hidden else m)
    if activations:
        order = find_layers(new, (nn.ReLU, *WEIGHT_LAYERS))        # forward order for a Sequential
        feeds_binary = set()
        for k, (n, m) in enumerate(order):                         # pool/flatten may sit in between
            nxt = next((x for _, x in order[k + 1:] if not isinstance(x, nn.ReLU)), None)
            if isinstance(m, nn.ReLU) and isinstance(nxt, _Binary):
                feeds_binary.add(n)
        new = replace_layers(new, lambda n, m: nn.Identity() if n in feeds_binary else m, types=nn.ReLU)
    return new


# ---------------------------------------------------------------------------------------------------
# The packed path: ±1 matrices -> 64-bit words -> K - 2 popcount(a XOR w). CPU-only.
# ---------------------------------------------------------------------------------------------------

_warned_slow = False


def xnor_gemm(a_packed, w_packed, K: int, backend: str = "auto") -> np.ndarray:
    r"""out[i, j] = K - 2 popcount(a_i XOR w_j) on packed words (int32, (M, N)); the backend dispatcher.

    backend: "numba" (compiled kernel), "numpy" (the readable slow path), "auto" (numba when installed, else
    NumPy with a RuntimeWarning saying it is the slow path). Raises ValueError for an unknown backend and as
    :func:`quantlab.binary_kernel.check_packed`; ImportError for "numba" without numba.

    >>> xnor_gemm(pack_signs(np.array([[1, -1]])), pack_signs(np.array([[1, -1]])), 2, backend="numpy")
    array([[2]], dtype=int32)
    """
    global _warned_slow
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'numpy'; got {backend!r}.")
    if backend == "auto":
        backend = "numba" if _k.HAVE_NUMBA else "numpy"
        if backend == "numpy" and not _warned_slow:
            warnings.warn("numba is not installed: the XNOR-popcount GEMM runs on the plain-NumPy slow path "
                          "(about as fast as float BLAS, not 10x faster). `pip install numba` for the compiled "
                          "kernel.", RuntimeWarning, stacklevel=2)
            _warned_slow = True
    fn = _k.xnor_gemm_numba if backend == "numba" else _k.xnor_gemm_numpy
    return fn(a_packed, w_packed, K)


def _check_same_k(a: np.ndarray, w: np.ndarray, a_name: str, w_name: str) -> int:
    if a.shape[-1] != w.shape[-1]:
        raise ValueError(f"{a_name} and {w_name} must have the same reduction length K (last axis); got "
                         f"shapes {a.shape} and {w.shape}. For a @ w.T pass w as (N, K).")
    return a.shape[-1]


def _like(out: np.ndarray, x):
    """Result back as x's kind: a torch tensor on x's device, or NumPy."""
    return torch.from_numpy(out).to(x.device) if isinstance(x, torch.Tensor) else out


def binary_matmul(a, w, backend: str = "auto"):
    r"""a @ w.T for ±1 matrices through the packed kernel: (a w^T)_ij = K - 2 popcount(a_i XOR w_j), exact.

    Shapes: a (M, K), w (N, K) of exact ±1 values (float or int; torch on any device or NumPy) -> int32 (M, N),
    a torch tensor on a's device or a NumPy array. CPU-only: inputs are copied to the CPU, packed, multiplied.
    Raises ValueError for values other than ±1, non-2-D inputs, different K, K > 2^31 - 1.

    >>> binary_matmul(np.array([[1, -1, 1]]), np.array([[1, 1, -1], [1, -1, 1]]))
    array([[-1,  3]], dtype=int32)
    """
    a_s, w_s = _as_signs(a, "a"), _as_signs(w, "w")
    if a_s.ndim != 2 or w_s.ndim != 2:
        raise ValueError(f"a and w must be 2-D (M, K) and (N, K); got shapes {a_s.shape} and {w_s.shape}.")
    K = _check_same_k(a_s, w_s, "a", "w")
    return _like(xnor_gemm(pack_signs(a_s), pack_signs(w_s), K, backend), a)


def _im2col_packed(negative: np.ndarray, kernel_size, stride, padding, dilation):
    """Sign bits (x < 0) of (N, C, H, W) -> padded with +1 (bit 0), im2col rows (N * L, C kh kw), packed along K.

    Works on one byte per value (NumPy sliding windows), never on float copies. Returns (packed, h_out, w_out).
    """
    ph, pw = padding
    neg = np.pad(negative, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else negative   # pad: +1
    kh, kw = (int(k) for k in kernel_size)
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    win = np.lib.stride_tricks.sliding_window_view(neg, (span_h, span_w), axis=(2, 3))
    win = win[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]      # (N, C, Ho, Wo, kh, kw)
    h, w = win.shape[2], win.shape[3]
    rows = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, neg.shape[1] * kh * kw)    # (N * L, K), F.unfold's order
    return pack_negative(rows), h, w


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def binary_conv2d(x, w, stride=1, padding=0, dilation=1, backend: str = "auto"):
    r"""2-D convolution of ±1 tensors by im2col + the packed kernel; equals F.conv2d(pad(x, +1), w) exactly.

    The input is padded with **+1** (a binary network has no 0); with padding=0 this is exactly F.conv2d(x, w).
    Shapes: x (N, C, H, W), w (O, C, kh, kw), exact ±1 values, torch (any device) or NumPy -> int32
    (N, O, H_out, W_out) on x's device (CPU-only computation: copied to the CPU and back).
    Raises ValueError for non-±1 values, non-4-D shapes or channel mismatch.

    >>> x, w = torch.ones(1, 2, 3, 3), -torch.ones(4, 2, 3, 3)
    >>> binary_conv2d(x, w, padding=1)[0, 0]           # every window sums 18 products of -1
    tensor([[-18, -18, -18],
            [-18, -18, -18],
            [-18, -18, -18]], dtype=torch.int32)
    """
    xs, ws = _as_signs(x, "x"), _as_signs(w, "w")
    if xs.ndim != 4 or ws.ndim != 4:
        raise ValueError(f"x and w must be 4-D (N, C, H, W) and (O, C, kh, kw); got {xs.shape} and {ws.shape}.")
    if xs.shape[1] != ws.shape[1]:
        raise ValueError(f"x has {xs.shape[1]} channels but w expects {ws.shape[1]} (w is (O, C, kh, kw)).")
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    span = [d * (k - 1) + 1 for d, k in zip(dilation, ws.shape[2:])]
    if any(xs.shape[2 + i] + 2 * padding[i] < span[i] for i in (0, 1)):
        raise ValueError(f"the kernel {ws.shape[2:]} (dilation {dilation}) is larger than the padded input "
                         f"{xs.shape[2:]} + 2 x {padding}.")
    packed, h, wd = _im2col_packed(xs < 0, ws.shape[2:], stride, padding, dilation)
    K = int(np.prod(ws.shape[1:]))
    out = xnor_gemm(packed, pack_signs(ws.reshape(ws.shape[0], K)), K, backend)    # (N * L, O)
    out = out.reshape(xs.shape[0], h, wd, ws.shape[0]).transpose(0, 3, 1, 2)
    return _like(np.ascontiguousarray(out), x)


class PackedBinaryConv2d(nn.Module):
    r"""Inference-only XNOR conv: weights stored as packed sign words + α; y = α (sign(x) ⊛ sign(W)) + b.

    Built by :func:`pack_model` from a :class:`BinaryConv2d` with binary inputs; equal, bit for bit, to that
    layer's float ±1 simulation. CPU-only kernel: x is moved to the CPU and the result back to x's device.
    """

    def __init__(self, layer: BinaryConv2d, backend: str = "auto"):
        super().__init__()
        w = layer.weight.detach().cpu()
        self.out_channels, self.K = w.shape[0], int(np.prod(w.shape[1:]))
        self.kernel_size, self.stride = tuple(w.shape[2:]), _pair(layer.stride)
        self.padding, self.dilation = _pair(layer.padding), _pair(layer.dilation)
        self.w_packed = pack_signs(binarize(w).reshape(self.out_channels, self.K))
        self.register_buffer("alpha", binary_weight_scale(w).reshape(1, -1, 1, 1).clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().cpu().reshape(1, -1, 1, 1))
        self.backend = backend

    @torch.no_grad()
    def forward(self, x):
        negative = (x.detach().cpu() < 0).numpy()                   # sign bits: 1 for -1 (sign(0) = +1)
        packed, h, w = _im2col_packed(negative, self.kernel_size, self.stride, self.padding, self.dilation)
        acc = xnor_gemm(packed, self.w_packed, self.K, self.backend)
        y = torch.from_numpy(acc).float().reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2) * self.alpha
        return (y if self.bias is None else y + self.bias).to(x.device)


class PackedBinaryLinear(nn.Module):
    r"""Inference-only XNOR linear layer on packed words: y = α (sign(x) sign(W)^T) + b (CPU kernel, see above)."""

    def __init__(self, layer: BinaryLinear, backend: str = "auto"):
        super().__init__()
        w = layer.weight.detach().cpu()
        self.K = w.shape[1]
        self.w_packed = pack_signs(binarize(w))
        self.register_buffer("alpha", binary_weight_scale(w).reshape(1, -1).clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().cpu().clone())
        self.backend = backend

    @torch.no_grad()
    def forward(self, x):
        acc = xnor_gemm(pack_negative((x.detach().cpu() < 0).numpy()), self.w_packed, self.K, self.backend)
        y = torch.from_numpy(acc).float() * self.alpha
        return (y if self.bias is None else y + self.bias).to(x.device)


def pack_model(model: nn.Module, backend: str = "auto") -> nn.Module:
    r"""A copy of an XNOR model whose binary-input layers run on packed words through the XNOR-popcount kernel.

    Every :class:`BinaryConv2d` / :class:`BinaryLinear` with ``binary_input=True`` becomes a Packed* layer; other
    layers are kept. The copy's predictions equal ``model.eval()``'s float ±1 simulation (same integers, same α
    multiply). Its packed layers compute on the CPU (inputs moved there and back). Raises TypeError for a
    non-module; ValueError if the model has no binary-input layer (binarize_model(..., activations=True)).

    >>> from quantlab.models import SmallCNN
    >>> type(pack_model(binarize_model(SmallCNN(), True)).fc1).__name__
    'PackedBinaryLinear'
    """
    check_model(model)
    if not any(getattr(m, "binary_input", False) for _, m in find_layers(model, (BinaryConv2d, BinaryLinear))):
        raise ValueError("model has no binary-input layer to pack; build it with binarize_model(m, activations=True).")

    def swap(name, m):
        if not m.binary_input:
            return m
        return PackedBinaryConv2d(m, backend) if isinstance(m, BinaryConv2d) else PackedBinaryLinear(m, backend)

    return replace_layers(model, swap, types=(BinaryConv2d, BinaryLinear)).eval()


def packed_size_bytes(model: nn.Module) -> int:
    r"""Bytes to store ``model`` for inference, measured from packed storage.

    Binary layers (BWN or XNOR, packed or not): the sign words ``pack_signs(sign(W)).nbytes`` (ceil(K/64) * 8 bytes
    per output channel) + α (4 bytes per channel) + bias; every other parameter and float buffer: 4 bytes a value.

    >>> from quantlab.models import SmallCNN
    >>> packed_size_bytes(nn.Linear(64, 2))          # 128 weights + 2 biases, float32
    520
    """
    check_model(model)
    total, seen = 0, set()
    for _, m in model.named_modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            w = m.weight.detach().cpu()
            total += pack_signs(binarize(w).reshape(w.shape[0], -1)).nbytes + 4 * w.shape[0]
            seen.add(id(m.weight))
        elif isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear)):
            total += m.w_packed.nbytes
    for p in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
        if id(p) not in seen:
            total += p.numel() * p.element_size()
    return int(total)

r"""SmoothQuant (Xiao et al. 2023, beyond the text): move activation outliers into the weights, then W8A8.

A few input channels j of a transformer Linear carry activations 10–1000× larger than the rest, so one
per-tensor activation scale wastes the int8 grid on them. SmoothQuant divides channel j of X by

    s_j = max|X_j|^α / max|W_j|^(1−α)        (α ∈ [0, 1]; max|W_j| over the outputs of the Linear(s) fed by X)

and multiplies input column j of W by s_j:  Y = X Wᵀ = (X diag(s)⁻¹) (W diag(s))ᵀ, exact in FP32. (The paper
writes W as (in, out) and diag(s)·W; torch stores W as (out, in), so here it is W·diag(s), column j.)
Where a LayerNorm/RMSNorm feeds the Linear(s), 1/s is folded into its weight (and bias) — free at inference;
otherwise (SmolLM2's ``o_proj`` and ``down_proj``) an :class:`InputScale` module multiplies X by 1/s before the
Linear. :data:`LLAMA_GROUPS` says which layers get which.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import as_float_tensor, check_bits, check_model
from .granularity import PerChannel, PerTensor, fake_quantize_tensor
from .models import find_layers, replace_layers

__all__ = ["LLAMA_GROUPS", "InputScale", "smooth_scales", "smoothquant", "w8a8", "w8a8_linear_output"]

#: (norm, Linears it feeds) inside each decoder layer of a Llama model; None: no norm, smoothing per Linear.
LLAMA_GROUPS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    (None, ("self_attn.o_proj",)),
    (None, ("mlp.down_proj",)),
)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (0: no smoothing, 1: all on the weights); got {alpha!r}.")
    return float(alpha)


def smooth_scales(x_absmax, w_absmax, alpha: float = 0.5) -> torch.Tensor:
    r"""s_j = max|X_j|^α / max|W_j|^(1−α) per input channel j.

    x_absmax, w_absmax: (C_in,) per-channel absmax of the activations and of the weight columns. Raises
    ValueError for α outside [0, 1], NaN/inf, a shape mismatch, or a zero-range channel (max = 0 in x_absmax or
    w_absmax, which would divide by zero; the message lists the channels).

    >>> smooth_scales(torch.tensor([100.0, 1.0]), torch.tensor([1.0, 1.0]), 0.5)
    tensor([10.,  1.])
    """
    alpha = _check_alpha(alpha)
    x = as_float_tensor(x_absmax, "x_absmax")
    w = as_float_tensor(w_absmax, "w_absmax")
    if x.ndim != 1 or x.shape != w.shape:
        raise ValueError(f"x_absmax and w_absmax must both be (C_in,); got {tuple(x.shape)} and {tuple(w.shape)}.")
    for name, t in (("x_absmax", x), ("w_absmax", w)):
        zero = torch.nonzero(t <= 0).flatten().tolist()
        if zero:
            raise ValueError(f"{name} has zero-range channel(s) {zero[:8]}: s_j would divide by zero. Drop or "
                             "skip those channels (their max |value| must be > 0).")
    return x.pow(alpha) / w.pow(1.0 - alpha)


class InputScale(nn.Module):
    """X ← X · diag(s)⁻¹ for a Linear without a preceding norm to fold 1/s into."""

    def __init__(self, s: torch.Tensor):
        super().__init__()
        self.register_buffer("inv_s", 1.0 / s)

    def forward(self, x):
        return x * self.inv_s


def smoothquant(model, x_absmax: dict, alpha: float = 0.5, groups=LLAMA_GROUPS) -> nn.Module:
    """A copy of a Llama-style ``model`` with SmoothQuant applied to every decoder layer (original untouched).

    x_absmax: {Linear name: (C_in,) input absmax} from :func:`quantlab.transformer_quant.input_absmax`.
    groups: (norm suffix or None, Linear suffixes) per decoder layer (:data:`LLAMA_GROUPS`): a norm gets
    weight /= s (and bias), its Linears W·diag(s); a Linear without norm becomes Sequential(InputScale(s), Linear).
    Raises ValueError naming a Linear missing from x_absmax, or (via the walker) naming the layer.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
    ...     num_attention_heads=2, num_key_value_heads=2)).eval()
    >>> from quantlab.transformer_quant import input_absmax
    >>> ids = torch.arange(12)[None] % 32
    >>> sm = smoothquant(m, input_absmax(m, lambda mm: mm(ids)), 0.5)
    >>> torch.allclose(sm(ids).logits, m(ids).logits, atol=1e-5)
    True
    """
    check_model(model)
    alpha = _check_alpha(alpha)
    linears = dict(find_layers(model, nn.Linear))
    plan = {}  # Linear name -> (s, norm name or None)
    for prefix in [n[: -len("input_layernorm")] for n, _ in model.named_modules() if n.endswith("input_layernorm")]:
        for norm, names in groups:
            full = [prefix + n for n in names]
            missing = [n for n in full if n not in x_absmax]
            if missing:
                raise ValueError(f"x_absmax has no statistics for layer(s) {missing}; collect them with input_absmax.")
            w_absmax = torch.stack([linears[n].weight.detach().abs().amax(0) for n in full]).amax(0)
            s = smooth_scales(x_absmax[full[0]], w_absmax, alpha)
            for n in full:
                plan[n] = (s, None if norm is None else prefix + norm)
    if not plan:
        raise ValueError("model has no '...input_layernorm' modules: smoothquant's groups are for Llama-style models.")

    def swap(name, layer):
        if name not in plan:
            return layer
        s, norm = plan[name]
        with torch.no_grad():
            layer.weight.mul_(s.to(layer.weight))
        return layer if norm is not None else nn.Sequential(InputScale(s.to(layer.weight)), layer)

    new = replace_layers(model, swap, types=nn.Linear)
    with torch.no_grad():
        for s, norm in {v[1]: v for v in plan.values() if v[1] is not None}.values():
            mod = new.get_submodule(norm)
            mod.weight.div_(s.to(mod.weight))
            if getattr(mod, "bias", None) is not None:
                mod.bias.div_(s.to(mod.bias))
    return new


class _ActQuant(nn.Module):
    """Linear whose input is fake-quantized per tensor (symmetric, narrow grid) at every call."""

    def __init__(self, linear: nn.Linear, bits: int):
        super().__init__()
        self.linear, self.bits = linear, bits

    def forward(self, x):
        return self.linear(fake_quantize_tensor(x, self.bits, PerTensor(), symmetric=True, narrow=True))


def w8a8(model, bits: int = 8, skip=("lm_head",)) -> nn.Module:
    """A copy of ``model`` simulating W8A8: every Linear (except ``skip``) gets per-channel symmetric int8
    weights and a dynamic per-tensor symmetric int8 quantizer on its input (absmax of the current input).

    >>> m = w8a8(nn.Sequential(nn.Linear(4, 2)))
    >>> type(m[0]).__name__
    '_ActQuant'
    """
    bits = check_bits(bits, low=2)

    def swap(name, layer):
        if name.split(".")[-1] in skip:
            return layer
        with torch.no_grad():
            layer.weight.copy_(fake_quantize_tensor(layer.weight, bits, PerChannel(0), symmetric=True, narrow=True))
        return _ActQuant(layer, bits)

    return replace_layers(model, swap, types=nn.Linear)


def w8a8_linear_output(x, w, alpha=None, bits: int = 8) -> torch.Tensor:
    r"""Ŷ = Q_tensor(X·diag(s)⁻¹) · Q_channel(W·diag(s))ᵀ for one Linear (no bias); alpha=None: no smoothing.

    x: (T, C_in) inputs, w: (C_out, C_in) weight (float); returns (T, C_out) float32. Compare with Y = X Wᵀ.

    >>> x = torch.tensor([[50.0, 0.1], [-40.0, 0.2]]); w = torch.tensor([[0.1, 2.0]])
    >>> w8a8_linear_output(x, w, 0.5).shape
    torch.Size([2, 1])
    """
    x, w = as_float_tensor(x, "x").float(), as_float_tensor(w, "w").float()
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x must be (T, C_in) and w (C_out, C_in); got {tuple(x.shape)} and {tuple(w.shape)}.")
    if alpha is not None:
        s = smooth_scales(x.abs().amax(0), w.abs().amax(0), alpha)
        x, w = x / s, w * s
    xq = fake_quantize_tensor(x, bits, PerTensor(), symmetric=True, narrow=True)
    wq = fake_quantize_tensor(w, bits, PerChannel(0), symmetric=True, narrow=True)
    return xq @ wq.T



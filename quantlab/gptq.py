r"""GPTQ (Frantar et al. 2023, beyond the text) for one Linear: rounding that sees the layer's inputs.

Round-to-nearest (RTN) rounds each weight on its own. GPTQ rounds the input columns of W (C_out, C_in) one by
one and, after rounding column j, spreads its error over the columns not yet rounded so that the layer output
W Xᵀ changes as little as possible on calibration inputs X (T, C_in). With H = 2 XᵀX / T (+ dampening λI,
λ = damp · mean(diag H)) and H⁻¹ the inverse over the not-yet-rounded columns F:

    q_j = quant(w_j),   δ = (w_j − q_j) / [H⁻¹]_jj,   w_F ← w_F − δ · [H⁻¹]_{j,F},   then drop j from H⁻¹.

The "drop j" step is done once for all columns with the Cholesky factor of H⁻¹ (its rows are the successive
eliminated rows, scaled), and updates are applied lazily in blocks — the same numbers as the column loop.
Per-group: the (symmetric, narrow-grid) scale of each group of g consecutive columns is taken from the *updated*
weights when the loop reaches the group's first column; a last partial group (g ∤ C_in) gets its own scale.
"""

from __future__ import annotations

import torch

from ._checks import as_float_tensor, check_bits
from .granularity import PerChannel, PerGroup, choose_qparams
from .linear import fake_quantize
from .transformer_quant import fake_quantize_weight

__all__ = ["hessian", "gptq_quantize", "rtn_quantize", "layer_error"]


def _check_pair(w, x):
    w, x = as_float_tensor(w, "w"), as_float_tensor(x, "x")
    if w.ndim != 2 or x.ndim != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"w must be (C_out, C_in) and x (T, C_in); got {tuple(w.shape)} and {tuple(x.shape)}.")
    return w, x


def hessian(x) -> torch.Tensor:
    r"""H = 2 XᵀX / T of the layer objective ‖W Xᵀ − Ŵ Xᵀ‖² / T, in float64.  x: (T, C_in) → (C_in, C_in).

    >>> hessian(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    tensor([[2., 2.],
            [2., 4.]], dtype=torch.float64)
    """
    x = as_float_tensor(x, "x").double()
    if x.ndim != 2:
        raise ValueError(f"x must be (T, C_in); got shape {tuple(x.shape)}.")
    return 2.0 * x.T @ x / x.shape[0]


def rtn_quantize(w, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """Round-to-nearest per-group symmetric baseline (= :func:`fake_quantize_weight` with PerGroup).

    >>> rtn_quantize(torch.tensor([[1.0, -0.3]]), 4, 2)
    tensor([[ 1.0000, -0.2857]])
    """
    return fake_quantize_weight(w, bits, PerGroup(group_size))


def gptq_quantize(w, x, bits: int = 4, group_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    r"""GPTQ-quantized Ŵ (dequantized, same shape/dtype/device as w) from calibration inputs x.

    w: (C_out, C_in) weight; x: (T, C_in) inputs of the layer; group_size in 1..C_in; damp > 0 (fraction of
    mean(diag H) added to the diagonal). Columns with no signal (diag H = 0) are set to 0. Raises ValueError
    for bad shapes, NaN, group_size out of range or damp ≤ 0.

    >>> g = torch.Generator().manual_seed(0)
    >>> w, x = torch.randn(8, 16, generator=g), torch.randn(64, 16, generator=g)
    >>> layer_error(w, gptq_quantize(w, x, 3, 8), x) < layer_error(w, rtn_quantize(w, 3, 8), x)
    True
    """
    w, x = _check_pair(w, x)
    bits = check_bits(bits, low=2)
    n_in = w.shape[1]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or not 1 <= group_size <= n_in:
        raise ValueError(f"group_size must be an int in 1..{n_in} (the row length); got {group_size!r}.")
    if not isinstance(damp, (int, float)) or not damp > 0:
        raise ValueError(f"damp must be > 0 (e.g. 0.01) so that H + λI is invertible; got {damp!r}.")
    W = w.detach().double().clone()
    H = hessian(x.to(w.device))
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(n_in, dtype=H.dtype, device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    block = group_size * max(1, 128 // group_size)  # blocks start on group boundaries
    for b0 in range(0, n_in, block):
        b1 = min(b0 + block, n_in)
        W1, E1, U1 = W[:, b0:b1].clone(), torch.zeros_like(W[:, b0:b1]), U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            if i % group_size == 0:
                # one (s, z = 0) per row of this group, from the updated weights (each row of the chunk = a group)
                s, z, q_min, q_max = choose_qparams(W1[:, i:i + group_size], bits, PerChannel(0),
                                                   symmetric=True, narrow=True)
            q = fake_quantize(W1[:, i:i + 1], s, z, q_min, q_max)[:, 0]
            Q[:, b0 + i] = q
            err = (W1[:, i] - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, b1:] -= E1 @ U[b0:b1, b1:]
    return Q.to(w.dtype)


def layer_error(w, w_hat, x) -> float:
    r"""The layer objective ‖W Xᵀ − Ŵ Xᵀ‖²_F (sum over tokens and outputs), in float64.

    >>> layer_error(torch.eye(2), torch.zeros(2, 2), torch.ones(3, 2))
    6.0
    """
    w, x = _check_pair(w, x)
    w_hat = as_float_tensor(w_hat, "w_hat")
    if w_hat.shape != w.shape:
        raise ValueError(f"w_hat must have w's shape {tuple(w.shape)}; got {tuple(w_hat.shape)}.")
    return float(((x.double() @ (w.double() - w_hat.double()).T) ** 2).sum())

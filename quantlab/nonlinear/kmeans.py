r"""k-means (codebook) quantization, as in Deep Compression (Han et al., 2016).

Each quantization unit (the whole tensor, or one output channel) gets its own codebook of k = 2^b
centroids c_0 < ... < c_(k-1); each value stores only its b-bit code, and dequantization is a table
lookup r_hat_i = c[code_i]. The centroids come from Lloyd's algorithm, which alternates

    assign:  code_i = argmin_j |r_i - c_j|                         (ties to the lower index)
    update:  c_j = mean{ r_i : code_i = j }                        (over the points of cluster j only)

Empty clusters: a centroid that received no point keeps its previous value (documented rule, also the
exercise's); it simply leaves one code unused. A unit with fewer distinct values than k is therefore
represented exactly, with some centroids duplicated (never NaN).

Stored size counts both parts: n·b/8 bytes of codes + 4·k bytes of FP32 centroids per unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import as_float_tensor, check_bits, from_tensor
from ..granularity import Granularity, PerChannel, PerTensor, _check_axis

_PER_TENSOR = PerTensor()  # the default granularity (one immutable value)

__all__ = ["Codebook", "nearest_index", "kmeans_init", "lloyd_step", "kmeans_codebook", "codebook_dequantize",
           "codebook_size_bytes", "INITS"]

INITS = ("linear", "k-means++")


@dataclass(frozen=True, eq=False)
class Codebook:
    """Codes (int64, r's shape) and centroids (float32, (U, k), each row ascending) for U units.

    ``granularity`` says what a unit is (PerTensor: U = 1; PerChannel(axis): U = r.shape[axis]).
    """

    codes: torch.Tensor
    centroids: torch.Tensor
    bits: int
    granularity: object = PerTensor()

    @property
    def k(self) -> int:
        """Centroids per unit, 2^b."""
        return self.centroids.shape[1]

    def dequantize(self) -> torch.Tensor:
        """r_hat = c[code] by table lookup (see :func:`codebook_dequantize`)."""
        return codebook_dequantize(self.codes, self.centroids, self.granularity)

    def size_bytes(self) -> float:
        """Codes + codebook, see :func:`codebook_size_bytes`."""
        return codebook_size_bytes(self.codes.numel(), self.bits, self.centroids.shape[0])


def _units(t: torch.Tensor, granularity) -> tuple[torch.Tensor, callable]:
    """View t as (U, N) rows (one per unit) and return a function that puts (U, N) back in t's shape."""
    if isinstance(granularity, PerTensor):
        return t.reshape(1, -1), lambda x: x.reshape(t.shape)
    if isinstance(granularity, PerChannel):
        if t.ndim == 0:
            raise ValueError("PerChannel needs a tensor with at least one dimension; use PerTensor().")
        axis = _check_axis(granularity.axis, t.ndim)
        moved = t.movedim(axis, 0)
        return moved.reshape(moved.shape[0], -1), lambda x: x.reshape(moved.shape).movedim(0, axis)
    raise TypeError(f"granularity must be PerTensor() or PerChannel(axis) for a codebook; got {granularity!r}.")


def nearest_index(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    r"""code_i = argmin_j |x_i - levels_j| for ascending levels, ties to the lower index.

    Shapes: x (U, N), levels (U, k) ascending per row (duplicates allowed) -> int64 (U, N); also x (N,)
    with levels (k,). Uses the midpoints (levels_j + levels_(j+1))/2 and a binary search: O(N log k), no
    (N, k) distance matrix; compared in float64, so a value exactly on a midpoint goes to the lower level.

    >>> nearest_index(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.0, 1.0]))
    tensor([0, 0, 1])
    """
    lv = levels.double()
    mids = (lv[..., 1:] + lv[..., :-1]) / 2  # exact in float64 for float32 levels
    return torch.searchsorted(mids.contiguous(), x.double().contiguous(), right=False)


def kmeans_init(rows: torch.Tensor, k: int, init: str = "linear", seed: int = 0) -> torch.Tensor:
    r"""Initial centroids (U, k), ascending, for rows (U, N).

    "linear": c_j = min + j (max - min)/(k - 1) (Deep Compression's best init: keeps the rare large weights).
    "k-means++": the first centroid a uniformly drawn point, then each next one drawn with probability
    ∝ D(r)^2 (squared distance to the nearest chosen centroid); seeded by ``seed`` through a CPU
    torch.Generator (the sampling runs on the CPU, results move back to rows' device). When every point
    already has D = 0 (fewer distinct values than k) the last centroid is repeated.

    >>> kmeans_init(torch.tensor([[0.0, 1.0, 3.0]]), 2).tolist()
    [[0.0, 3.0]]
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}; got {init!r}.")
    lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    if init == "linear":
        return lo + (hi - lo) * torch.linspace(0, 1, k, device=rows.device, dtype=rows.dtype)
    g = torch.Generator().manual_seed(int(seed))
    cpu = rows.detach().cpu().double()
    out = torch.empty(cpu.shape[0], k, dtype=torch.float64)
    for u, row in enumerate(cpu):
        c = [row[torch.randint(row.numel(), (1,), generator=g)].item()]
        d2 = (row - c[0]) ** 2
        for _ in range(1, k):
            total = float(d2.sum())
            nxt = c[-1] if total == 0 else row[torch.multinomial(d2 / total, 1, generator=g)].item()
            c.append(nxt)
            d2 = torch.minimum(d2, (row - nxt) ** 2)
        out[u] = torch.tensor(sorted(c), dtype=torch.float64)
    return out.to(rows.dtype).to(rows.device)


def lloyd_step(rows: torch.Tensor, centroids: torch.Tensor):
    r"""One Lloyd iteration: assign each value to its nearest centroid, then move each centroid to the mean
    of *its* values; an empty cluster keeps its centroid. Returns (new centroids (U, k) ascending, codes (U, N)).

    The codes are the assignment to the *old* centroids (re-sorting keeps the order, since the update
    preserves it for 1-D data: cluster j's points all lie between those of j - 1 and j + 1).

    >>> lloyd_step(torch.tensor([[0.0, 0.2, 0.9, 1.0]]), torch.tensor([[0.0, 1.0]]))[0].tolist()
    [[0.10000000149011612, 0.949999988079071]]
    """
    codes = nearest_index(rows, centroids)
    k = centroids.shape[1]
    sums = torch.zeros(rows.shape[0], k, dtype=torch.float64, device=rows.device)
    counts = torch.zeros_like(sums)
    sums.scatter_add_(1, codes, rows.double())
    counts.scatter_add_(1, codes, torch.ones_like(sums[:, :1]).expand_as(rows))
    new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids.double()).to(centroids.dtype)
    return torch.sort(new, dim=1).values, codes


def kmeans_codebook(r, bits: int = 4, granularity: Granularity = _PER_TENSOR, init: str = "linear",
                    iters: int = 20, seed: int = 0) -> Codebook:
    r"""k = 2^b centroids per unit by Lloyd's algorithm (``iters`` steps, or until the codes stop changing).

    Final codes are the nearest centroids to the final codebook. Works on r's device (k-means++ seeding
    samples on the CPU, see :func:`kmeans_init`). Fewer distinct values than k: exact, duplicated centroids.

    Shapes: r any float shape; codes int64 of r's shape; centroids float32 (U, k).
    Raises ValueError for bits outside 1..8, NaN/inf or empty r, iters < 0, an unknown init;
    TypeError for a granularity other than PerTensor/PerChannel.

    >>> cb = kmeans_codebook(torch.tensor([0.0, 0.1, 0.9, 1.0, 1.1]), bits=1)
    >>> [round(c, 3) for c in cb.centroids[0].tolist()], cb.codes.tolist()
    ([0.05, 1.0], [0, 0, 1, 1, 1])
    """
    t = as_float_tensor(r, "r").to(torch.float32)
    bits = check_bits(bits, "bits", low=1, high=8)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be a non-negative int (Lloyd iterations); got {iters!r}.")
    rows, back = _units(t, granularity)
    c = kmeans_init(rows, 2 ** bits, init, seed)
    prev = None
    for _ in range(iters):
        c, codes = lloyd_step(rows, c)
        if prev is not None and torch.equal(codes, prev):
            break
        prev = codes
    codes = nearest_index(rows, c)
    return Codebook(back(codes), c, bits, granularity)


def codebook_dequantize(codes, centroids, granularity: Granularity = _PER_TENSOR):
    r"""r_hat_i = c_u[code_i] — one table lookup per value (unit u = tensor or channel of value i).

    Shapes: codes integer, any shape; centroids (U, k) (or (k,) for one unit). Float out on codes' device.

    >>> codebook_dequantize(torch.tensor([1, 0, 1]), torch.tensor([-0.5, 2.0])).tolist()
    [2.0, -0.5, 2.0]
    """
    ct = torch.as_tensor(codes).to(torch.int64)
    cent = torch.as_tensor(centroids)
    cent = cent.reshape(1, -1) if cent.ndim == 1 else cent
    if bool((ct < 0).any()) or bool((ct >= cent.shape[1]).any()):
        raise ValueError(f"codes must lie in [0, {cent.shape[1] - 1}] (one per centroid).")
    rows, back = _units(ct, granularity)
    if rows.shape[0] != cent.shape[0]:
        raise ValueError(f"centroids has {cent.shape[0]} rows but the codes have {rows.shape[0]} units.")
    return from_tensor(back(torch.gather(cent.to(ct.device), 1, rows)), codes)


def codebook_size_bytes(n_values: int, bits: int, n_units: int = 1) -> float:
    r"""Stored bytes = n·b/8 (packed codes) + 4·2^b·U (FP32 centroids) — the codebook is counted.

    >>> codebook_size_bytes(1000, 4, 1)        # 500 B of codes + 16 centroids · 4 B
    564.0
    """
    bits = check_bits(bits, low=1, high=8)
    return n_values * bits / 8 + 4 * 2**bits * n_units

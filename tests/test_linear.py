"""Tests for quantlab.linear: q = clip(round(r/s + z), q_min, q_max), its inverse and the fake-quant node.

References: closed forms for the grid, PyTorch's own observers for (s, z), and PyTorch's kernels
(``torch.quantize_per_tensor``, ``torch.fake_quantize_per_tensor_affine``,
``torch.fake_quantize_per_channel_affine``) for quantize / fake_quantize and the STE gradient.

PyTorch computes round(r * inv_scale) with inv_scale = 1/s, we compute round(r / s + z): on (near-)ties the
two can land one level apart, so the kernel comparisons allow exactly that and nothing more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab import EPS, dequantize, fake_quantize, qrange, quantize, scale_zero_point

# torch.ao's quantized tensors / observers may warn that they are deprecated; they are our reference.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("single_thread"),
]

FAST = settings(max_examples=60, deadline=None)

# ----------------------------------------------------------------------------------------------------
# helpers


def _grid(bits: int, signed: bool) -> tuple[int, int, torch.dtype]:
    """Our grid and the 8-bit PyTorch dtype that contains it (b-bit grid ⊂ 8-bit grid for b <= 8)."""
    q_min, q_max = qrange(bits, signed=signed)
    return q_min, q_max, (torch.qint8 if signed else torch.quint8)


def _f32(x: float) -> float:
    """Round a Python float to the nearest float32, so PyTorch (double scale arg) and we see the same s."""
    return float(np.float32(x))


def _inputs(seed: int, n: int, s, z, q_min: int, q_max: int, ties: bool = True) -> torch.Tensor:
    """r spanning the grid and 3 levels beyond each end (so clipping happens), plus exact-tie points
    r = (k + 1/2) * s and the two clip-range ends +- 2 levels."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    levels = u * (q_max - q_min + 6) + (q_min - z - 3)  # r/s, continuous
    parts = [levels]
    if ties:
        k = torch.randint(q_min - 2, q_max + 2, (n // 2 + 1,), generator=g).double()
        parts.append(k - z + 0.5)
    parts.append(torch.tensor([q_min - z - 2.0, 0.0, q_max - z + 2.0], dtype=torch.float64))
    return (torch.cat(parts) * s).float()


def _assert_tie_only(q: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> int:
    """q and ref (levels) differ by at most one level, and only where x = r/s + z is a (near-)tie."""
    diff = (q.long() - ref.long()).abs()
    assert int(diff.max()) <= 1, f"levels differ by {int(diff.max())} > 1"
    differs = diff > 0
    if bool(differs.any()):
        dist_to_half = (x[differs] - torch.floor(x[differs]) - 0.5).abs()
        assert float(dist_to_half.max()) < 1e-3, "a one-level difference away from a rounding tie"
    return int(differs.sum())


# ----------------------------------------------------------------------------------------------------
# qrange: closed form


@pytest.mark.parametrize("bits", range(1, 17))
def test_qrange_closed_form(bits):
    half = 1 << (bits - 1)
    assert qrange(bits) == (-half, half - 1)
    assert qrange(bits, signed=True) == (-half, half - 1)
    assert qrange(bits, signed=False) == (0, (1 << bits) - 1)
    q_min, q_max = qrange(bits)
    assert q_max - q_min + 1 == 2**bits  # 2^b levels
    if bits >= 2:
        assert qrange(bits, narrow=True) == (-(half - 1), half - 1)
        assert qrange(bits, signed=False, narrow=True) == (1, (1 << bits) - 1)
    else:
        with pytest.raises(ValueError, match="narrow"):
            qrange(bits, narrow=True)
        with pytest.raises(ValueError, match="narrow"):
            qrange(bits, signed=False, narrow=True)


@pytest.mark.parametrize(
    "bits, exc, match",
    [(0, ValueError, "bits=0"), (17, ValueError, "bits=17"), (2.5, TypeError, "bits"),
     (True, TypeError, "bits"), ("8", TypeError, "bits"), (-3, ValueError, "bits=-3")],
)
def test_qrange_rejects_bad_bits(bits, exc, match):
    with pytest.raises(exc, match=match):
        qrange(bits)


# ----------------------------------------------------------------------------------------------------
# scale_zero_point against torch.ao.quantization.MinMaxObserver


def _observer_qparams(r_min: float, r_max: float, dtype, qscheme, q_min=None, q_max=None):
    from torch.ao.quantization import MinMaxObserver

    kw = {} if q_min is None else {"quant_min": q_min, "quant_max": q_max}
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, **kw)
    obs(torch.tensor([r_min, r_max], dtype=torch.float32))
    s, z = obs.calculate_qparams()
    return float(s), int(z)


_f = st.floats(-1e4, 1e4, allow_nan=False, width=32)
_range = st.tuples(_f, _f).map(sorted)


@FAST
@given(rng=_range, bits=st.integers(2, 8), signed=st.booleans(), custom=st.booleans())
def test_scale_zero_point_affine_matches_minmax_observer(rng, bits, signed, custom):
    r_min, r_max = rng
    q_min, q_max, dtype = _grid(bits, signed)
    if bits < 8:
        custom = True  # only a custom quant_min/quant_max gives PyTorch a 2..7-bit grid
    s_ref, z_ref = _observer_qparams(
        r_min, r_max, dtype, torch.per_tensor_affine, *((q_min, q_max) if custom else (None, None))
    )
    s, z = scale_zero_point(r_min, r_max, q_min, q_max)
    assert abs(float(s) - s_ref) <= 2**-23 * s_ref  # float32 rounding
    assert int(z) == z_ref
    assert float(s) >= EPS
    assert q_min <= int(z) <= q_max


@FAST
@given(rng=_range, bits=st.integers(2, 8), custom=st.booleans())
def test_scale_zero_point_symmetric_matches_minmax_observer_qint8(rng, bits, custom):
    r_min, r_max = rng
    q_min, q_max, dtype = _grid(bits, signed=True)
    if bits < 8:
        custom = True
    s_ref, z_ref = _observer_qparams(
        r_min, r_max, dtype, torch.per_tensor_symmetric, *((q_min, q_max) if custom else (None, None))
    )
    s, z = scale_zero_point(r_min, r_max, q_min, q_max, symmetric=True)
    assert abs(float(s) - s_ref) <= 2**-23 * s_ref
    assert int(z) == z_ref == 0


@FAST
@given(rng=_range, bits=st.integers(2, 8))
def test_scale_zero_point_symmetric_unsigned_closed_form(rng, bits):
    # PyTorch's quint8 symmetric observer puts z at the grid's midpoint (128); ours keeps z = 0 on an
    # unsigned grid (documented: s = r_max / q_max, negatives clip to 0). Check our closed form.
    r_min, r_max = rng
    q_min, q_max = qrange(bits, signed=False)
    s, z = scale_zero_point(r_min, r_max, q_min, q_max, symmetric=True)
    expected = max(float(np.float32(max(r_max, 0.0)) / np.float32(q_max)), EPS)
    assert float(s) == pytest.approx(expected, rel=2**-23)
    assert int(z) == 0


@FAST
@given(rng=_range, bits=st.integers(2, 16), signed=st.booleans())
def test_zero_is_exactly_representable_asymmetric(rng, bits, signed):
    q_min, q_max = qrange(bits, signed=signed)
    s, z = scale_zero_point(*rng, q_min, q_max)
    q0 = quantize(torch.zeros(3), s, z, q_min, q_max)
    assert torch.equal(q0, torch.full((3,), int(z), dtype=torch.int32))
    assert torch.equal(dequantize(q0, s, z), torch.zeros(3))


def test_scale_zero_point_shapes_and_dtypes():
    r_min, r_max = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 3.0, 2.0])
    s, z = scale_zero_point(r_min, r_max, *qrange(8, signed=False))
    assert s.shape == z.shape == (3,)
    assert s.dtype == torch.float32 and z.dtype == torch.int64


def test_scale_zero_point_worked_example():
    # s = (3 - (-1)) / 255, z = 0 - round(-1 / s) = round(63.75) = 64
    s, z = scale_zero_point(-1.0, 3.0, 0, 255)
    assert float(s) == float(np.float32(4.0) / np.float32(255.0))
    assert int(z) == 64


# ----------------------------------------------------------------------------------------------------
# quantize / fake_quantize against PyTorch's kernels

_shapes = st.lists(st.integers(1, 6), min_size=0, max_size=3)
_kernel_args = dict(
    bits=st.integers(2, 8), signed=st.booleans(), log_s=st.floats(-9.0, 4.0),
    z_frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300),
)


def _s_z(bits, signed, log_s, z_frac):
    q_min, q_max, dtype = _grid(bits, signed)
    s = _f32(math.exp(log_s))
    z = q_min + round(z_frac * (q_max - q_min))
    return s, z, q_min, q_max, dtype


@FAST
@given(**_kernel_args)
def test_quantize_matches_torch_quantize_per_tensor(bits, signed, log_s, z_frac, seed, n):
    s, z, q_min, q_max, dtype = _s_z(bits, signed, log_s, z_frac)
    r = _inputs(seed, n, s, z, q_min, q_max)
    q = quantize(r, s, z, q_min, q_max)
    # PyTorch clips to its 8-bit dtype; clipping again to our b-bit sub-grid = clipping to it once.
    ref = torch.quantize_per_tensor(r, s, z, dtype).int_repr().to(torch.int32).clamp(q_min, q_max)
    _assert_tie_only(q, ref, r.double() / s + z)
    assert q.dtype == torch.int32 and q.shape == r.shape


@FAST
@given(**_kernel_args)
def test_fake_quantize_matches_torch_per_tensor(bits, signed, log_s, z_frac, seed, n):
    s, z, q_min, q_max, _ = _s_z(bits, signed, log_s, z_frac)
    r = _inputs(seed, n, s, z, q_min, q_max)
    out = fake_quantize(r, s, z, q_min, q_max)
    ref = torch.fake_quantize_per_tensor_affine(r, s, z, q_min, q_max)
    levels, levels_ref = torch.round(out.double() / s), torch.round(ref.double() / s)
    _assert_tie_only(levels, levels_ref, r.double() / s + z)
    same = levels == levels_ref
    assert torch.equal(out[same], ref[same])  # the same level gives the same float, bit for bit
    assert out.dtype == r.dtype


@FAST
@given(
    bits=st.integers(2, 8), signed=st.booleans(), shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    axis_pick=st.integers(0, 3), seed=st.integers(0, 2**31 - 1),
)
def test_fake_quantize_matches_torch_per_channel(bits, signed, shape, axis_pick, seed):
    q_min, q_max, _ = _grid(bits, signed)
    axis = axis_pick % len(shape)
    C = shape[axis]
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.empty(C).uniform_(-8.0, 3.0, generator=g))
    z = torch.randint(q_min, q_max + 1, (C,), generator=g)
    bshape = [1] * len(shape)
    bshape[axis] = C
    s_b, z_b = s.view(bshape), z.view(bshape)
    x = torch.rand(shape, generator=g) * (q_max - q_min + 6) + (q_min - 3) - z_b  # r/s, beyond the clip range
    r = (x * s_b).float()
    out = fake_quantize(r, s_b, z_b, q_min, q_max)
    ref = torch.fake_quantize_per_channel_affine(r, s, z.to(torch.int32), axis, q_min, q_max)
    levels, levels_ref = torch.round(out.double() / s_b), torch.round(ref.double() / s_b)
    _assert_tie_only(levels, levels_ref, r.double() / s_b + z_b)


def test_division_vs_inverse_scale_mismatch_fraction_is_tiny():
    """Measure how often round(r/s + z) (ours) and PyTorch's round(r * (1/s)) + z land on different levels.

    Bound: for b <= 8 and r/s spanning the grid +-3 levels, |r/s| < 2^9. Each float32 operation has
    relative error <= 2^-24; ours rounds r/s and r/s + z, PyTorch rounds 1/s and r * (1/s), so the two
    values fed to round() differ by at most about 4 * 2^-24 * 2^9 = 2^-13. They can only round to
    different levels when a half-integer lies between them, which for r/s spread over many levels has
    probability <= 2^-13 ~ 1.2e-4 per element. Anything above that is a real bug (a wrong rounding mode
    gives ~50%). Sample: ~10^6 random (non-tie) values per PyTorch function, all bit-widths 2..8.
    """
    g = torch.Generator().manual_seed(0)
    per_cfg = 72_000  # 14 grids * 72k ~ 10^6 values per reference
    counts = {"quantize_per_tensor": 0, "fake_quantize_per_tensor_affine": 0,
              "fake_quantize_per_channel_affine": 0}
    total = 0
    for bits in range(2, 9):
        for signed in (False, True):
            q_min, q_max, dtype = _grid(bits, signed)
            s = _f32(math.exp(float(torch.empty(1).uniform_(-8.0, 3.0, generator=g))))
            z = int(torch.randint(q_min, q_max + 1, (1,), generator=g))
            seed = int(torch.randint(0, 2**31, (1,), generator=g))
            r = _inputs(seed, per_cfg, s, z, q_min, q_max, ties=False)
            x = r.double() / s + z
            q = quantize(r, s, z, q_min, q_max)
            ref = torch.quantize_per_tensor(r, s, z, dtype).int_repr().to(torch.int32).clamp(q_min, q_max)
            counts["quantize_per_tensor"] += _assert_tie_only(q, ref, x)
            out = fake_quantize(r, s, z, q_min, q_max)
            ref = torch.fake_quantize_per_tensor_affine(r, s, z, q_min, q_max)
            counts["fake_quantize_per_tensor_affine"] += _assert_tie_only(
                torch.round(out.double() / s), torch.round(ref.double() / s), x)
            # per channel: 8 channels with their own s and z
            C = 8
            s_c = torch.exp(torch.empty(C).uniform_(-8.0, 3.0, generator=g))
            z_c = torch.randint(q_min, q_max + 1, (C,), generator=g)
            xc = torch.rand(C, per_cfg // C, generator=g, dtype=torch.float64) * (q_max - q_min + 6) + (
                q_min - 3) - z_c[:, None]
            rc = (xc * s_c[:, None]).float()
            out = fake_quantize(rc, s_c[:, None], z_c[:, None], q_min, q_max)
            ref = torch.fake_quantize_per_channel_affine(rc, s_c, z_c.to(torch.int32), 0, q_min, q_max)
            counts["fake_quantize_per_channel_affine"] += _assert_tie_only(
                torch.round(out.double() / s_c[:, None]), torch.round(ref.double() / s_c[:, None]),
                rc.double() / s_c[:, None] + z_c[:, None])
            total += r.numel()
    bound = 2.0**-13
    for name, c in counts.items():
        frac = c / total
        print(f"1/s-vs-division mismatch vs torch.{name}: {c} / {total} = {frac:.2e} (bound {bound:.2e})")
        assert frac <= bound, f"{name}: {frac:.2e} of levels differ, more than rounding ties explain"


@settings(max_examples=40, deadline=None)
@given(**_kernel_args)
def test_fake_quantize_gradient_matches_torch_ste(bits, signed, log_s, z_frac, seed, n):
    s, z, q_min, q_max, _ = _s_z(bits, signed, log_s, z_frac)
    r = _inputs(seed, n, s, z, q_min, q_max)  # includes values beyond both ends of the clip range
    upstream = torch.randn(r.shape, generator=torch.Generator().manual_seed(seed))
    x_ref = r.clone().requires_grad_(True)
    out_ref = torch.fake_quantize_per_tensor_affine(x_ref, s, z, q_min, q_max)
    out_ref.backward(upstream)
    x = r.clone().requires_grad_(True)
    out = fake_quantize(x, s, z, q_min, q_max)
    out.backward(upstream)
    # On a rounding tie the two kernels may disagree about the level, and so about "inside" at a clip
    # boundary: PyTorch rounds r/s then adds z, we round r/s + z (half to even: differs when z is odd).
    x_pos = r.double() / s + z
    not_tie = (x_pos - torch.floor(x_pos) - 0.5).abs() >= 1e-3
    assert torch.equal(x.grad[not_tie], x_ref.grad[not_tie])
    # The test exercises both branches of the STE: passed-through and blocked gradients.
    assert bool((x.grad == 0).any()) and bool((x.grad == upstream).any())


@FAST
@given(bits=st.integers(2, 8), signed=st.booleans(), log_s=st.floats(-9.0, 4.0), z_frac=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_fake_quantize_gradient_matches_torch_per_channel(bits, signed, log_s, z_frac, seed):
    q_min, q_max, _ = _grid(bits, signed)
    g = torch.Generator().manual_seed(seed)
    C = 4
    s = torch.exp(torch.empty(C).uniform_(-8.0, 3.0, generator=g))
    z = torch.randint(q_min, q_max + 1, (C,), generator=g)
    xs = torch.rand(C, 50, generator=g, dtype=torch.float64) * (q_max - q_min + 6) + (q_min - 3) - z[:, None]
    r = (xs * s[:, None]).float()
    upstream = torch.randn(r.shape, generator=g)
    x_ref = r.clone().requires_grad_(True)
    out_ref = torch.fake_quantize_per_channel_affine(x_ref, s, z.to(torch.int32), 0, q_min, q_max)
    out_ref.backward(upstream)
    x = r.clone().requires_grad_(True)
    out = fake_quantize(x, s[:, None], z[:, None], q_min, q_max)
    out.backward(upstream)
    x_pos = r.double() / s[:, None] + z[:, None]
    not_tie = (x_pos - torch.floor(x_pos) - 0.5).abs() >= 1e-3
    assert torch.equal(x.grad[not_tie], x_ref.grad[not_tie])
    assert bool((x.grad == 0).any()) and bool((x.grad == upstream).any())


# ----------------------------------------------------------------------------------------------------
# per-channel is the same code path


@FAST
@given(bits=st.integers(2, 8), signed=st.booleans(), C=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_per_channel_equals_per_tensor_on_each_channel(bits, signed, C, seed):
    q_min, q_max = qrange(bits, signed=signed)
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(C, 3, 2, 2, generator=g) * 3
    s = torch.exp(torch.empty(C, 1, 1, 1).uniform_(-5.0, 1.0, generator=g))
    z = torch.randint(q_min, q_max + 1, (C, 1, 1, 1), generator=g)
    q = quantize(r, s, z, q_min, q_max)
    fq = fake_quantize(r, s, z, q_min, q_max)
    for c in range(C):
        sc, zc = float(s[c]), int(z[c])
        assert torch.equal(q[c], quantize(r[c], sc, zc, q_min, q_max))
        assert torch.equal(fq[c], fake_quantize(r[c], sc, zc, q_min, q_max))
    assert torch.equal(dequantize(q, s, z), fq)


# ----------------------------------------------------------------------------------------------------
# properties

_pos = st.floats(min_value=1e-3, max_value=1e3)


@FAST
@given(bits=st.integers(2, 12), signed=st.booleans(), s=_pos, z_frac=st.floats(0.0, 1.0),
       u=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_roundtrip_error_at_most_half_a_step_inside_the_range(bits, signed, s, z_frac, u):
    q_min, q_max = qrange(bits, signed=signed)
    s = _f32(s)
    z = q_min + round(z_frac * (q_max - q_min))
    lo, hi = s * (q_min - z), s * (q_max - z)  # the representable range
    r = torch.tensor([lo + t * (hi - lo) for t in u], dtype=torch.float32).clamp(lo, hi)
    r_hat = dequantize(quantize(r, s, z, q_min, q_max), s, z)
    err = (r.double() - r_hat.double()).abs()
    # s/2, plus the float32 rounding of r / s and of s * (q - z) (relative 2^-24 of at most 2^12 levels)
    assert float(err.max()) <= s * (0.5 + 2**-10)


@FAST
@given(bits=st.integers(1, 16), signed=st.booleans(), s=_pos, z_frac=st.floats(0.0, 1.0),
       r=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=60))
def test_quantize_is_monotone_and_inside_the_grid(bits, signed, s, z_frac, r):
    q_min, q_max = qrange(bits, signed=signed)
    z = q_min + round(z_frac * (q_max - q_min))
    r = torch.sort(torch.tensor(r, dtype=torch.float32)).values
    q = quantize(r, s, z, q_min, q_max)
    assert bool((q[1:] >= q[:-1]).all())
    assert int(q.min()) >= q_min and int(q.max()) <= q_max


@pytest.mark.parametrize("bits, signed", [(2, True), (4, False), (8, True), (8, False), (16, True)])
def test_every_level_is_a_fixed_point(bits, signed):
    q_min, q_max = qrange(bits, signed=signed)
    for s, z in [(0.37, q_min), (1e-3, (q_min + q_max) // 2), (25.0, q_max)]:
        q = torch.arange(q_min, q_max + 1)
        r_hat = dequantize(q, s, z)
        assert torch.allclose(r_hat.double(), _f32(s) * (q.double() - z), rtol=1e-6, atol=0)
        assert torch.equal(quantize(r_hat, s, z, q_min, q_max), q.to(torch.int32))


def test_quantize_docstring_example_and_half_to_even():
    assert quantize(torch.tensor([-1.0, 0.0, 0.26, 9.0]), 0.1, 0, *qrange(4)).tolist() == [-8, 0, 3, 7]
    # r/s = 0.5, 1.5, 2.5, -0.5, -1.5 -> half to even: 0, 2, 2, 0, -2
    r = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])
    assert quantize(r, 1.0, 0, -8, 7).tolist() == [0, 2, 2, 0, -2]


# ----------------------------------------------------------------------------------------------------
# constant and all-zero tensors


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_all_zero_tensor(bits, signed, symmetric):
    q_min, q_max = qrange(bits, signed=signed)
    r = torch.zeros(5)
    s, z = scale_zero_point(r.min(), r.max(), q_min, q_max, symmetric=symmetric)
    assert math.isfinite(float(s)) and float(s) >= EPS
    out = fake_quantize(r, s, z, q_min, q_max)
    assert torch.equal(out, r)
    assert torch.equal(dequantize(quantize(r, s, z, q_min, q_max), s, z), r)


@FAST
@given(c=st.floats(2.0**-6, 2.0**20, width=32), negative=st.booleans(), bits=st.integers(1, 16),
       signed=st.booleans())
def test_constant_tensor_lands_on_the_end_level(c, negative, bits, signed):
    # Asymmetric: the range [0, c] (or [c, 0]) maps c onto q_max (or q_min). r_hat = s * (q_max - q_min)
    # equals c up to float32 rounding only: s = c / (q_max - q_min) is itself rounded.
    c = -c if negative else c
    q_min, q_max = qrange(bits, signed=signed)
    r = torch.full((4,), c, dtype=torch.float32)
    s, z = scale_zero_point(r.min(), r.max(), q_min, q_max)
    assert float(s) >= EPS and not bool(torch.isnan(s))
    q = quantize(r, s, z, q_min, q_max)
    assert bool((q == (q_min if negative else q_max)).all())
    r_hat = dequantize(q, s, z)
    ulp = float(np.spacing(np.float32(abs(c))))
    assert float((r_hat - r).abs().max()) <= ulp
    assert torch.equal(fake_quantize(r, s, z, q_min, q_max), r_hat)


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
@pytest.mark.parametrize("j", [-12, -3, 0, 5])
@pytest.mark.parametrize("negative", [False, True])
def test_constant_tensor_roundtrips_exactly_when_c_over_steps_is_exact(bits, j, negative):
    # c = (q_max - q_min) * 2^j: s = c / (q_max - q_min) = 2^j is exact, so s * (q - z) is exactly c.
    q_min, q_max = qrange(bits, signed=False)
    c = (q_max - q_min) * 2.0**j * (-1 if negative else 1)
    r = torch.full((3,), c)
    s, z = scale_zero_point(r.min(), r.max(), q_min, q_max)
    assert torch.equal(dequantize(quantize(r, s, z, q_min, q_max), s, z), r)
    assert torch.equal(fake_quantize(r, s, z, q_min, q_max), r)


# ----------------------------------------------------------------------------------------------------
# NumPy in, NumPy out; dtypes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_in_numpy_out(dtype):
    rng = np.random.default_rng(0)
    r = (rng.standard_normal((3, 4)) * 2).astype(dtype)
    q_min, q_max = qrange(4)
    q = quantize(r, 0.25, 1, q_min, q_max)
    assert isinstance(q, np.ndarray) and q.dtype == np.int32 and q.shape == r.shape
    np.testing.assert_array_equal(q, np.clip(np.round(r / np.float32(0.25) + 1), q_min, q_max))
    r_hat = dequantize(q, 0.25, 1)
    assert isinstance(r_hat, np.ndarray) and r_hat.dtype == np.float32
    np.testing.assert_array_equal(r_hat, np.float32(0.25) * (q.astype(np.float32) - 1))
    fq = fake_quantize(r, 0.25, 1, q_min, q_max)
    assert isinstance(fq, np.ndarray) and fq.dtype == dtype and fq.shape == r.shape
    np.testing.assert_allclose(fq, r_hat, rtol=0, atol=1e-7)
    # torch in, torch out
    assert isinstance(quantize(torch.from_numpy(r), 0.25, 1, q_min, q_max), torch.Tensor)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs_round_like_float32(dtype):
    # r/s + z must not be evaluated in float16/bfloat16 (too few bits for the fraction: wrong levels).
    r = (torch.randn(20_000, generator=torch.Generator().manual_seed(1)) * 2).to(dtype)
    s, z, q_min, q_max = 0.0123, 3, 0, 255
    exact = torch.clamp(torch.round(r.double() / _f32(s) + z), q_min, q_max).to(torch.int32)
    q = quantize(r, s, z, q_min, q_max)
    mismatches = int((q != exact).sum())
    assert mismatches <= 20_000 * 2**-13  # only float32 ties
    fq = fake_quantize(r, s, z, q_min, q_max)
    assert fq.dtype == dtype
    work = torch.promote_types(dtype, torch.float32)  # computed in float32 (float64 stays float64), then cast
    expected = (torch.tensor(s, dtype=torch.float32).to(work) * (exact - z).to(work)).to(dtype)
    assert int((fq != expected).sum()) <= mismatches


# ----------------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument


@pytest.mark.parametrize(
    "r, exc, match",
    [
        (torch.tensor([1.0, float("nan")]), ValueError, r"r contains 1 NaN/inf"),
        (torch.tensor([float("inf"), 0.0, -float("inf")]), ValueError, r"r contains 2 NaN/inf"),
        (torch.tensor([]), ValueError, r"r is empty"),
        (torch.tensor([1, 2, 3]), TypeError, r"r must be a floating-point"),
        (np.array([1, 2, 3]), TypeError, r"r must be a floating-point array"),
        (torch.tensor([True, False]), TypeError, r"r must be a floating-point"),
        ("1.0", TypeError, r"r must be a torch.Tensor"),
    ],
)
def test_bad_r(r, exc, match):
    for fn in (quantize, fake_quantize):
        with pytest.raises(exc, match=match):
            fn(r, 0.1, 0, -8, 7)


@pytest.mark.parametrize(
    "s, match",
    [(0.0, r"s must be finite and > 0"), (-0.1, r"s must be finite and > 0"),
     (float("nan"), r"s must be finite and > 0"), (float("inf"), r"s must be finite and > 0"),
     (torch.tensor([0.1, 0.0]), r"s must be finite and > 0")],
)
def test_bad_scale(s, match):
    r = torch.ones(2)
    for call in (lambda: quantize(r, s, 0, -8, 7), lambda: fake_quantize(r, s, 0, -8, 7),
                 lambda: dequantize(torch.ones(2, dtype=torch.int32), s, 0)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize(
    "z, match",
    [(0.5, r"z must be an integer"), (float("nan"), r"z must be an integer"),
     (8, r"z must lie in \[q_min, q_max\] = \[-8, 7\]"), (-9, r"z must lie in"),
     (torch.tensor([0, 9]), r"z must lie in")],
)
def test_bad_zero_point(z, match):
    for fn in (quantize, fake_quantize):
        with pytest.raises(ValueError, match=match):
            fn(torch.ones(2), 0.1, z, -8, 7)


@pytest.mark.parametrize(
    "q_min, q_max, exc, match",
    [(7, 7, ValueError, r"q_min=7 must be smaller than q_max=7"), (8, -8, ValueError, r"q_min=8"),
     (0.5, 7, TypeError, r"q_min must be an integer"), (-8, "7", TypeError, r"q_max must be an integer"),
     (True, 7, TypeError, r"q_min must be an integer")],
)
def test_bad_grid(q_min, q_max, exc, match):
    for call in (lambda: quantize(torch.ones(2), 0.1, 0, q_min, q_max),
                 lambda: fake_quantize(torch.ones(2), 0.1, 0, q_min, q_max),
                 lambda: scale_zero_point(-1.0, 1.0, q_min, q_max)):
        with pytest.raises(exc, match=match):
            call()


def test_scale_zero_point_bad_ranges():
    with pytest.raises(ValueError, match=r"r_min must be <= r_max"):
        scale_zero_point(1.0, -1.0, 0, 255)
    with pytest.raises(ValueError, match=r"r_min must be <= r_max"):
        scale_zero_point(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), 0, 255)
    with pytest.raises(ValueError, match=r"r_min contains 1 NaN/inf"):
        scale_zero_point(float("nan"), 1.0, 0, 255)
    with pytest.raises(ValueError, match=r"r_max contains 1 NaN/inf"):
        scale_zero_point(0.0, float("inf"), 0, 255)
    with pytest.raises(ValueError, match=r"r_min and r_max must have the same shape"):
        scale_zero_point(torch.zeros(2), torch.ones(3), 0, 255)
    # symmetric puts r = 0 at z = 0: a grid without 0 cannot hold it
    with pytest.raises(ValueError, match=r"symmetric=True.*\[q_min, q_max\] = \[1, 255\]"):
        scale_zero_point(-1.0, 1.0, *qrange(8, signed=False, narrow=True), symmetric=True)

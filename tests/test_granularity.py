"""Tests for quantlab.granularity: per-tensor / per-channel / per-group are one code path.

References: PyTorch's ``MinMaxObserver`` and ``PerChannelMinMaxObserver`` for (s, z), a per-slice loop
with scalar (s, z) for per-channel, and a brute-force loop over groups for per-group.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab import (
    EPS,
    PerChannel,
    PerGroup,
    PerTensor,
    choose_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_tensor,
    qrange,
    quantize,
    quantize_tensor,
    range_of,
    scale_zero_point,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("single_thread"),
]

FAST = settings(max_examples=50, deadline=None)

# (our choose_qparams keywords, PyTorch dtype, PyTorch qscheme suffix). PyTorch's symmetric quint8 puts
# z at the grid midpoint (128); ours keeps z = 0 (documented), so it is checked by closed form below.
SCHEMES = {
    "affine_quint8": (dict(symmetric=False, signed=False), torch.quint8, "affine"),
    "affine_qint8": (dict(symmetric=False, signed=True), torch.qint8, "affine"),
    "symmetric_qint8": (dict(symmetric=True), torch.qint8, "symmetric"),
}


def _data(seed: int, shape, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * float(torch.exp(torch.empty(1).uniform_(-6, 6, generator=g)))
    if kind == "positive":
        return x.abs()
    if kind == "negative":
        return -x.abs()
    if kind == "shifted":
        return x + 3 * float(x.abs().max())
    if kind == "constant":
        return torch.full(shape, float(x.flatten()[0]))
    if kind == "zeros":
        return torch.zeros(shape)
    return x


_kinds = st.sampled_from(["mixed", "positive", "negative", "shifted", "constant", "zeros"])


def _observer(cls, dtype, qscheme, q_min, q_max, **kw):
    from torch.ao import quantization as tq

    return getattr(tq, cls)(dtype=dtype, qscheme=qscheme, quant_min=q_min, quant_max=q_max, **kw)


def _assert_same_qparams(s, z, s_ref, z_ref):
    s, z = s.flatten().double(), z.flatten()
    s_ref, z_ref = s_ref.flatten().double(), z_ref.flatten().to(torch.int64)
    assert s.shape == s_ref.shape
    assert bool(((s - s_ref).abs() <= 2**-23 * s_ref).all()), "s differs beyond float32 rounding"
    assert torch.equal(z, z_ref), "z differs"


# ----------------------------------------------------------------------------------------------------
# (s, z) against PyTorch's observers


@FAST
@given(scheme=st.sampled_from(sorted(SCHEMES)), bits=st.integers(2, 8), kind=_kinds,
       shape=st.lists(st.integers(1, 5), min_size=0, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_choose_qparams_per_tensor_matches_minmax_observer(scheme, bits, kind, shape, seed):
    kw, dtype, qs = SCHEMES[scheme]
    r = _data(seed, shape, kind)
    p = choose_qparams(r, bits, PerTensor(), **kw)
    obs = _observer("MinMaxObserver", dtype, getattr(torch, f"per_tensor_{qs}"), p.q_min, p.q_max)
    obs(r)
    s_ref, z_ref = obs.calculate_qparams()
    assert (p.q_min, p.q_max) == qrange(bits, signed=kw.get("signed", True))
    assert p.s.shape == () and p.z.shape == ()
    _assert_same_qparams(p.s, p.z, s_ref, z_ref)
    assert float(p.s) >= EPS


@FAST
@given(scheme=st.sampled_from(sorted(SCHEMES)), bits=st.integers(2, 8), kind=_kinds,
       shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), axis_pick=st.integers(0, 3),
       negative_axis=st.booleans(), seed=st.integers(0, 2**31 - 1))  # PyTorch's observer needs ndim >= 2
def test_choose_qparams_per_channel_matches_per_channel_minmax_observer(
    scheme, bits, kind, shape, axis_pick, negative_axis, seed
):
    kw, dtype, qs = SCHEMES[scheme]
    axis = axis_pick % len(shape)
    r = _data(seed, shape, kind)
    p = choose_qparams(r, bits, PerChannel(axis - len(shape) if negative_axis else axis), **kw)
    obs = _observer("PerChannelMinMaxObserver", dtype, getattr(torch, f"per_channel_{qs}"), p.q_min, p.q_max,
                    ch_axis=axis)
    obs(r)
    s_ref, z_ref = obs.calculate_qparams()
    expected_shape = [1] * len(shape)
    expected_shape[axis] = shape[axis]
    assert list(p.s.shape) == expected_shape and list(p.z.shape) == expected_shape
    _assert_same_qparams(p.s, p.z, s_ref, z_ref)
    assert p.n_params == shape[axis]


@pytest.mark.parametrize("dtype, signed, qscheme", [
    (torch.quint8, False, torch.per_tensor_affine), (torch.qint8, True, torch.per_tensor_affine),
    (torch.qint8, True, torch.per_tensor_symmetric)])
def test_choose_qparams_matches_default_8bit_observer(dtype, signed, qscheme):
    # PyTorch's defaults (no custom quant_min/quant_max) are the full 8-bit grids.
    from torch.ao.quantization import MinMaxObserver

    r = torch.randn(1000, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
    obs(r)
    s_ref, z_ref = obs.calculate_qparams()
    p = choose_qparams(r, 8, symmetric=qscheme == torch.per_tensor_symmetric, signed=signed)
    _assert_same_qparams(p.s, p.z, s_ref, z_ref)


@FAST
@given(bits=st.integers(2, 8), kind=_kinds, seed=st.integers(0, 2**31 - 1))
def test_symmetric_unsigned_closed_form(bits, kind, seed):
    # Ours: s = max(r_max, 0) / q_max, z = 0 (PyTorch's quint8 symmetric observer uses z = 128 instead).
    r = _data(seed, (4, 6), kind)
    p = choose_qparams(r, bits, PerChannel(0), symmetric=True, signed=False)
    assert (p.q_min, p.q_max) == (0, 2**bits - 1)
    expected = torch.clamp(r.amax(dim=1, keepdim=True).clamp(min=0) / p.q_max, min=EPS)
    assert torch.equal(p.s, expected)
    assert torch.equal(p.z, torch.zeros_like(p.z))


# ----------------------------------------------------------------------------------------------------
# per-channel: the same code path as per-tensor, slice by slice


@FAST
@given(bits=st.integers(2, 8), symmetric=st.booleans(),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       axis_pick=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_per_channel_equals_a_loop_over_channels(bits, symmetric, shape, axis_pick, seed):
    axis = axis_pick % len(shape)
    r = _data(seed, shape, "mixed")
    q, p = quantize_tensor(r, bits, PerChannel(axis), symmetric=symmetric)
    r_hat = fake_quantize_tensor(r, bits, PerChannel(axis), symmetric=symmetric)
    for c in range(shape[axis]):
        rc = r.select(axis, c)
        s_c, z_c = scale_zero_point(float(rc.min()), float(rc.max()), p.q_min, p.q_max, symmetric=symmetric)
        assert float(p.s.select(axis, c).flatten()[0]) == float(s_c)
        assert int(p.z.select(axis, c).flatten()[0]) == int(z_c)
        assert torch.equal(q.select(axis, c), quantize(rc, float(s_c), int(z_c), p.q_min, p.q_max))
        assert torch.equal(r_hat.select(axis, c), fake_quantize(rc, float(s_c), int(z_c), p.q_min, p.q_max))
    assert torch.equal(dequantize(q, p.s, p.z), r_hat)


def test_per_channel_is_at_least_as_accurate_as_per_tensor():
    # Channels with very different ranges: per-tensor wastes levels on the small ones.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, 3, 3, generator=g) * torch.logspace(-3, 0, 8).view(8, 1, 1, 1)
    err_t = (fake_quantize_tensor(w, 4, PerTensor(), symmetric=True) - w).pow(2).mean()
    err_c = (fake_quantize_tensor(w, 4, PerChannel(0), symmetric=True) - w).pow(2).mean()
    assert err_c < err_t / 2


# ----------------------------------------------------------------------------------------------------
# per-group: a brute-force loop over groups


@FAST
@given(bits=st.integers(2, 8), symmetric=st.booleans(), R=st.integers(1, 4), n_groups=st.integers(1, 4),
       g=st.sampled_from([1, 2, 3, 4, 8]), trailing=st.sampled_from(["2d", "3d", "1d"]),
       kind=_kinds, seed=st.integers(0, 2**31 - 1))
def test_per_group_equals_brute_force(bits, symmetric, R, n_groups, g, trailing, kind, seed):
    K = n_groups * g
    shape = {"2d": (R, K), "3d": (R, K // g, g), "1d": (K,)}[trailing]
    r = _data(seed, shape, kind)
    q, p = quantize_tensor(r, bits, PerGroup(g), symmetric=symmetric)
    rows = r.reshape(1, -1) if r.ndim == 1 else r.reshape(r.shape[0], -1)
    q_rows = q.reshape(rows.shape)
    expected_q = torch.empty_like(q_rows)
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1] // g):
            chunk = rows[i, j * g:(j + 1) * g]
            s_ij, z_ij = scale_zero_point(float(chunk.min()), float(chunk.max()), p.q_min, p.q_max, symmetric)
            expected_q[i, j * g:(j + 1) * g] = quantize(chunk, float(s_ij), int(z_ij), p.q_min, p.q_max)
            # every value of the group carries the group's (s, z)
            assert bool((p.s.reshape(rows.shape)[i, j * g:(j + 1) * g] == s_ij).all())
            assert bool((p.z.reshape(rows.shape)[i, j * g:(j + 1) * g] == z_ij).all())
    assert torch.equal(q_rows, expected_q)
    assert p.n_params == rows.shape[0] * (rows.shape[1] // g)
    r_hat = fake_quantize_tensor(r, bits, PerGroup(g), symmetric=symmetric)
    assert torch.equal(r_hat, dequantize(q, p.s, p.z))


def test_per_group_of_whole_rows_equals_per_channel():
    r = _data(7, (5, 12), "mixed")
    q_g, p_g = quantize_tensor(r, 4, PerGroup(12))
    q_c, p_c = quantize_tensor(r, 4, PerChannel(0))
    assert torch.equal(q_g, q_c)
    assert p_g.n_params == p_c.n_params == 5


@pytest.mark.parametrize("shape, g", [((4, 10), 3), ((2, 3, 5), 4), ((7,), 2), ((4, 6), 12)])
def test_per_group_size_must_divide_the_row(shape, g):
    with pytest.raises(ValueError, match=rf"group_size={g} does not divide the row length"):
        choose_qparams(torch.randn(shape), 4, PerGroup(g))


@pytest.mark.parametrize("g", [0, -2, 2.0, True])
def test_per_group_size_must_be_a_positive_int(g):
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        range_of(torch.randn(4, 4), PerGroup(g))


# ----------------------------------------------------------------------------------------------------
# n_params, range_of, argument checks


def test_n_params():
    r = torch.randn(6, 4, 3, 3)
    assert choose_qparams(r, 8).n_params == 1
    assert choose_qparams(r, 8, PerChannel(0)).n_params == 6
    assert choose_qparams(r, 8, PerChannel(1)).n_params == 4
    assert choose_qparams(r, 8, PerChannel(-1)).n_params == 3
    assert choose_qparams(r, 8, PerGroup(9)).n_params == 6 * 36 // 9
    assert choose_qparams(r, 8, PerGroup(36)).n_params == 6


def test_range_of_matches_numpy():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4, 5)).astype(np.float32)
    lo, hi = range_of(w)
    assert float(lo) == w.min() and float(hi) == w.max()
    lo, hi = range_of(w, PerChannel(1))
    np.testing.assert_array_equal(lo.numpy(), w.min(axis=(0, 2), keepdims=True))
    np.testing.assert_array_equal(hi.numpy(), w.max(axis=(0, 2), keepdims=True))
    lo, hi = range_of(w, PerGroup(5))
    np.testing.assert_array_equal(hi.numpy(), np.repeat(w.max(axis=2, keepdims=True), 5, axis=2))
    np.testing.assert_array_equal(lo.numpy(), np.repeat(w.min(axis=2, keepdims=True), 5, axis=2))


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match=rf"axis={axis} is out of range for a tensor with 2 dimension"):
        choose_qparams(torch.randn(3, 4), 8, PerChannel(axis))


@pytest.mark.parametrize("axis", [1.0, "0", True])
def test_axis_must_be_int(axis):
    with pytest.raises(TypeError, match="axis must be an int"):
        range_of(torch.randn(3, 4), PerChannel(axis))


def test_bad_arguments():
    r = torch.randn(3, 4)
    with pytest.raises(ValueError, match="PerChannel needs a tensor with at least one dimension"):
        choose_qparams(torch.tensor(1.0), 8, PerChannel(0))
    with pytest.raises(TypeError, match="granularity must be PerTensor"):
        choose_qparams(r, 8, "per_channel")
    for bits, exc in [(0, ValueError), (17, ValueError), (2.5, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="bits"):
            choose_qparams(r, bits)
    with pytest.raises(TypeError, match="r must be a floating-point"):
        choose_qparams(torch.arange(4), 8)
    with pytest.raises(ValueError, match="r contains 1 NaN/inf"):
        choose_qparams(torch.tensor([0.0, float("nan")]), 8)
    with pytest.raises(ValueError, match="r is empty"):
        choose_qparams(torch.empty(0, 3), 8, PerChannel(1))
    with pytest.raises(ValueError, match="symmetric=True puts r = 0 at z = 0"):
        choose_qparams(r, 8, symmetric=True, signed=False, narrow=True)
    with pytest.raises(ValueError, match="narrow"):
        choose_qparams(r, 1, symmetric=True, narrow=True)


# ----------------------------------------------------------------------------------------------------
# constant and all-zero tensors at every granularity


@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(0), PerChannel(1), PerGroup(3)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("c", [0.0, 2.5, -0.75, 1e-12])
def test_constant_and_zero_tensors(granularity, symmetric, c):
    r = torch.full((4, 6), c)
    q, p = quantize_tensor(r, 8, granularity, symmetric=symmetric)
    assert bool(torch.isfinite(p.s).all()) and float(p.s.min()) >= EPS
    assert bool(((p.z >= p.q_min) & (p.z <= p.q_max)).all())
    r_hat = fake_quantize_tensor(r, 8, granularity, symmetric=symmetric)
    assert bool(torch.isfinite(r_hat).all())
    assert torch.equal(r_hat, dequantize(q, p.s, p.z))
    if c == 0.0:
        assert torch.equal(r_hat, r)
    elif abs(c) > (p.q_max - p.q_min) * EPS:
        # symmetric full grid: max|r| sits at (q_max - q_min)/2 = 127.5 steps, so it is clipped to 127
        # (PyTorch's rule): the error is at most one step. Asymmetric: c is the end level (float32 exact).
        bound = float(p.s.max()) if symmetric else float(np.spacing(np.float32(abs(c))))
        assert float((r_hat - r).abs().max()) <= bound
    else:
        # |c| below (q_max - q_min) * EPS: s is floored at EPS, c is rounded to the EPS grid.
        assert float((r_hat - r).abs().max()) <= EPS / 2


def test_constant_with_narrow_symmetric_grid_is_the_end_level():
    # The narrow grid puts max|r| on the level q_max = 2^(b-1) - 1 exactly.
    for c in (3.0, -0.2, 1.7e3):
        q, p = quantize_tensor(torch.full((3, 3), c), 8, symmetric=True, narrow=True)
        assert bool((q == (127 if c > 0 else -127)).all())
        assert math.isclose(float(dequantize(q, p.s, p.z)[0, 0]), c, rel_tol=2**-23)


# ----------------------------------------------------------------------------------------------------
# qparams_from_range (the one range -> (s, z) path) against torch.ao observers given the same range


@FAST
@given(scheme=st.sampled_from(sorted(SCHEMES)), bits=st.integers(2, 8),
       lo=st.floats(-1e4, 1e4, allow_nan=False, width=32), width=st.floats(0, 1e4, allow_nan=False, width=32))
def test_qparams_from_range_matches_observer_calculate_qparams(scheme, bits, lo, width):
    from quantlab.granularity import qparams_from_range

    kw, dtype, qs = SCHEMES[scheme]
    r_min = torch.tensor(lo, dtype=torch.float32)
    r_max = torch.tensor(lo + width, dtype=torch.float32)
    p = qparams_from_range(r_min, r_max, bits, **kw)
    obs = _observer("MinMaxObserver", dtype, getattr(torch, f"per_tensor_{qs}"), p.q_min, p.q_max)
    obs(torch.stack([r_min, r_max]))  # the observer sees exactly this range
    s_ref, z_ref = obs.calculate_qparams()
    _assert_same_qparams(p.s, p.z, s_ref, z_ref)


@pytest.mark.parametrize("bits", [1, 8, 16])
def test_qparams_from_range_near_float32_max_stays_finite(bits):
    from quantlab.granularity import qparams_from_range

    p = qparams_from_range(-3e38, 3e38, bits)
    assert math.isfinite(float(p.s)) and float(p.s) > 0
    steps = p.q_max - p.q_min
    if bits > 1:  # closed form in float64: s = 6e38 / (q_max - q_min) fits float32
        assert float(p.s) == pytest.approx(6e38 / steps, rel=1e-6)
    r = torch.tensor([-3e38, 0.0, 3e38])
    r_hat = fake_quantize(r, p.s, p.z, p.q_min, p.q_max)
    assert bool(torch.isfinite(r_hat).all()) and float(r_hat[1]) == 0.0
    if bits > 1:
        assert bool(((r_hat - r).abs() <= float(p.s)).all())


# ----------------------------------------------------------------------------------------------------
# fake_quantize_weights: a copy of the model with w_hat in place of w


def _weight_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 8), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("bits, granularity, symmetric, narrow", [
    (4, PerChannel(0), True, True), (3, PerTensor(), False, False), (8, PerTensor(), True, True),
    (2, PerChannel(0), False, False), (1, PerTensor(), False, False), (16, PerChannel(0), True, True),
])
def test_fake_quantize_weights_equals_a_manual_loop(bits, granularity, symmetric, narrow):
    from quantlab.granularity import fake_quantize_weights

    model = _weight_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fake_quantize_weights(model, bits, granularity, symmetric, narrow)
    for name in ("0", "3", "4"):  # the reference: choose_qparams + fake_quantize, layer by layer
        w = getattr(model, name).weight.detach()
        p = choose_qparams(w, bits, granularity, symmetric=symmetric, narrow=narrow)
        assert torch.equal(getattr(out, name).weight, fake_quantize(w, p.s, p.z, p.q_min, p.q_max)), name
        assert torch.equal(getattr(out, name).bias, getattr(model, name).bias)  # biases stay FP32
        levels = torch.unique(getattr(out, name).weight.detach()[0]).numel()
        assert levels <= 2**bits
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k
    assert out is not model and out[0] is not model[0]


def test_fake_quantize_weights_per_group_falls_back_to_per_channel():
    from quantlab.granularity import fake_quantize_weights

    model = _weight_model()  # conv rows have 9 values (not a multiple of 4); linear rows 144 and 8
    out = fake_quantize_weights(model, 4, PerGroup(4))
    w_conv, w_fc = model[0].weight.detach(), model[3].weight.detach()
    assert torch.equal(out[0].weight, fake_quantize_tensor(w_conv, 4, PerChannel(0), True, narrow=True))
    assert torch.equal(out[3].weight, fake_quantize_tensor(w_fc, 4, PerGroup(4), True, narrow=True))
    assert not torch.equal(out[3].weight, fake_quantize_tensor(w_fc, 4, PerChannel(0), True, narrow=True))


def test_fake_quantize_weights_names_the_layer_of_a_bad_weight():
    from quantlab.granularity import fake_quantize_weights

    model = _weight_model()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '3' \(Linear\).*NaN"):
        fake_quantize_weights(model, 4)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fake_quantize_weights(None, 4)

"""Tests for quantlab.engine: fixed-point multiplier, exact sums, agreement with PyTorch's int8 kernels."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab.engine import (
    IntAvgPool2d,
    IntConv2d,
    IntLinear,
    IntMaxPool2d,
    int_conv2d,
    int_linear,
    quantize_bias,
    requant_multiplier,
    requantize,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


# --- requant_multiplier: the CONTRIBUTING.md convention -------------------------------------------


@given(st.floats(min_value=1e-12, max_value=1.0, exclude_max=True, allow_subnormal=False))
@settings(max_examples=300, deadline=None)
def test_requant_multiplier_convention(M):
    M0, n = requant_multiplier(M)
    assert 2**30 <= M0 < 2**31 and n >= 0
    assert M0 == round(M * 2**n)
    # n is the largest such shift: one more no longer fits under 2^31
    assert round(M * 2 ** (n + 1)) >= 2**31
    assert abs(M0 * 2.0**-n - M) <= M * 2**-30


def test_requant_multiplier_examples_and_rounding_edge():
    assert requant_multiplier(0.5) == (2**30, 31)
    assert requant_multiplier(0.75) == (3 * 2**29, 31)
    # just below 1: M * 2^31 rounds up to 2^31, so one shift less
    M0, n = requant_multiplier(1 - 2**-40)
    assert (M0, n) == (2**30, 30)


@pytest.mark.parametrize("M", [0.0, -0.1, 1.0, 3.0, math.inf, math.nan])
def test_requant_multiplier_rejects(M):
    with pytest.raises(ValueError, match="0 < M < 1"):
        requant_multiplier(M)


# --- requantize: integer-only rounding -------------------------------------------------------------


def test_requantize_matches_exact_rational_rounding():
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**31), 2**31 - 1, (2000,), generator=g, dtype=torch.int64).view(1, -1)
    for M in (0.5, 0.0123, 3.7e-5, 0.999):
        M0, n = requant_multiplier(M)
        got = requantize(acc, M0, n, 0, -(2**40), 2**40)
        # exact reference with Python integers: floor(acc * M0 / 2^n + 1/2)
        ref = torch.tensor([(a * M0 + 2 ** (n - 1)) >> n for a in acc.flatten().tolist()]).view(1, -1)
        assert torch.equal(got, ref)
        # and it is M * acc rounded (within one step of the float product)
        assert (got - torch.round(acc.double() * M)).abs().max() <= 1


def test_requantize_ties_round_up_and_clamps():
    M0, n = requant_multiplier(0.5)
    y = requantize(torch.tensor([[1, -1, 3, -3, 1000]]), M0, n, 10, 0, 255)
    assert y.tolist() == [[11, 10, 12, 9, 255]]  # 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1, clamp


def test_requantize_per_channel():
    acc = torch.tensor([[100, 100]])
    M0 = torch.tensor([requant_multiplier(0.5)[0], requant_multiplier(0.25)[0]])
    n = torch.tensor([requant_multiplier(0.5)[1], requant_multiplier(0.25)[1]])
    assert requantize(acc, M0, n, 0, -128, 127).tolist() == [[50, 25]]


# --- exact integer sums ----------------------------------------------------------------------------


def test_int_linear_equals_int64_reference():
    g = torch.Generator().manual_seed(1)
    q_x = torch.randint(0, 256, (5, 1568), generator=g)
    q_w = torch.randint(-127, 128, (7, 1568), generator=g)
    q_b = torch.randint(-1000, 1000, (7,), generator=g)
    ref = (q_x - 37) @ q_w.T + q_b  # torch int64 matmul: exact integers
    assert torch.equal(int_linear(q_x, 37, q_w, 0, q_b), ref)


# c_in=16: 144 * 255 * 127 < 2^24 (float32 path); c_in=64: 576 * 255 * 127 > 2^24 (float64 path)
@pytest.mark.parametrize("c_in", [16, 64])
def test_int_conv2d_exact_at_extreme_magnitudes(c_in):
    g = torch.Generator().manual_seed(2)
    q_x = torch.where(torch.rand(2, c_in, 9, 9, generator=g) < 0.5, 0, 255)
    q_w = torch.where(torch.rand(8, c_in, 3, 3, generator=g) < 0.5, -127, 127)
    acc = int_conv2d(q_x, 0, q_w, 0, None, 1, 1)
    # reference: unfold + int64 matmul, no floating point at all
    cols = torch.nn.functional.unfold(q_x.double(), 3, padding=1).round().to(torch.int64)  # (N, K, L)
    ref = (q_w.view(8, -1) @ cols).view(2, 8, 9, 9)
    assert torch.equal(acc, ref)


def test_conv_zero_padding_means_real_zero():
    # with z_x = 100 the padded border must contribute r = 0, i.e. (q_x - z_x) = 0
    q_x = torch.full((1, 1, 3, 3), 100)
    acc = int_conv2d(q_x, 100, torch.ones(1, 1, 3, 3, dtype=torch.int64), 0, None, 1, 1)
    assert acc.abs().max() == 0


def test_accumulator_overflow_is_reported():
    q_x = torch.full((1, 70000), 255)
    q_w = torch.full((1, 70000), 127)
    with pytest.raises(OverflowError, match="int32"):
        int_linear(q_x, 0, q_w, 0)


def test_quantize_bias():
    assert quantize_bias(torch.tensor([0.5, -0.25]), 0.01, 0.1).tolist() == [500, -250]
    q_b = quantize_bias(torch.tensor([1.0, 1.0]), torch.tensor([0.1, 0.2]), 0.5)
    assert q_b.dtype == torch.int32 and q_b.tolist() == [20, 10]


# --- agreement with PyTorch's quantized kernels ----------------------------------------------------


def _torch_qtensor(q, s, z, dtype=torch.quint8):
    q = q.to(torch.uint8 if dtype == torch.quint8 else torch.int8)
    return torch._make_per_tensor_quantized_tensor(q, s, z)


def _setup(kind, per_channel, seed, c_in=8, c_out=16):
    g = torch.Generator().manual_seed(seed)
    shape = (c_out, c_in, 3, 3) if kind == "conv" else (c_out, c_in * 9)
    w = torch.randn(shape, generator=g) * torch.rand(c_out, *[1] * (len(shape) - 1), generator=g)
    b = torch.randn(c_out, generator=g) * 0.2
    x = torch.rand(4, c_in, 10, 10, generator=g) * 3 - 0.7
    if kind == "linear":
        x = x.flatten(1)[:, : c_in * 9]
    dims = tuple(range(1, w.ndim))
    amax = w.abs().amax(dim=dims) if per_channel else w.abs().max().expand(c_out)
    s_w = (amax / 127).float()
    q_w = torch.clamp(torch.round(w / s_w.view(-1, *[1] * (w.ndim - 1))), -127, 127).to(torch.int8)
    s_x, z_x = 3.0 / 255, 60
    q_x = torch.clamp(torch.round(x / s_x + z_x), 0, 255).to(torch.int64)
    # output grid from the float result's range (like a calibrated layer)
    y = (torch.nn.functional.conv2d(x, w, b, padding=1) if kind == "conv" else x @ w.T + b)
    s_y = float(y.max() - y.min()) / 255
    z_y = int(round(-float(y.min()) / s_y))
    return q_w, s_w, b, q_x, s_x, z_x, s_y, z_y


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("backend", ["fbgemm", "qnnpack"])
def test_matches_pytorch_int8_kernels(kind, per_channel, relu, backend):
    if backend not in torch.backends.quantized.supported_engines:
        pytest.skip(f"{backend} not built into this torch")
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        total, equal, worst = 0, 0, 0
        for seed in range(3):
            q_w, s_w, b, q_x, s_x, z_x, s_y, z_y = _setup(kind, per_channel, seed)
            c_out = q_w.shape[0]
            z_w = torch.zeros(c_out, dtype=torch.int64)
            q_b = quantize_bias(b, s_w, s_x)
            if kind == "conv":
                ours = IntConv2d("c", q_w, s_w, z_w, q_b, s_x, z_x, s_y, z_y, 0, 255, relu=relu,
                                 stride=(1, 1), padding=(1, 1))
                mod = (nniq.ConvReLU2d if relu else nnq.Conv2d)(q_w.shape[1], c_out, 3, padding=1)
            else:
                ours = IntLinear("l", q_w, s_w, z_w, q_b, s_x, z_x, s_y, z_y, 0, 255, relu=relu)
                mod = (nniq.LinearReLU if relu else nnq.Linear)(q_w.shape[1], c_out)
            if per_channel:
                tw = torch._make_per_channel_quantized_tensor(q_w, s_w.double(), z_w, 0)
            else:
                tw = torch._make_per_tensor_quantized_tensor(q_w, float(s_w[0]), 0)
            # the float bias that PyTorch re-quantizes to exactly our q_b (round(b / (s_w s_x)))
            mod.set_weight_bias(tw, (q_b.double() * s_w.double() * s_x).float())
            mod.scale, mod.zero_point = s_y, z_y
            theirs = mod(_torch_qtensor(q_x, s_x, z_x)).int_repr().to(torch.int64)
            _, mine = ours.forward(q_x)
            diff = (mine - theirs).abs()
            total += diff.numel()
            equal += int((diff == 0).sum())
            worst = max(worst, int(diff.max()))
        assert equal / total >= 0.999, f"only {equal / total:.4%} identical"
        assert worst <= 1
    finally:
        torch.backends.quantized.engine = old


def test_maxpool_and_avgpool_on_integers():
    g = torch.Generator().manual_seed(3)
    q_x = torch.randint(0, 256, (2, 3, 8, 8), generator=g)
    mp = IntMaxPool2d("p", (2, 2), (2, 2))
    assert torch.equal(mp(q_x), torch.nn.functional.max_pool2d(q_x.double(), 2).to(torch.int64))
    ap = IntAvgPool2d("a", (2, 2), (2, 2), z=40)
    qt = _torch_qtensor(q_x, 0.1, 40)
    theirs = torch.nn.functional.avg_pool2d(qt, 2).int_repr().to(torch.int64)
    mine = ap(q_x)
    assert (mine - theirs).abs().max() <= 1
    # exact reference: z + round_half_up(sum(q - z) / 4)
    sums = torch.nn.functional.avg_pool2d((q_x - 40).double(), 2, divisor_override=1).round().to(torch.int64)
    assert torch.equal(mine, 40 + torch.div(2 * sums + 4, 8, rounding_mode="floor"))


def test_fused_relu_is_clamp_to_zero_point():
    q_w = torch.tensor([[1, -1]], dtype=torch.int8)
    lin = IntLinear("l", q_w, torch.tensor([0.1]), torch.zeros(1, dtype=torch.int64), None, 0.1, 0, 0.05, 30,
                    0, 255, relu=True)
    _, q_y = lin.forward(torch.tensor([[0, 100], [100, 0]]))
    assert q_y.flatten().tolist() == [30, 30 + 20]  # negative output -> z_y (r = 0); 10 * 0.01 / 0.05 = 20

"""Tests for quantlab.metrics: MSE and SQNR against NumPy and closed forms, sizes against hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab import (
    compression_ratio,
    fake_quantize_tensor,
    model_size_bytes,
    mse,
    sqnr_db,
    tensor_size_bytes,
)

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = settings(max_examples=40, deadline=None)

_arrays = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=n, max_size=n),
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=n, max_size=n),
    )
)


@FAST
@given(pair=_arrays)
def test_mse_matches_numpy(pair):
    a, b = (np.asarray(x, dtype=np.float32) for x in pair)
    expected = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    assert mse(a, b) == pytest.approx(expected, rel=1e-12, abs=0)
    assert mse(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-12, abs=0)


def test_mse_docstring_example():
    assert mse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5])) == 0.125


@FAST
@given(pair=_arrays)
def test_sqnr_matches_closed_form(pair):
    a, b = (np.asarray(x, dtype=np.float64) for x in pair)
    signal, noise = float(np.sum(a**2)), float(np.sum((a - b) ** 2))
    if signal == 0.0:
        with pytest.raises(ValueError, match="r is all zeros"):
            sqnr_db(a, b)
    elif noise == 0.0:
        assert sqnr_db(a, b) == math.inf
    else:
        assert sqnr_db(a, b) == pytest.approx(10 * math.log10(signal / noise), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 0.1, 1e-2, 1e-4])
def test_sqnr_of_a_scaled_copy(alpha):
    # r_hat = (1 - alpha) r  =>  noise = alpha^2 * signal  =>  SQNR = -20 log10(alpha)
    r = np.random.default_rng(0).standard_normal(1000)
    assert sqnr_db(r, (1 - alpha) * r) == pytest.approx(-20 * math.log10(alpha), abs=1e-9)


@pytest.mark.parametrize("bits", range(4, 11))
def test_sqnr_of_uniform_data_is_about_6_db_per_bit(bits):
    # Uniform data on [-1, 1], min-max quantization: s = 2 / (2^b - 1), noise = s^2 / 12, signal = 1/3,
    # so SQNR = 20 log10(2^b - 1) = 6.02 b + 20 log10(1 - 2^-b). The sampling error at n = 2e5 is ~0.01 dB.
    r = torch.rand(200_000, generator=torch.Generator().manual_seed(bits)) * 2 - 1
    measured = sqnr_db(r, fake_quantize_tensor(r, bits))
    exact = 20 * math.log10(2**bits - 1)
    print(f"b={bits}: SQNR {measured:.3f} dB, 6.02 b = {6.02 * bits:.2f}, exact {exact:.3f}")
    assert abs(measured - exact) < 0.05
    # The 6.02 dB/bit rule: within 0.5 dB from 5 bits on; at 4 bits the (2^b - 1) step count costs
    # 20 log10(16/15) = 0.56 dB, so allow that closed-form offset there.
    assert abs(measured - 6.02 * bits) < 0.5 + (0.1 if bits == 4 else 0.0)
    # symmetric grid: same s = max|r| / ((q_max - q_min) / 2) = 2 / (2^b - 1)
    measured_sym = sqnr_db(r, fake_quantize_tensor(r, bits, symmetric=True))
    assert abs(measured_sym - exact) < 0.05


def test_sqnr_all_zero_signal_and_perfect_reconstruction():
    with pytest.raises(ValueError, match="r is all zeros"):
        sqnr_db(torch.zeros(5), torch.ones(5))
    with pytest.raises(ValueError, match="r is all zeros"):
        sqnr_db(np.zeros((2, 2), dtype=np.float32), np.zeros((2, 2), dtype=np.float32))
    r = torch.randn(10)
    assert sqnr_db(r, r.clone()) == math.inf
    assert round(sqnr_db(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.1])), 2) == 20.0


@pytest.mark.parametrize("fn", [mse, sqnr_db])
def test_bad_inputs(fn):
    with pytest.raises(ValueError, match="r and r_hat must have the same shape"):
        fn(torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match="r must be a floating-point"):
        fn(torch.arange(3), torch.ones(3))
    with pytest.raises(TypeError, match="r_hat must be a floating-point"):
        fn(torch.ones(3), np.arange(3))
    with pytest.raises(ValueError, match="r_hat contains 1 NaN/inf"):
        fn(torch.ones(3), torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="r is empty"):
        fn(torch.ones(0), torch.ones(0))


@pytest.mark.parametrize("bits", range(1, 17))
def test_compression_ratio_closed_form(bits):
    assert compression_ratio(bits) == 32 / bits
    assert compression_ratio(bits, fp_bits=16) == 16 / bits


def test_compression_ratio_text_values_and_errors():
    assert compression_ratio(8) == 4.0  # "one-fourth of the original size"
    assert compression_ratio(1) == 32.0  # "compressed to 1/32"
    for bits, exc in [(0, ValueError), (17, ValueError), (2.5, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="bits"):
            compression_ratio(bits)


def test_tensor_size_bytes():
    assert tensor_size_bytes(1000, 8, n_qparams=1) == 1000 + 8
    assert tensor_size_bytes(10, 4) == 5
    assert tensor_size_bytes(3, 1, n_qparams=3) == 3 / 8 + 24
    assert tensor_size_bytes(7, 32) == 28


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def test_model_size_bytes_hand_count():
    m = _mlp()
    # weights 4*3 + 3*2 = 18 values, biases 3 + 2 = 5 values
    assert model_size_bytes(m) == (18 + 5) * 4
    # 8-bit weights, one (s, z) = 8 bytes per weight tensor, biases FP32
    assert model_size_bytes(m, 8) == 18 * 1 + 2 * 8 + 5 * 4
    assert model_size_bytes(m, 4) == 18 * 0.5 + 2 * 8 + 5 * 4
    # per output channel: 3 + 2 (s, z) pairs
    assert model_size_bytes(m, 8, per_channel=True) == 18 + (3 + 2) * 8 + 5 * 4


def test_model_size_bytes_counts_float_buffers_not_int_ones():
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    # conv: weight 2*1*3*3 = 18, bias 2; BN: weight 2, bias 2, running_mean 2, running_var 2
    # (num_batches_tracked is an int64 counter, not model data)
    assert model_size_bytes(m) == (18 + 2 + 2 + 2 + 2 + 2) * 4
    assert model_size_bytes(m, 8) == 18 + 8 + (2 + 2 + 2 + 2 + 2) * 4
    fp, q8 = model_size_bytes(torch.nn.Linear(100, 10)), model_size_bytes(torch.nn.Linear(100, 10), 8)
    assert fp / q8 == pytest.approx(1010 * 4 / (1000 + 8 + 40))
